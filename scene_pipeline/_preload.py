"""Imported once by the forkserver, so that each step process starts with these loaded.

Measured on 2 cores: without preloading Dagster's storage modules, importing them in every
step process (SQLAlchemy, alembic, the event-log and run storages) cost about 1 s of CPU per
step and dominated the run time of a many-scene script.
"""

import alembic.runtime.migration  # noqa: F401
import dagster._core.execution.backfill  # noqa: F401
import dagster._core.storage.event_log  # noqa: F401
import dagster._core.storage.runs  # noqa: F401
import dagster._core.storage.schedules  # noqa: F401
import dagster._core.storage.sqlite_storage  # noqa: F401

# The OpenAI SDK builds its resource and model classes on first use (0.7 CPU s per process,
# bench/RESULTS.md): pay that once in the forkserver, not in every prompt step.
import openai.resources  # noqa: F401

import scene_pipeline.definitions  # noqa: F401
