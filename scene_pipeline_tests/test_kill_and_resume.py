"""A run SIGKILLed while its KLING tasks are in flight is resumed without paying again.

Paid work must survive a dead run worker: `scene-pipeline run` is started as a process group,
the fake KLING holds every scene's task unfinished (a hang marker in every scene's prompt;
the portraits drawn first finish normally), and once every scene's task is accepted and
journaled in `pipeline/tasks/` the whole group (run worker, forkserver, step processes) gets
SIGKILL. Nothing of the run gets to report anything, and the killed CLI's lease on the script
stays in the bucket, live until it expires (`core/leases.py` LEASE_SECONDS, 10 minutes).
Then the tasks are allowed to finish and the run is resumed in the ways an operator has:

- from failure: the instance still says STARTED, so the test does what run monitoring does
  for a dead run worker (`report_run_failed`) and what the daemon's
  `free_slots_after_run_end_seconds` does (free the dead run's `kling` pool slots), then
  re-executes from failure with the parent's tags (the CLI's lease token among them), as the
  UI does;
- a new `scene-pipeline run` of the same file on a temporary instance (no DAGSTER_HOME): a
  lease of a holder this host cannot check (another host) makes it exit 3 naming the holder
  until the lease expires (the test rewrites the lease instead of waiting 10 minutes);
- a new `scene-pipeline run` on the same DAGSTER_HOME: the killed CLI's lease names this host
  and a process that is gone, so it is taken over at once; the killed run is marked failed
  and its pool slots freed before the new run starts;
- `run --scenes 1 --force`: the operator wants a new picture, so scene 1's journaled task is
  not resumed but a new one paid (the other scene is resumed by the next plain run).

Except when forced, the fake must have seen exactly one task per requested image (no second submit,
not even a refused one), the scene steps must have polled the journaled tasks, and the
manifest must be complete with every image present.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.core.leases import Lease
from scene_pipeline.storage import Bucket, layout
from scene_pipeline.storage.local import LocalObjectStore

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .resilience import (
    CLI,
    Background,
    fake_env,
    run_to_end,
    script_document,
    start,
    wait_until,
    write_script,
)

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

SCRIPT_ID = "killed"
SCENES = 2
PORTRAITS = 2  # one per character; each scene has one of them in it
HANG = "[[hang-task]]"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeKlingServer]]:
    # The hang marker: no scene's task can finish before the kill, whatever the machine's load.
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(
            hang_marker=HANG,
            concurrency_limit=SCENES,
            task_latency_seconds=0.3,
            image_long_side=480,  # portraits are sent back as references: >= 300 px
        ) as kling,
    ):
        yield openai, kling


def the_script(tmp_path: Path) -> Path:
    # The fake OpenAI copies a line's emotion into the scene's prompt: the marker reaches KLING.
    document = script_document(
        SCRIPT_ID, SCENES, emotions=dict.fromkeys(range(1, SCENES + 1), HANG)
    )
    return write_script(tmp_path / "script.json", document)


def journals(storage: Path) -> dict[str, dict[str, str]]:
    """Scene task journal entries per scene id (`pipeline/tasks/<script>/scenes/<id>/...`)."""
    found = {}
    for path in (storage / "pipeline" / "tasks" / SCRIPT_ID / "scenes").glob("*/*.json"):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:  # being written right now
            continue
    return found


def kill_while_tasks_are_in_flight(
    tmp_path: Path, kling: FakeKlingServer, env: dict[str, str], script: Path
) -> tuple[int, dict[str, str]]:
    """Start a run, SIGKILL its process group once every scene's task is journaled; returns
    the killed CLI's pid and the journaled task id per scene."""
    job = start([CLI, "run", str(script)], env, tmp_path / "logs", "killed")
    storage = Path(env["SCENE_PIPELINE_LOCAL_DIR"])

    def every_task_journaled() -> bool:
        if job.process.poll() is not None:
            raise AssertionError(f"the run ended before the kill:\n{job.output()[-3000:]}")
        entries = journals(storage)
        return len(entries) == SCENES and all(e.get("task_id") for e in entries.values())

    try:
        wait_until(every_task_journaled, 150, "a journaled KLING task for every scene")
    finally:
        job.kill_group()
    # The portraits were drawn; every scene's task was paid and is still running.
    assert [kling.task_status(t.task_id) for t in kling.tasks_of("generations")] == [
        "succeed"
    ] * PORTRAITS
    scene_tasks = kling.tasks_of("multi-image2image")
    assert len(scene_tasks) == SCENES
    assert all(kling.task_status(t.task_id) != "succeed" for t in scene_tasks)
    # Nothing was published: the killed run drew no scene.
    assert not (storage / "results" / SCRIPT_ID / "manifest.json").exists()
    return job.process.pid, {scene: entry["task_id"] for scene, entry in journals(storage).items()}


def let_tasks_finish(kling: FakeKlingServer) -> int:
    """The tasks paid before the kill succeed now; a new task would succeed at once too (so a
    double payment shows up as a second task, not as a hang). Returns the polls so far."""
    kling.options.hang_marker = None
    kling.release_hung_tasks()
    return kling.requests["GET multi task"]


def lease_of(storage: Path) -> Lease | None:
    return Bucket(LocalObjectStore(storage)).read_model(layout.lease_key(SCRIPT_ID), Lease)


def rewrite_lease(storage: Path, **changes: Any) -> None:
    """Change the live lease of the killed CLI (`pipeline/leases/<script>.json`), e.g. to
    what 10 minutes without renewal do to it: an `expires_at` in the past."""
    lease = lease_of(storage)
    assert lease is not None and lease.expires_at > utc_now(), lease
    Bucket(LocalObjectStore(storage)).write_model(
        layout.lease_key(SCRIPT_ID), lease.model_copy(update=changes)
    )


def busy_line(stderr: str) -> str:
    """The one line of a refused (busy) command, after the configuration banner."""
    lines = [line for line in stderr.splitlines() if not line.startswith("scene-pipeline ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_paid_once_and_complete(
    storage: Path,
    openai: FakeOpenAIServer,
    kling: FakeKlingServer,
    journaled: dict[str, str],
    polls_before: int,
) -> None:
    assert kling.requests["POST submit"] == PORTRAITS, kling.requests
    assert kling.requests["POST multi submit"] == SCENES, kling.requests
    assert len(kling.tasks) == SCENES + PORTRAITS
    assert set(kling.tasks_per_request().values()) == {1}
    successful = kling.successful_tasks_per_request()
    assert len(successful) == SCENES + PORTRAITS and set(successful.values()) == {1}
    assert kling.requests["GET multi task"] > polls_before  # the journaled tasks were polled
    # Every task id was known: no lost-submit lookup.
    assert kling.requests["GET list"] == kling.requests["GET multi list"] == 0
    # Prompts were written before the kill and are not paid for again either.
    assert openai.calls["chat"] == 1 + SCENES

    manifest = json.loads((storage / "results" / SCRIPT_ID / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["status"] for s in manifest["scenes"]] == ["succeeded"] * SCENES
    for scene in manifest["scenes"]:
        png = Path(scene["image_s3url"].removeprefix("file://"))
        assert png.read_bytes()[:8] == PNG
        record = json.loads(png.with_suffix(".json").read_text())
        # The image is the one of the task paid before the kill.
        assert record["image"]["task_id"] == journaled[scene["scene_id"]]


def dagster_home_env(
    tmp_path: Path, openai: FakeOpenAIServer, kling: FakeKlingServer
) -> tuple[Path, Path, dict[str, str]]:
    """A DAGSTER_HOME and a storage folder under tmp_path, and the CLI's environment."""
    home, storage = tmp_path / "dagster_home", tmp_path / "storage"
    home.mkdir()
    env = fake_env(
        openai,
        kling,
        DAGSTER_HOME=str(home),
        SCENE_PIPELINE_LOCAL_DIR=str(storage),
        KLING_MAX_CONCURRENCY=str(SCENES),
        KLING_TASK_TIMEOUT_SECONDS="60",
    )
    return home, storage, env


def test_reexecution_from_failure_polls_the_tasks_paid_before_the_kill(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> None:
    openai, kling = fakes
    home, storage, env = dagster_home_env(tmp_path, openai, kling)
    journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, the_script(tmp_path))[1]

    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        # A SIGKILLed run worker reports nothing: the run says STARTED until run monitoring
        # (or an operator) marks it failed, and its kling pool slots stay claimed.
        assert run.status == DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info("kling").claimed_slots
        instance.report_run_failed(run, "run worker killed (SIGKILL) by the test")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        parent_id = run.run_id

    polls_before = let_tasks_finish(kling)
    code, out, err = run_to_end(
        [sys.executable, "-m", "scene_pipeline_tests.reexecute_run", parent_id],
        env,
        tmp_path / "logs",
        "reexecute",
    )
    assert code == 0, (out + err)[-3000:]
    child_id = json.loads(out.splitlines()[-1])["run_id"]

    assert_paid_once_and_complete(storage, openai, kling, journaled, polls_before)
    with DagsterInstance.from_config(str(home)) as instance:
        child = instance.get_run_by_id(child_id)
        assert child is not None and child.status == DagsterRunStatus.SUCCESS
        assert child.parent_run_id == parent_id
        assert child.tags["dagster/partition"] == SCRIPT_ID
        steps = {s.step_key for s in instance.get_run_step_stats(child_id)}
        # From failure: only the scene steps that never finished, and what depends on them
        # (not the plan, not the portraits drawn before the kill).
        assert steps == {
            *(f"scenes.render_scene[{i}]" for i in range(1, SCENES + 1)),
            "scenes.publish_script",
        }, steps


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR for the CLI, removed at the end: the temporary instance of a killed CLI is
    never cleaned up. Short, so that the forkserver's socket path fits (a TMPDIR under
    tmp_path may not, and the CLI then spawns its steps: slower, and tested in test_cli)."""
    path = Path(tempfile.mkdtemp(prefix="sp-kill-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_fresh_run_of_the_same_script_resumes_the_journaled_tasks(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer], short_tmpdir: Path
) -> None:
    """On a temporary instance (no DAGSTER_HOME). The killed CLI is made to look like one of
    another host, whose process this host cannot check: its lease blocks until it expires."""
    openai, kling = fakes
    storage = tmp_path / "storage"
    env = fake_env(
        openai,
        kling,
        SCENE_PIPELINE_LOCAL_DIR=str(storage),
        KLING_MAX_CONCURRENCY=str(SCENES),
        KLING_TASK_TIMEOUT_SECONDS="60",
        TMPDIR=str(short_tmpdir),
    )
    script = the_script(tmp_path)
    killed_pid, journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, script)
    polls_before = let_tasks_finish(kling)
    elsewhere = f"scene-pipeline pid {killed_pid} on another-host"
    rewrite_lease(storage, holder=elsewhere, host="another-host")

    # While that lease is live, the next run is refused (exit 3) naming the holder, and
    # changes nothing.
    code, out, err = run_to_end([CLI, "run", str(script)], env, tmp_path / "logs", "busy")
    assert code == 3, (out + err)[-3000:]
    assert busy_line(err).startswith(f"script {SCRIPT_ID} is busy: {elsewhere} holds it"), err
    assert "Traceback" not in out + err
    assert kling.requests["GET multi task"] == polls_before
    assert not (storage / "results" / SCRIPT_ID / "manifest.json").exists()

    # Once it has expired (10 minutes without renewal), the next run resumes the tasks.
    rewrite_lease(storage, expires_at=utc_now() - timedelta(seconds=1))
    code, out, err = run_to_end([CLI, "run", str(script)], env, tmp_path / "logs", "fresh")
    assert code == 0, (out + err)[-3000:]
    assert f"script {SCRIPT_ID} " in out and "complete" in out
    assert_paid_once_and_complete(storage, openai, kling, journaled, polls_before)


def run_unless_stuck(job: Background, home: Path, dead_run_id: str, timeout: float) -> int:
    """Wait for `job` to end; on a timeout, say whether the kling pool was held by the dead
    run (the failure this test exists for)."""
    deadline = time.monotonic() + timeout
    while job.process.poll() is None:
        if time.monotonic() > deadline:
            with DagsterInstance.from_config(str(home)) as instance:
                info = instance.event_log_storage.get_concurrency_info("kling")
            job.kill_group()
            raise AssertionError(
                f"the run did not end within {timeout:g} s; kling pool: active runs"
                f" {sorted(info.active_run_ids)}, pending runs {sorted(info.pending_run_ids)}"
                f" (the killed run: {dead_run_id})\n{job.output()[-3000:]}"
            )
        time.sleep(0.2)
    return job.process.returncode


def test_after_a_kill_the_next_cli_run_on_the_same_dagster_home_is_not_blocked(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> None:
    """The killed CLI's lease names this host and a process that is gone: the next run takes
    it over at once (not after 10 minutes), marks the killed run failed and frees its kling
    pool slots (else its scene steps would wait for them for ever), and finishes the work."""
    openai, kling = fakes
    home, storage, env = dagster_home_env(tmp_path, openai, kling)
    script = the_script(tmp_path)
    killed_pid, journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, script)
    polls_before = let_tasks_finish(kling)
    killed_lease = lease_of(storage)
    assert killed_lease is not None and killed_lease.expires_at > utc_now()
    assert f"pid {killed_pid} " in killed_lease.holder
    with DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == DagsterRunStatus.STARTED

    job = start([CLI, "run", str(script)], env, tmp_path / "logs", "next")
    code = run_unless_stuck(job, home, dead.run_id, 150)
    assert code == 0, job.output()[-3000:]
    assert_paid_once_and_complete(storage, openai, kling, journaled, polls_before)
    with DagsterInstance.from_config(str(home)) as instance:
        runs = {r.run_id: r for r in instance.get_runs()}
        assert len(runs) == 2
        assert runs.pop(dead.run_id).status == DagsterRunStatus.FAILURE
        (new,) = runs.values()
        assert new.status == DagsterRunStatus.SUCCESS
        assert not instance.event_log_storage.get_concurrency_info("kling").claimed_slots
    # The new run held the script under its own lease, and released it when it finished.
    lease = lease_of(storage)
    assert lease is not None and lease.token != killed_lease.token
    assert lease.expires_at <= utc_now()


def test_force_after_a_kill_pays_a_new_task_instead_of_resuming_the_journaled_one(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> None:
    """`run --scenes 1 --force` after a killed run: the operator asked for a new picture of
    scene 1, so its task paid before the kill is not resumed (it would now succeed, and give
    the old roll of the dice): a new task is paid and drawn. Scene 2, not forced, is resumed
    by the next plain run from its journaled task, without paying again."""
    openai, kling = fakes
    _, storage, env = dagster_home_env(tmp_path, openai, kling)
    script = the_script(tmp_path)
    journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, script)[1]
    let_tasks_finish(kling)
    logs = tmp_path / "logs"

    _, out, err = run_to_end([CLI, "run", str(script), "--scenes", "1", "--force"], env, logs, "1")
    assert "Traceback" not in out + err
    manifest = json.loads((storage / "results" / SCRIPT_ID / "manifest.json").read_text())
    scene_1 = next(s for s in manifest["scenes"] if s["scene_id"] == "1")
    assert scene_1["status"] == "succeeded", (scene_1, err[-3000:])
    drawn_by = json.loads(
        Path(scene_1["image_s3url"].removeprefix("file://")).with_suffix(".json").read_text()
    )["image"]["task_id"]
    assert drawn_by != journaled["1"]
    assert kling.requests["POST multi submit"] == SCENES + 1

    code, out, err = run_to_end([CLI, "run", str(script)], env, logs, "rest")
    assert code == 0, (out + err)[-3000:]
    manifest = json.loads((storage / "results" / SCRIPT_ID / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    scene_2 = next(s for s in manifest["scenes"] if s["scene_id"] == "2")
    record = Path(scene_2["image_s3url"].removeprefix("file://")).with_suffix(".json")
    assert json.loads(record.read_text())["image"]["task_id"] == journaled["2"]
    assert kling.requests["POST multi submit"] == SCENES + 1  # scene 2 was not paid again
