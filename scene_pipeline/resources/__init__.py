"""Dagster resources: thin, configurable wrappers around storage and the providers.

`scene_pipeline.wiring.build_resources` chooses among them from `Settings`."""
