"""`scene-pipeline run` with the real OpenAI and KLING clients against the fake servers:
what a user sees when the keys are set, with faults injected."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer
from .resilience import script_document
from .test_cli import cli

SCENES = 6


def script(marked: dict[int, str] | None = None) -> dict[str, Any]:
    """The 6-scene script; `marked` puts a fault marker into a scene's emotion."""
    return script_document("e2e", SCENES, emotions=marked)


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def kling_fake() -> Iterator[FakeKlingServer]:
    with FakeKlingServer(task_latency_seconds=0.5, concurrency_limit=3) as server:
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


def run(tmp_path: Path, document: dict[str, Any], env: dict[str, str], *args: str):
    path = tmp_path / "script.json"
    path.write_text(json.dumps(document, ensure_ascii=False), "utf-8")
    done = cli("run", path, *args, env=env, timeout=240)
    manifest_path = tmp_path / "storage/results/e2e/manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    return done, manifest


def kling_tasks(kling: FakeKlingServer) -> int:
    return len(kling.tasks)


def test_keys_set_means_real_prompts_and_pictures_and_nothing_paid_twice(
    tmp_path, openai_fake, kling_fake
) -> None:
    env = env_for(tmp_path, openai_fake, kling_fake)
    done, manifest = run(tmp_path, script(), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest["status"] == "complete" and manifest["offline"] is False
    assert manifest["notice"] is None and "OFFLINE" not in done.stdout
    for scene in manifest["scenes"]:
        assert (scene["provider"], scene["model"], scene["offline"]) == (
            "kling",
            "kling-v2-1",
            False,
        )
        assert "민수" not in scene["image_prompt"] and "할머니" not in scene["image_prompt"]
        record = json.loads(
            Path(scene["image_s3url"].removeprefix("file://")).with_suffix(".json").read_text()
        )
        assert record["image"]["task_id"] and record["image"]["external_task_id"]
        assert (
            record["prompt"]["provider"] == "openai" and record["prompt"]["usage"]["total_tokens"]
        )
    assert kling_tasks(kling_fake) == SCENES
    assert kling_fake.max_in_flight <= 3
    assert openai_fake.calls["chat"] == 1 + SCENES  # one character sheet + one per scene

    # The same script again: nothing is paid for.
    chat_before = openai_fake.calls["chat"]
    done, again = run(tmp_path, script(), env)
    assert done.returncode == 0
    assert kling_tasks(kling_fake) == SCENES and openai_fake.calls["chat"] == chat_before
    assert [s["generation"] for s in again["scenes"]] == [
        s["generation"] for s in manifest["scenes"]
    ]

    # One scene's text changes: one prompt, one task.
    changed = script()
    changed["scenes"][2]["audios"][0]["text"] = "장면 3은 비가 온다."
    done, third = run(tmp_path, changed, env)
    assert done.returncode == 0
    assert kling_tasks(kling_fake) == SCENES + 1
    assert openai_fake.calls["chat"] - chat_before <= 2

    # An operator forces one scene: exactly one more task.
    done, _ = run(tmp_path, changed, env, "--scenes", "5", "--force")
    assert done.returncode == 0
    assert kling_tasks(kling_fake) == SCENES + 2


def test_every_scene_is_drawn_once_under_injected_faults(tmp_path, openai_fake) -> None:
    with FakeKlingServer(
        task_latency_seconds=0.5,
        concurrency_limit=2,  # smaller than KLING_MAX_CONCURRENCY: 1303s happen
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        failed_task_rate=0.15,
        download_failure_rate=0.2,
        seed=7,
    ) as kling:
        env = env_for(tmp_path, openai_fake, kling, KLING_MAX_CONCURRENCY="3")
        done, manifest = run(tmp_path, script(), env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert manifest["status"] == "complete"
        successful = kling.successful_tasks_per_request()
        assert len(successful) == SCENES and set(successful.values()) == {1}
        assert kling.max_in_flight <= 2
        assert sum(n for (_, code), n in kling.answers.items() if code in (1302, 1303)) > 0


def test_moderation_fails_only_that_scene_and_the_cli_exits_1(
    tmp_path, openai_fake, kling_fake
) -> None:
    env = env_for(tmp_path, openai_fake, kling_fake)
    done, manifest = run(tmp_path, script({2: "[[moderate-prompt]]"}), env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert manifest["status"] == "partial"
    by_id = {s["scene_id"]: s for s in manifest["scenes"]}
    assert by_id["2"]["status"] == "failed" and "moderation" in by_id["2"]["error"].lower()
    assert all(s["status"] == "succeeded" for k, s in by_id.items() if k != "2")
    assert "partial" in done.stdout


def test_hung_tasks_end_the_run_within_a_minute(tmp_path, openai_fake) -> None:
    with FakeKlingServer(task_latency_seconds=0.5, concurrency_limit=6, hang_all=True) as kling:
        env = env_for(
            tmp_path, openai_fake, kling, KLING_TASK_TIMEOUT_SECONDS="5", KLING_MAX_CONCURRENCY="6"
        )
        started = time.monotonic()
        done, manifest = run(tmp_path, script(), env)
        elapsed = time.monotonic() - started
    assert elapsed < 60, elapsed
    assert done.returncode == 1
    assert manifest["status"] == "failed"
    assert all("timed out" in s["error"] for s in manifest["scenes"])


def test_an_account_error_stops_submitting_and_says_why(tmp_path, openai_fake) -> None:
    with FakeKlingServer(account_error_code=1102) as kling:
        done, manifest = run(tmp_path, script(), env_for(tmp_path, openai_fake, kling))
    assert done.returncode == 1
    assert manifest["status"] == "failed"
    assert all(s["status"] == "failed" for s in manifest["scenes"])
    assert any("1102" in s["error"] or "resource pack" in s["error"] for s in manifest["scenes"])
    # Only the steps already in flight when the first error landed called KLING.
    assert sum(1 for s in manifest["scenes"] if "not attempted" in s["error"]) >= 1
