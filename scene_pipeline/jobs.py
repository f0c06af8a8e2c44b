"""`scene_job`, the one job: it materializes a script's assets. Its executor config is
chosen per run: multiprocess (the default: one process per step, render steps in parallel),
or in-process for a run with a single scene to draw (`scene-pipeline run` chooses it: no
step processes to start)."""

from __future__ import annotations

from typing import Any

from dagster import AssetSelection, define_asset_job

from scene_pipeline.constants import ASSET_GROUP, SCENE_JOB_NAME

# Steps other than those waiting on KLING: plan, portraits' collection, publish, and a prompt
# being written for the next scene while every slot is busy.
EXTRA_STEPS = 2


def multiprocess_config(kling_limit: int) -> dict[str, Any]:
    """A run starts as many steps as the account has slots, plus a few: render steps wait
    for KLING, not for the CPU, and the next one writes its prompt while the others draw."""
    return {
        "multiprocess": {
            "max_concurrent": kling_limit + EXTRA_STEPS,
            # Forkserver with preloaded modules keeps each step's start-up cost low.
            "start_method": {"forkserver": {"preload_modules": ["scene_pipeline._preload"]}},
        }
    }


IN_PROCESS_CONFIG: dict[str, Any] = {"in_process": {}}


def build_scene_job(kling_limit: int) -> Any:
    return define_asset_job(
        SCENE_JOB_NAME,
        selection=AssetSelection.groups(ASSET_GROUP),
        description="Materialize one script: character sheet, portraits, one prompt and one"
        " picture per scene that needs work, manifest. Options: the plan_script config.",
        config={"execution": {"config": multiprocess_config(kling_limit)}},
    )
