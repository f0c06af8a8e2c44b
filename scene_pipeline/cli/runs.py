"""Running a script: `run FILE`, `redraw SCRIPT_ID --scene ID`, `portrait ... --redraw`.

Every run holds the script's lease (a second command for the same script exits 3, or waits
with `--wait`), and starts no Dagster run at all when nothing is to be drawn ("up to date").
A run with at most one image to draw executes in this process; larger ones use the job's
multiprocess executor, as a run launched from the UI does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scene_pipeline.cli.common import EXIT_BUSY, EXIT_NOT_COMPLETE, EXIT_OK, CommandError, note, say
from scene_pipeline.cli.summary import summary_lines
from scene_pipeline.constants import TAG_LEASE
from scene_pipeline.contract.outputs import Manifest, utc_now
from scene_pipeline.core import leases
from scene_pipeline.core.assessment import Assessment, assess, load_view, providers_of
from scene_pipeline.core.planning import Selection, UnknownScenesError
from scene_pipeline.models import AcceptedScript
from scene_pipeline.settings import Settings
from scene_pipeline.storage import Bucket

if TYPE_CHECKING:
    from scene_pipeline.jobs import Executor

LEASE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class RunRequest:
    """What one command asks of a run."""

    scene_ids: list[str] = field(default_factory=list)
    force: bool = False
    refresh_stale: bool = False
    candidates: int | None = None
    redraw_portraits: list[str] = field(default_factory=list)
    log_level: str = "WARNING"

    def selection(self, settings: Settings) -> Selection:
        return Selection(
            scene_ids=frozenset(self.scene_ids),
            force=self.force,
            refresh_stale=self.refresh_stale or settings.redraw_stale,
            candidates=self.candidates or settings.candidates,
        )

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "scene_ids": self.scene_ids,
            "force": self.force,
            "refresh_stale": self.refresh_stale,
            "redraw_portraits": self.redraw_portraits,
        }
        if self.candidates is not None:
            config["candidates"] = self.candidates
        return config


def check_candidates(settings: Settings, candidates: int | None) -> None:
    if candidates is None:
        return
    if not 1 <= candidates <= 4:
        raise CommandError(f"--candidates {candidates}: use 1-4")
    if settings.image_maker == "kling" and candidates > settings.kling_max_concurrency:
        raise CommandError(
            f"--candidates {candidates}: a task of n images holds n of the account's"
            f" {settings.kling_max_concurrency} slots (KLING_MAX_CONCURRENCY)"
        )


def _run_ended_here(lease: leases.Lease) -> bool:
    """A lease of a Dagster run of the instance at DAGSTER_HOME that has ended (a failed UI
    or sensor run) does not block the CLI until it expires."""
    home = os.environ.get("DAGSTER_HOME")
    if not lease.run_id or not home:
        return False
    from scene_pipeline.cli.instance import cli_instance

    with cli_instance(home) as instance:
        record = instance.get_run_record_by_id(lease.run_id)
        return record is not None and record.dagster_run.is_finished


@contextmanager
def script_lease(bucket: Bucket, script_id: str, wait_seconds: float) -> Iterator[str]:
    """Hold the script's lease for the command (renewed in the background); exit 3 when
    another holder has it for longer than `wait_seconds`."""
    import threading

    token, holder = leases.new_token(), leases.describe_cli_holder()
    deadline = time.monotonic() + wait_seconds
    while True:
        got = leases.acquire(
            bucket, script_id, token, holder, this_process=True, finished=_run_ended_here
        )
        if isinstance(got, leases.Lease):
            break
        if time.monotonic() >= deadline:
            raise CommandError(got.message(), code=EXIT_BUSY)
        time.sleep(LEASE_POLL_SECONDS)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(leases.RENEW_EVERY_SECONDS):
            leases.acquire(bucket, script_id, token, holder, this_process=True)

    keeper = threading.Thread(target=renew, name="lease-keeper", daemon=True)
    keeper.start()
    try:
        yield token
    finally:
        stop.set()
        leases.release(bucket, script_id, token)


def plan_ahead(
    bucket: Bucket, settings: Settings, accepted: AcceptedScript, request: RunRequest
) -> Assessment:
    view = load_view(bucket, accepted.script.script_id, accepted)
    try:
        return assess(
            bucket,
            view,
            providers_of(settings),
            request.selection(settings),
            run_id="cli",
            now=utc_now(),
            redraw_portraits=tuple(request.redraw_portraits),
        )
    except UnknownScenesError as err:
        raise CommandError(str(err)) from None


def manifest_current(plan: Assessment, manifest: Manifest | None, accepted: AcceptedScript) -> bool:
    """The manifest already says everything a run would write: no run is needed."""
    script = accepted.script
    if manifest is None or manifest.title != script.title or plan.scenes.records_to_read:
        return False
    live = {e.scene_id for e in manifest.scenes if e.status != "removed"}
    if live != {s.scene_id for s in script.scenes}:
        return False
    drawn = {c.name for c in manifest.characters if c.status == "succeeded"}
    return drawn == set(plan.portraits.current)


def run_script(
    bucket: Bucket,
    settings: Settings,
    accepted: AcceptedScript,
    request: RunRequest,
    *,
    token: str,
    report: bool,
) -> int:
    """Run what the request needs (nothing, when up to date) and print the result."""
    script_id = accepted.script.script_id
    plan = plan_ahead(bucket, settings, accepted, request)
    manifest = bucket.read_manifest(script_id)
    if plan.up_to_date and manifest_current(plan, manifest, accepted) and not report:
        assert manifest is not None
        stale = f", {len(plan.scenes.stale)} stale scene(s) kept" if plan.scenes.stale else ""
        note(f"script {script_id}: up to date (nothing to draw{stale}); no run started")
        return _print_result(manifest, request.scene_ids, ok=True)
    from scene_pipeline.cli.instance import (
        cli_instance,
        execute_scene_job,
        report_accepted,
        warm_forkserver,
    )

    executor: Executor = "in_process"
    if plan.paid_images > 1:
        executor = "forkserver" if warm_forkserver() else "spawn"
    started = utc_now()
    home = os.environ.get("DAGSTER_HOME")
    with cli_instance(home) as instance:
        if report:
            report_accepted(instance, accepted)
        ok, run_id = execute_scene_job(
            instance,
            settings,
            script_id,
            request.config(),
            executor=executor,
            tags={TAG_LEASE: token},
            log_level=request.log_level,
        )
    note(f"run {run_id} {'succeeded' if ok else 'FAILED'} {_where_to_see(home)}")
    manifest = bucket.read_manifest(script_id)
    if manifest is None or manifest.updated_at < started:
        note("this run wrote no manifest; see the run's logs above")
        return EXIT_NOT_COMPLETE
    return _print_result(manifest, request.scene_ids, ok=ok)


def _where_to_see(home: str | None) -> str:
    if home:
        return f"in the UI of DAGSTER_HOME={home}"
    return "on a temporary instance (set DAGSTER_HOME to keep runs for the UI)"


def _print_result(manifest: Manifest, scene_ids: list[str], *, ok: bool) -> int:
    for line in summary_lines(manifest, scene_ids):
        say(line)
    if not ok:
        return EXIT_NOT_COMPLETE
    return EXIT_OK if manifest.status == "complete" else EXIT_NOT_COMPLETE
