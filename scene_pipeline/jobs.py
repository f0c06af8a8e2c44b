"""`scene_job`, the one job: it materializes a script's assets. Its executor config is
chosen per run: multiprocess (the default: one process per step, render steps in parallel),
or in-process for a run with a single scene to draw (`scene-pipeline run` chooses it: no
step processes to start)."""

from __future__ import annotations

from typing import Any, Literal

from dagster import AssetSelection, define_asset_job

from scene_pipeline.constants import ASSET_GROUP, SCENE_JOB_NAME

PRELOAD_MODULES = ["scene_pipeline._preload"]


def max_steps(kling_limit: int) -> int:
    """Steps of one run at once: one per slot of the account, drawing, and as many again,
    started, with their prompts written, waiting for a slot. A wave of tasks tends to finish
    together, so every freed slot is taken at once instead of after a step process starts
    (measured in bench/throughput.py). Waiting steps wait on KLING, not on the CPU."""
    return 2 * kling_limit


# in_process: one process for every step; forkserver: the default; spawn: where no forkserver
# can start (its socket path, under TMPDIR, must fit the 107 bytes of an AF_UNIX address).
Executor = Literal["in_process", "forkserver", "spawn"]


def executor_config(executor: Executor, kling_limit: int) -> dict[str, Any]:
    if executor == "in_process":
        return {"in_process": {}}
    # Forkserver with preloaded modules keeps each step's start-up cost low.
    start: dict[str, Any] = {"spawn": {}}
    if executor == "forkserver":
        start = {"forkserver": {"preload_modules": PRELOAD_MODULES}}
    return {"multiprocess": {"max_concurrent": max_steps(kling_limit), "start_method": start}}


def build_scene_job(kling_limit: int) -> Any:
    return define_asset_job(
        SCENE_JOB_NAME,
        selection=AssetSelection.groups(ASSET_GROUP),
        description="Materialize one script: character sheet, portraits, one prompt and one"
        " picture per scene that needs work, manifest. Options: the plan_script config.",
        config={"execution": {"config": executor_config("forkserver", kling_limit)}},
    )
