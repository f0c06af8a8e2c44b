"""A run SIGKILLed while its KLING tasks are in flight is resumed without paying again.

Paid work must survive a dead run worker: `scene-pipeline run` is started as a process group
on a files-backed DAGSTER_HOME, the fake KLING holds every task unfinished (`hang_all`), and
once every scene's task is accepted and journaled in `pipeline/tasks/` the whole group (run
worker, forkserver, step processes) gets SIGKILL. Nothing of the run gets to report anything.
Then the tasks are allowed to finish and the run is resumed in the two ways an operator has:

- from failure: the instance still says STARTED, so the test does what run monitoring does
  for a dead run worker (`report_run_failed`) and what the daemon's
  `free_slots_after_run_end_seconds` does (free the dead run's `kling` pool slots), then
  re-executes from failure with the parent's tags, as the UI does;
- a fresh `scene-pipeline run` of the same file (a temporary instance, as without
  DAGSTER_HOME).

Either way the fake must have seen exactly one task per scene (no second submit, not even a
refused one), the image steps must have polled the journaled tasks, and the manifest must be
complete with every image present.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .resilience import CLI, fake_env, run_to_end, script_document, start, wait_until, write_script

SCRIPT_ID = "killed"
SCENES = 2
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeKlingServer]]:
    # hang_all: no task can finish before the kill, whatever the machine's load.
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(hang_all=True, concurrency_limit=SCENES, task_latency_seconds=0.3) as kling,
    ):
        yield openai, kling


def journals(storage: Path) -> dict[str, dict[str, str]]:
    """Task journal entries per scene id (`pipeline/tasks/<script>/<scene>/<hash>.json`)."""
    found = {}
    for path in (storage / "pipeline" / "tasks" / SCRIPT_ID).glob("*/*.json"):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:  # being written right now
            continue
    return found


def kill_while_tasks_are_in_flight(
    tmp_path: Path, kling: FakeKlingServer, env: dict[str, str], script: Path
) -> dict[str, str]:
    """Start a run, SIGKILL its process group once every scene's task is journaled; returns
    the journaled task id per scene."""
    job = start([CLI, "run", str(script)], env, tmp_path / "logs", "killed")
    storage = Path(env["SCENE_PIPELINE_LOCAL_DIR"])

    def every_task_journaled() -> bool:
        if job.process.poll() is not None:
            raise AssertionError(f"the run ended before the kill:\n{job.output()[-3000:]}")
        entries = journals(storage)
        return len(entries) == SCENES and all(e.get("task_id") for e in entries.values())

    try:
        wait_until(every_task_journaled, 120, "a journaled KLING task for every scene")
    finally:
        job.kill_group()
    assert len(kling.tasks) == SCENES
    assert all(kling.task_status(t.task_id) != "succeed" for t in kling.tasks)
    # Nothing was stored for any scene: the killed run drew no picture.
    assert not (storage / "results" / SCRIPT_ID / "manifest.json").exists()
    return {scene: entry["task_id"] for scene, entry in journals(storage).items()}


def let_tasks_finish(kling: FakeKlingServer) -> int:
    """The tasks paid before the kill succeed now; a new task would succeed at once too (so a
    double payment shows up as a second task, not as a hang). Returns the polls so far."""
    kling.options.hang_all = False
    kling.release_hung_tasks()
    return kling.requests["GET task"]


def assert_paid_once_and_complete(
    storage: Path,
    openai: FakeOpenAIServer,
    kling: FakeKlingServer,
    journaled: dict[str, str],
    polls_before: int,
) -> None:
    assert kling.requests["POST submit"] == SCENES, kling.requests
    assert len(kling.tasks) == SCENES
    assert set(kling.tasks_per_request().values()) == {1}
    assert set(kling.successful_tasks_per_request().values()) == {1}
    assert kling.requests["GET task"] > polls_before  # the journaled tasks were polled
    assert kling.requests["GET list"] == 0  # every task id was known: no lost-submit lookup
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
    script = write_script(tmp_path / "script.json", script_document(SCRIPT_ID, SCENES))
    journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, script)

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
        # From failure: only the image steps that never finished, and what depends on them.
        assert not any("write_scene_prompt" in s or "plan_scenes" in s for s in steps), steps
        assert sum("draw_scene_image" in s for s in steps) == SCENES, steps


def test_a_fresh_run_of_the_same_script_resumes_the_journaled_tasks(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> None:
    openai, kling = fakes
    storage = tmp_path / "storage"
    (tmp_path / "tmp").mkdir()
    env = fake_env(
        openai,
        kling,
        SCENE_PIPELINE_LOCAL_DIR=str(storage),
        KLING_MAX_CONCURRENCY=str(SCENES),
        KLING_TASK_TIMEOUT_SECONDS="60",
        # The temporary instance of a killed CLI is never cleaned up: keep it under tmp_path.
        TMPDIR=str(tmp_path / "tmp"),
    )
    script = write_script(tmp_path / "script.json", script_document(SCRIPT_ID, SCENES))
    journaled = kill_while_tasks_are_in_flight(tmp_path, kling, env, script)

    polls_before = let_tasks_finish(kling)
    code, out, err = run_to_end([CLI, "run", str(script)], env, tmp_path / "logs", "fresh")
    assert code == 0, (out + err)[-3000:]
    assert f"script {SCRIPT_ID} " in out and "complete" in out
    assert_paid_once_and_complete(storage, openai, kling, journaled, polls_before)


def test_after_a_kill_the_next_cli_run_on_the_same_dagster_home_is_not_blocked(
    tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> None:
    openai, kling = fakes
    home, storage, env = dagster_home_env(tmp_path, openai, kling)
    script = write_script(tmp_path / "script.json", script_document(SCRIPT_ID, SCENES))
    kill_while_tasks_are_in_flight(tmp_path, kling, env, script)
    let_tasks_finish(kling)
    with DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()

    job = start([CLI, "run", str(script)], env, tmp_path / "logs", "next")
    stuck_since: float | None = None
    try:
        deadline = time.monotonic() + 120
        while job.process.poll() is None and time.monotonic() < deadline:
            with DagsterInstance.from_config(str(home)) as instance:
                info = instance.event_log_storage.get_concurrency_info("kling")
            waiting = info.pending_run_ids - {dead.run_id}
            if waiting and info.active_run_ids == {dead.run_id}:
                stuck_since = stuck_since or time.monotonic()
                # Ten seconds with every slot held by a dead run and nothing else moving.
                assert time.monotonic() - stuck_since < 10, (
                    f"the image steps of run(s) {sorted(waiting)} wait for kling pool slots"
                    f" held by the killed run {dead.run_id}"
                )
            else:
                stuck_since = None
            time.sleep(0.5)
    finally:
        job.kill_group()
    assert job.process.returncode == 0, job.output()[-3000:]
