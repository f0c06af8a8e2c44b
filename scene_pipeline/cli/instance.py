"""The Dagster instance a CLI run uses, and running `scene_job` on it.

With DAGSTER_HOME set, that instance (so the run shows up in `dagster dev`); otherwise a
temporary one, thrown away afterwards. Dagster is imported here only: commands that start no
run never pay for it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scene_pipeline.cli.common import note
from scene_pipeline.constants import SCENE_JOB_NAME, SCRIPT_PARTITIONS_NAME, TAG_LAUNCHED_BY
from scene_pipeline.settings import Settings

if TYPE_CHECKING:
    from scene_pipeline.jobs import Executor

# Which process ran a CLI run: lets the next CLI run recognise a run whose process was killed.
TAG_CLI_HOST = "scene_pipeline/cli_host"
TAG_CLI_PID = "scene_pipeline/cli_pid"


@contextmanager
def cli_instance(dagster_home: str | None) -> Iterator[Any]:
    """The instance at `dagster_home` (created once even when several CLIs start at the same
    moment), or a temporary one."""
    from dagster import DagsterInstance

    if dagster_home:
        home = Path(dagster_home)
        home.mkdir(parents=True, exist_ok=True)
        # Two CLIs creating the instance's SQLite tables at once crash one of them: the first
        # creates, the second waits for it.
        with open(home / ".scene-pipeline-instance.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                instance = DagsterInstance.from_ref(_instance_ref(home))
                fail_abandoned_runs(instance)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        with instance:
            yield instance
        return
    with tempfile.TemporaryDirectory(prefix="scene-pipeline-dagster-") as home_dir:
        overrides = {
            "telemetry": {"enabled": False},
            # The instance is deleted after the run: capturing each step's stdout would only
            # cost two extra processes per step (a `tail -F` and its watcher).
            "compute_logs": {
                "module": "dagster._core.storage.noop_compute_log_manager",
                "class": "NoOpComputeLogManager",
            },
        }
        with DagsterInstance.local_temp(home_dir, overrides=overrides) as instance:
            yield instance


def _instance_ref(home: Path) -> Any:
    from dagster._core.instance.ref import InstanceRef

    return InstanceRef.from_dir(str(home))


def add_partition(instance: Any, script_id: str) -> None:
    """Add the script's partition; one that exists (or that another process adds at the same
    moment) is not an error."""
    if instance.has_dynamic_partition(SCRIPT_PARTITIONS_NAME, script_id):
        return
    try:
        instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, [script_id])
    except Exception:  # noqa: BLE001 - SQLite/Postgres IntegrityError: added by another process
        if not instance.has_dynamic_partition(SCRIPT_PARTITIONS_NAME, script_id):
            raise


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def fail_abandoned_runs(instance: Any) -> list[str]:
    """A `scene-pipeline run` that was killed leaves its run STARTED, holding kling pool slots
    that no daemon frees (CLI runs have no launcher watching them). Runs this host's CLI
    started from a process that no longer exists are marked failed and their slots freed."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(
        RunsFilter(
            statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
            tags={TAG_LAUNCHED_BY: "cli", TAG_CLI_HOST: socket.gethostname()},
        )
    )
    failed = []
    for run in runs:
        pid = run.tags.get(TAG_CLI_PID, "")
        if run.parent_run_id or not pid.isdigit() or _process_alive(int(pid)):
            continue
        instance.report_run_failed(
            run, message=f"the scene-pipeline process {pid} that ran it no longer exists"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def warm_forkserver() -> bool:
    """Start the multiprocess executor's forkserver now, with the modules it preloads, so
    that its imports (Dagster's storage, the definitions, the SDKs: seconds of CPU) overlap
    with the CLI's own start of the run instead of delaying the run's first step. The
    executor finds it running and uses it (same preload list). False if no forkserver can
    start here (a TMPDIR too long for its socket): the run then spawns its steps."""
    import multiprocessing
    from multiprocessing import forkserver

    from scene_pipeline.jobs import PRELOAD_MODULES

    context = multiprocessing.get_context("forkserver")
    # Dagster's multiprocess executor preloads its own module before the configured ones.
    context.set_forkserver_preload(["dagster._core.executor.multiprocess", *PRELOAD_MODULES])
    try:
        forkserver.ensure_running()
    except OSError as err:
        note(f"no forkserver ({err}; TMPDIR={tempfile.gettempdir()}): steps start by spawn")
        return False
    return True


def run_config(
    selection: dict[str, Any], executor: Executor, kling_limit: int, log_level: str
) -> dict[str, Any]:
    from scene_pipeline.jobs import executor_config

    return {
        "ops": {"scenes": {"ops": {"plan_script": {"config": selection}}}},
        "execution": {"config": executor_config(executor, kling_limit)},
        "loggers": {"console": {"config": {"log_level": log_level}}},
    }


def execute_scene_job(
    instance: Any,
    settings: Settings,
    script_id: str,
    selection: dict[str, Any],
    *,
    executor: Executor,
    tags: dict[str, str],
    log_level: str = "WARNING",
) -> tuple[bool, str]:
    """Run scene_job for one partition, as a run launched from the UI would run."""
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from scene_pipeline.resources.slots import ensure_pool_limit
    from scene_pipeline.settings import silence_announcements

    silence_announcements()  # the CLI printed the configuration itself
    add_partition(instance, script_id)
    ensure_pool_limit(instance, settings.kling_max_concurrency)
    job = ReconstructableRepository.for_module(
        "scene_pipeline.definitions", "defs", working_directory=os.getcwd()
    ).get_reconstructable_job(SCENE_JOB_NAME)
    with execute_job(
        job,
        instance=instance,
        run_config=run_config(selection, executor, settings.kling_max_concurrency, log_level),
        tags={
            "dagster/partition": script_id,
            TAG_LAUNCHED_BY: "cli",
            TAG_CLI_HOST: socket.gethostname(),
            TAG_CLI_PID: str(os.getpid()),
            **tags,
        },
        raise_on_error=False,
    ) as result:
        return result.success, result.run_id


def report_manifest(dagster_home: str, manifest: Any, why: str, stale: Mapping[str, str]) -> None:
    """A `manifest` materialization for a change made without a run (a pick), so that the
    UI shows the manifest the backend reads (and its stale scenes, as a run's would)."""
    from dagster import AssetMaterialization

    from scene_pipeline.assets.publish import manifest_metadata

    with cli_instance(dagster_home) as instance:
        add_partition(instance, manifest.script_id)
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key="manifest",
                partition=manifest.script_id,
                description=why,
                metadata=manifest_metadata(manifest, stale),
            )
        )


def report_accepted(instance: Any, accepted: Any) -> None:
    """The `script_document` materialization of a version the CLI accepted."""
    from scene_pipeline.assets.script import accepted_event

    add_partition(instance, accepted.script.script_id)
    instance.report_runless_asset_event(accepted_event(accepted))
