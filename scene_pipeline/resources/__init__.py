"""Dagster resources: thin, configurable wrappers around the storage and provider seams."""
