"""The job that materializes a script's assets, and the executor every run uses."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from scene_pipeline.constants import ASSET_GROUP, SCENE_JOB_NAME

# Per-scene steps wait on the network, not the CPU: allow many more steps at once than this
# machine has cores (the kling pool, not this number, bounds paid image tasks). Forkserver
# with preloaded modules keeps each step's start-up cost low.
MAX_CONCURRENT_STEPS = 16

scene_executor = multiprocess_executor.configured(
    {
        "max_concurrent": MAX_CONCURRENT_STEPS,
        "start_method": {"forkserver": {"preload_modules": ["scene_pipeline._preload"]}},
    },
    name="scene_executor",
)

scene_job = define_asset_job(
    SCENE_JOB_NAME,
    selection=AssetSelection.groups(ASSET_GROUP),
    executor_def=scene_executor,
    description="Materialize one script: validated script, character sheet, one prompt and"
    " one image per scene, manifest. Rerun chosen scenes with the plan_scenes config.",
)
