"""Plain HTTP clients of external services: no Dagster imports, usable and testable alone."""
