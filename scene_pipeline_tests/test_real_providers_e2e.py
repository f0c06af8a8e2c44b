"""`scene-pipeline run` with the real OpenAI and KLING clients against the fake servers:
what a user sees when the keys are set, with faults injected.

Character references are on (the default) unless a test is about something else: a run first
draws one portrait per character who appears in a scene (KLING text-to-image), then draws each
scene with its characters' portraits (`/v1/images/multi-image2image`). The script of
`resilience.script_document` has two characters, one speaking in each scene: every run that
draws everything pays for SCENES + 2 images.
"""

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .resilience import CLI, Background, script_document, start, wait_until, write_script
from .test_cli import cli

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

SCENES = 6
PORTRAITS = 2  # 민수 speaks in the odd scenes, 할머니 in the even ones
# Portraits are sent back to KLING as references: at least 300 px on each side (2:3).
IMAGE_LONG_SIDE = 480


def speaker(scene_id: str) -> str:
    return "민수" if int(scene_id) % 2 else "할머니"


def script(marked: dict[int, str] | None = None, scenes: int = SCENES) -> dict[str, Any]:
    """The script; `marked` puts a fault marker into a scene's emotion (the fake OpenAI copies
    emotions into the prompt, so the marker reaches the fake KLING)."""
    return script_document("e2e", scenes, emotions=marked)


def fake_kling(**options: Any) -> FakeKlingServer:
    return FakeKlingServer(
        **{
            "task_latency_seconds": 0.3,
            "concurrency_limit": 3,
            "image_long_side": IMAGE_LONG_SIDE,
            **options,
        }
    )


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def kling_fake() -> Iterator[FakeKlingServer]:
    with fake_kling() as server:
        yield server


def env_for(tmp_path: Path, openai: FakeOpenAIServer, kling: FakeKlingServer, **extra: str):
    return {
        "SCENE_PIPELINE_LOCAL_DIR": str(tmp_path / "storage"),
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.base_url,
        "KLING_ACCESS_KEY": kling.options.access_key,
        "KLING_SECRET_KEY": kling.options.secret_key,
        "KLING_API_BASE_URL": kling.url,
        "KLING_MAX_CONCURRENCY": "3",
        "KLING_POLL_INTERVAL_SECONDS": "0.2",
        **extra,
    }


def manifest_of(tmp_path: Path) -> dict[str, Any] | None:
    path = tmp_path / "storage/results/e2e/manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def run(tmp_path: Path, document: dict[str, Any], env: dict[str, str], *args: str):
    path = write_script(tmp_path / "script.json", document)
    done = cli("run", path, *args, env=env, timeout=240)
    return done, manifest_of(tmp_path)


def local_file(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def record_of(scene: dict[str, Any]) -> dict[str, Any]:
    return json.loads(local_file(scene["image_s3url"]).with_suffix(".json").read_text())


def generations(manifest: dict[str, Any]) -> dict[str, str]:
    return {s["scene_id"]: s["generation"] for s in manifest["scenes"]}


def paid(kling: FakeKlingServer, openai: FakeOpenAIServer) -> tuple[int, int, int]:
    """(KLING tasks accepted, KLING submits, OpenAI chat calls) so far."""
    submits = kling.requests["POST submit"] + kling.requests["POST multi submit"]
    return len(kling.tasks), submits, openai.calls["chat"]


def test_keys_set_means_real_prompts_and_pictures_and_nothing_paid_twice(
    tmp_path, openai_fake, kling_fake
) -> None:
    env = env_for(tmp_path, openai_fake, kling_fake)
    done, manifest = run(tmp_path, script(), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest["status"] == "complete" and manifest["offline"] is False
    assert manifest["notice"] is None and "OFFLINE" not in done.stdout
    portraits = {c["name"]: c for c in manifest["characters"]}
    assert sorted(portraits) == ["민수", "할머니"]
    portrait_sha = {
        name: hashlib.sha256(local_file(c["portrait_s3url"]).read_bytes()).hexdigest()
        for name, c in portraits.items()
    }
    tasks = {t.task_id: t for t in kling_fake.tasks}
    for scene in manifest["scenes"]:
        who = speaker(scene["scene_id"])
        # Drawn by KLING's reference model, with the portrait of the one person in it.
        assert (scene["provider"], scene["model"], scene["offline"]) == ("kling", "kling-v2", False)
        assert scene["characters"] == [who]
        assert scene["references"] == [portraits[who]["portrait_s3url"]]
        assert "민수" not in scene["image_prompt"] and "할머니" not in scene["image_prompt"]
        record = record_of(scene)
        assert record["image"]["external_task_id"]
        task = tasks[record["image"]["task_id"]]
        assert task.endpoint == "multi-image2image"
        assert task.subject_images == [portrait_sha[who]]
        assert (
            record["prompt"]["provider"] == "openai" and record["prompt"]["usage"]["total_tokens"]
        )
    assert len(kling_fake.tasks_of("generations")) == PORTRAITS
    assert len(kling_fake.tasks_of("multi-image2image")) == SCENES
    assert set(kling_fake.tasks_per_request().values()) == {1}
    assert openai_fake.calls["chat"] == 1 + SCENES  # one character sheet + one per scene

    # The same script again: up to date, no run, nothing paid.
    before = paid(kling_fake, openai_fake)
    done, again = run(tmp_path, script(), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "up to date" in done.stderr and "no run started" in done.stderr
    assert "complete" in done.stdout
    assert paid(kling_fake, openai_fake) == before
    assert generations(again) == generations(manifest)

    # One scene changes (its text and mood; the fake's prompts show the mood): exactly one
    # prompt and one task, for that scene.
    changed = script({3: "sad"})
    changed["scenes"][2]["audios"][0]["text"] = "장면 3은 비가 온다."
    done, third = run(tmp_path, changed, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert paid(kling_fake, openai_fake) == (before[0] + 1, before[1] + 1, before[2] + 1)
    assert kling_fake.tasks[-1].endpoint == "multi-image2image"
    assert "sad" in kling_fake.tasks[-1].prompt
    assert {k for k, g in generations(third).items() if g != generations(manifest)[k]} == {"3"}

    # An operator forces one scene: exactly one more task; its prompt is known (no chat).
    done, fourth = run(tmp_path, changed, env, "--scenes", "5", "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    assert paid(kling_fake, openai_fake) == (before[0] + 2, before[1] + 2, before[2] + 1)
    assert {k for k, g in generations(fourth).items() if g != generations(third)[k]} == {"5"}


def test_every_image_is_drawn_once_under_injected_faults(tmp_path, openai_fake) -> None:
    with fake_kling(
        concurrency_limit=2,  # smaller than KLING_MAX_CONCURRENCY: 1303s happen
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        failed_task_rate=0.1,
        download_failure_rate=0.2,
        seed=7,
    ) as kling:
        env = env_for(tmp_path, openai_fake, kling, KLING_MAX_CONCURRENCY="3")
        done, manifest = run(tmp_path, script(), env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert manifest["status"] == "complete"
        successful = kling.successful_tasks_per_request()
        assert len(successful) == SCENES + PORTRAITS and set(successful.values()) == {1}
        # The faults really happened (and were absorbed).
        assert sum(n for (_, code), n in kling.answers.items() if code in (1302, 1303)) > 0
        assert sum(n for (_, code), n in kling.answers.items() if code >= 5000) > 0


def test_moderation_fails_only_that_scene_and_the_cli_exits_1(
    tmp_path, openai_fake, kling_fake
) -> None:
    env = env_for(tmp_path, openai_fake, kling_fake)
    done, manifest = run(tmp_path, script({2: "[[moderate-prompt]]"}), env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert manifest["status"] == "partial"
    by_id = {s["scene_id"]: s for s in manifest["scenes"]}
    assert by_id["2"]["status"] == "failed" and "moderation" in by_id["2"]["error"].lower()
    assert by_id["2"]["refused"] is True
    assert all(s["status"] == "succeeded" for k, s in by_id.items() if k != "2")
    assert "partial" in done.stdout
    assert kling_fake.answers[(400, 1301)] == 1  # refused once, not submitted again

    # A refused scene is not requested again until its content changes: nothing is due.
    before = paid(kling_fake, openai_fake)
    again, _ = run(tmp_path, script({2: "[[moderate-prompt]]"}), env)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "up to date" in again.stderr and "no run started" in again.stderr
    assert paid(kling_fake, openai_fake) == before
    assert kling_fake.answers[(400, 1301)] == 1


def test_status_lists_a_scene_refused_by_moderation_as_refused(
    tmp_path, openai_fake, kling_fake
) -> None:
    """A refused scene waits for a change of its content: `status` is where an operator
    learns which scenes those are, and that the next run will not draw them."""
    env = env_for(tmp_path, openai_fake, kling_fake)
    done, _ = run(tmp_path, script({2: "[[moderate-prompt]]"}, scenes=3), env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert kling_fake.answers[(400, 1301)] == 1

    status = cli("status", "e2e", env=env)
    assert status.returncode == 1, status.stderr[-3000:]  # partial
    assert (
        "refused by moderation, not requested again until their content or prompt override"
        " changes: 2"
    ) in status.stdout
    assert "due at the next run" not in status.stdout
    rows = {
        line.split()[0]: line
        for line in status.stdout.splitlines()
        if line.split() and line.split()[0] in {"1", "2", "3"}
    }
    assert "failed (refused)" in rows["2"]
    assert "succeeded" in rows["1"] and "succeeded" in rows["3"]
    assert "refused" not in rows["1"] + rows["3"]


def test_hung_tasks_fail_their_scenes_at_the_deadline_without_resubmitting(
    tmp_path, openai_fake
) -> None:
    # The hung tasks keep holding their slots at KLING: one more is left for a forced redraw.
    with fake_kling(concurrency_limit=SCENES + 1, hang_all=True) as kling:
        env = env_for(
            tmp_path,
            openai_fake,
            kling,
            KLING_TASK_TIMEOUT_SECONDS="3",
            KLING_MAX_CONCURRENCY=str(SCENES),
            # About the scenes' own tasks: no portraits to wait for.
            SCENE_PIPELINE_CHARACTER_REFERENCES="off",
        )
        done, manifest = run(tmp_path, script(), env)
        assert done.returncode == 1, done.stderr[-3000:]
        assert manifest["status"] == "failed"
        for scene in manifest["scenes"]:
            assert scene["status"] == "failed"
            assert "timed out after 3 s" in scene["error"], scene["error"]
        # One task per scene, never resubmitted within the run (a timed-out task is looked
        # at again by the next run before anything new is paid).
        assert len(kling.tasks) == SCENES
        assert set(kling.tasks_per_request().values()) == {1}
        assert all(kling.task_status(t.task_id) != "succeed" for t in kling.tasks)
        hung = {t.task_id for t in kling.tasks}

        # `--force` draws scene 1 anew: a new paid task, not a wait on its unfinished one
        # (which still hangs, and would time out again).
        kling.options.hang_all = False
        forced, manifest = run(tmp_path, script(), env, "--scenes", "1", "--force")
        scene_1 = next(s for s in manifest["scenes"] if s["scene_id"] == "1")
        assert scene_1["status"] == "succeeded", (scene_1, forced.stderr[-3000:])
        assert kling.requests["POST submit"] == SCENES + 1
        (new_task,) = {t.task_id for t in kling.tasks} - hung
        assert record_of(scene_1)["image"]["task_id"] == new_task

        # The other tasks finish late: the next run collects them without paying again.
        kling.release_hung_tasks()
        done, manifest = run(tmp_path, script(), env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert manifest["status"] == "complete"
        assert len(kling.tasks) == SCENES + 1 and kling.requests["POST submit"] == SCENES + 1
        drawn_by = {s["scene_id"]: record_of(s)["image"]["task_id"] for s in manifest["scenes"]}
        assert drawn_by.pop("1") == new_task
        assert set(drawn_by.values()) < hung and len(set(drawn_by.values())) == SCENES - 1


def test_an_account_error_stops_submitting_and_says_why(tmp_path, openai_fake) -> None:
    with fake_kling(account_error_code=1102) as kling:
        env = env_for(
            tmp_path,
            openai_fake,
            kling,
            # Scenes call KLING themselves (no portraits first).
            SCENE_PIPELINE_CHARACTER_REFERENCES="off",
        )
        done, manifest = run(tmp_path, script(), env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert manifest["status"] == "failed"
    assert all(s["status"] == "failed" for s in manifest["scenes"])
    errors = [s["error"] for s in manifest["scenes"]]
    assert all("1102" in e or "resource pack" in e for e in errors), errors
    # Only the steps already in flight when the first error landed called KLING, once each
    # (an account error is not retried); the others did not try.
    not_attempted = sum("image not attempted" in e for e in errors)
    assert not_attempted >= 1, errors
    assert kling.requests["POST submit"] == SCENES - not_attempted
    assert kling.tasks == []


def test_a_run_beside_another_run_of_the_same_script_does_not_pay_twice(
    tmp_path, openai_fake
) -> None:
    """Two `run`s of one script a second apart on a fresh DAGSTER_HOME: one draws, the other
    exits 3 naming the holder; a third with `--wait` waits and finds the script up to date."""
    scenes = 8
    home = tmp_path / "dagster_home"  # does not exist yet: the first CLI creates the instance
    lease = tmp_path / "storage/pipeline/leases/e2e.json"
    logs = tmp_path / "logs"
    with fake_kling(concurrency_limit=5) as kling:
        env = env_for(
            tmp_path, openai_fake, kling, DAGSTER_HOME=str(home), KLING_MAX_CONCURRENCY="5"
        )
        path = write_script(tmp_path / "script.json", script(scenes=scenes))
        jobs: dict[str, Background] = {}
        try:
            jobs["a"] = start([CLI, "run", str(path)], env, logs, "a")
            time.sleep(1)
            jobs["b"] = start([CLI, "run", str(path)], env, logs, "b")
            wait_until(
                lambda: lease.exists() or all(j.process.poll() is not None for j in jobs.values()),
                120,
                "one of the two runs to take the script's lease",
            )
            jobs["waiting"] = start([CLI, "run", str(path), "--wait", "600"], env, logs, "waiting")
            codes = {name: job.wait(300) for name, job in jobs.items()}
        finally:
            for job in jobs.values():
                if job.process.poll() is None:
                    job.kill_group()
        outputs = {
            name: (job.stdout.read_text("utf-8"), job.stderr.read_text("utf-8"))
            for name, job in jobs.items()
        }
        for name, (out, err) in outputs.items():
            for bad in ("Traceback", "IntegrityError", "sqlalchemy"):
                assert bad.lower() not in (out + err).lower(), (name, err[-3000:])

        assert sorted([codes["a"], codes["b"]]) == [0, 3], (codes, outputs)
        winner, loser = ("a", "b") if codes["a"] == 0 else ("b", "a")
        assert "complete (8/8 scenes succeeded)" in outputs[winner][0], outputs[winner]
        with DagsterInstance.from_config(str(home)) as instance:
            (dagster_run,) = instance.get_runs()  # one run, the winner's
            assert dagster_run.status == DagsterRunStatus.SUCCESS
        # The loser: after the configuration banner, one line naming who holds the script.
        out, err = outputs[loser]
        lines = [line for line in err.splitlines() if not line.startswith("scene-pipeline ")]
        assert out == "" and len(lines) == 1, err
        assert lines[0].startswith("script e2e is busy: "), err
        assert f"is busy: scene-pipeline pid {jobs[winner].process.pid} on " in lines[0], err
        # The patient one waited for the winner, then found nothing to draw.
        out, err = outputs["waiting"]
        assert codes["waiting"] == 0, err[-3000:]
        assert "up to date" in err and "no run started" in err
        assert "complete (8/8 scenes succeeded)" in out

        successful = kling.successful_tasks_per_request()
        assert len(successful) == scenes + PORTRAITS and set(successful.values()) == {1}
        assert set(kling.tasks_per_request().values()) == {1}

        # Later, the same unchanged script again: up to date, nothing paid, no run.
        before = paid(kling, openai_fake)
        done = cli("run", path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "up to date" in done.stderr and "no run started" in done.stderr
        assert paid(kling, openai_fake) == before
        with DagsterInstance.from_config(str(home)) as instance:
            assert len(instance.get_runs()) == 1


def tasks_of_script(storage: Path, script_id: str) -> set[str]:
    """The fake's task ids that drew a script's scenes and portraits (from their records)."""
    manifest = json.loads((storage / "results" / script_id / "manifest.json").read_text())
    images = [s["image_s3url"] for s in manifest["scenes"]]
    images += [c["portrait_s3url"] for c in manifest["characters"]]
    return {
        json.loads(local_file(uri).with_suffix(".json").read_text())["image"]["task_id"]
        for uri in images
    }


def test_two_scripts_run_at_once_share_the_account_limit_without_a_refusal(
    tmp_path, openai_fake
) -> None:
    """README "The KLING account's limit, across every run": two `scene-pipeline run`s of
    different scripts at the same moment, on one DAGSTER_HOME, share the `kling` pool; the
    account (limit = KLING_MAX_CONCURRENCY) never refuses a task for being over its limit,
    and the two scripts' tasks did run side by side (the limit was shared, not taken in
    turns)."""
    # An odd limit: tasks of equal length free their slots together, and with a limit of 2
    # each pair of slots goes on to the next pair of one script (the queue is first come,
    # first served); a script's 2 portraits, or its last scene, leave a third slot to the other.
    limit, scenes = 3, 4
    home = tmp_path / "dagster_home"  # does not exist yet: the first CLI creates the instance
    logs = tmp_path / "logs"
    # 1.5 s per task: tasks of the two runs overlap even on a loaded machine.
    with fake_kling(concurrency_limit=limit, task_latency_seconds=1.5) as kling:
        env = env_for(
            tmp_path, openai_fake, kling, DAGSTER_HOME=str(home), KLING_MAX_CONCURRENCY=str(limit)
        )
        jobs: dict[str, Background] = {}
        try:
            for script_id in ("north", "south"):
                document = script_document(script_id, scenes)
                path = write_script(tmp_path / f"{script_id}.json", document)
                jobs[script_id] = start([CLI, "run", str(path)], env, logs, script_id)
            codes = {name: job.wait(300) for name, job in jobs.items()}
        finally:
            for job in jobs.values():
                if job.process.poll() is None:
                    job.kill_group()
        for name, job in jobs.items():
            assert codes[name] == 0, (name, job.output()[-4000:])
            assert f"complete ({scenes}/{scenes} scenes succeeded)" in job.output(), name
        assert kling.answers[(429, 1303)] == 0, kling.answers

        storage = tmp_path / "storage"
        paid_for = {name: tasks_of_script(storage, name) for name in jobs}
        assert {name: len(ids) for name, ids in paid_for.items()} == {
            "north": scenes + PORTRAITS,
            "south": scenes + PORTRAITS,
        }
        assert paid_for["north"] | paid_for["south"] == {t.task_id for t in kling.tasks}
        by_id = {t.task_id: t for t in kling.tasks}
        north = [by_id[i] for i in paid_for["north"]]
        south = [by_id[i] for i in paid_for["south"]]
        assert any(
            a.created_mono < b.finishes_mono and b.created_mono < a.finishes_mono
            for a in north
            for b in south
        ), "the two scripts' tasks never ran at the same time"
        with DagsterInstance.from_config(str(home)) as instance:
            runs = instance.get_runs()
            assert sorted(r.tags["dagster/partition"] for r in runs) == ["north", "south"]
            assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
