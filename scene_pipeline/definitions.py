"""The scene pipeline's Dagster definitions: the only place `Definitions` is assembled.

Start the UI with `dagster dev` in the repository root. Environment variables (all optional;
without them the pipeline runs offline on a local folder, and says so): see README.md,
"Configuration".
"""

import os

from dagster import Definitions

from scene_pipeline.assets import all_assets
from scene_pipeline.environment import (
    announce,
    build_resources,
    image_steps_per_run,
    nightly_settings,
)
from scene_pipeline.jobs import build_scene_executor, scene_job
from scene_pipeline.schedules import build_nightly_schedule
from scene_pipeline.sensors import build_script_inbox_sensor

announce(os.environ)

defs = Definitions(
    assets=all_assets,
    jobs=[scene_job],
    sensors=[build_script_inbox_sensor(os.environ)],
    resources=build_resources(os.environ),
    schedules=[build_nightly_schedule(**nightly_settings(os.environ))],
    executor=build_scene_executor(image_steps_per_run(os.environ)),
)
