"""The job that materializes a script's assets, and the executor every run uses."""

from __future__ import annotations

from dagster import AssetSelection, ExecutorDefinition, define_asset_job, multiprocess_executor

from scene_pipeline.constants import ASSET_GROUP, IMAGE_STEP_TAG, SCENE_JOB_NAME

# Steps other than image steps (prompts, collectors) that may run beside them. Measured on 2
# cores (bench/RESULTS.md): 16 prompt processes started at once cost more in contention than
# they gained, and delayed the first image.
OTHER_STEPS_AT_ONCE = 4


def build_scene_executor(image_steps: int) -> ExecutorDefinition:
    """The multiprocess executor of scene_job.

    Image steps wait on KLING, not the CPU, so a run starts as many as the account allows
    (`image_steps`, KLING_MAX_CONCURRENCY) plus a few others: well above the core count. The
    `kling` pool still bounds image steps across all runs; the executor's own tag limit just
    keeps steps that could not get a slot from being started only to wait for one (the pool
    re-checks slowly). Forkserver with preloaded modules keeps each step's start-up cost low.
    """
    return multiprocess_executor.configured(
        {
            "max_concurrent": image_steps + OTHER_STEPS_AT_ONCE,
            "tag_concurrency_limits": [
                {"key": IMAGE_STEP_TAG, "value": "image", "limit": image_steps}
            ],
            "start_method": {"forkserver": {"preload_modules": ["scene_pipeline._preload"]}},
        },
        name="scene_executor",
    )


# The executor comes from Definitions (built from the environment in definitions.py).
scene_job = define_asset_job(
    SCENE_JOB_NAME,
    selection=AssetSelection.groups(ASSET_GROUP),
    description="Materialize one script: validated script, character sheet, one prompt and"
    " one image per scene, manifest. Rerun chosen scenes with the plan_scenes config.",
)
