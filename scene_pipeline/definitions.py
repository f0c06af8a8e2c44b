"""The scene pipeline's Dagster definitions: the only place `Definitions` is assembled.

Start the UI with `dagster dev` in the repository root. Every setting comes from the
environment, parsed once into `Settings` (all optional: without keys the pipeline runs
offline on a local folder, and says so); see README.md, "Configuration".
"""

import os

from dagster import Definitions, multi_or_in_process_executor

from scene_pipeline.assets import all_assets
from scene_pipeline.jobs import build_scene_job
from scene_pipeline.schedules import build_nightly_schedule
from scene_pipeline.sensors import build_script_inbox_sensor
from scene_pipeline.settings import Settings
from scene_pipeline.wiring import build_resources

settings = Settings.from_env(os.environ)
settings.announce()
scene_job = build_scene_job(settings.kling_max_concurrency)

defs = Definitions(
    assets=all_assets,
    jobs=[scene_job],
    sensors=[build_script_inbox_sensor(settings, scene_job)],
    schedules=[build_nightly_schedule(settings, scene_job)],
    resources=build_resources(settings),
    executor=multi_or_in_process_executor,
)
