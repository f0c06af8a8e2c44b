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

from scene_pipeline.settings import silence_announcements

silence_announcements()  # the process that started the run has said it already

from scene_pipeline import definitions  # noqa: E402
from scene_pipeline.core import rendering  # noqa: E402, F401

if (
    definitions.settings.prompt_writer == "openai"
    or definitions.settings.image_maker == "openai-images"
):
    # The OpenAI SDK builds its resource and model classes on first use (0.7 CPU s per
    # process): pay that once here, not in every step.
    import openai.resources  # noqa: F401

    import scene_pipeline.providers.openai_writer  # noqa: F401
if definitions.settings.image_maker == "kling":
    import scene_pipeline.providers.kling  # noqa: F401
