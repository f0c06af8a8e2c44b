"""Helpers of the resilience tests: `scene-pipeline run` as a background process in its own
process group (so that a test can SIGKILL the run worker and every step process at once),
a small script document, and the environment that points the CLI at the fake servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer

CLI = str(Path(sys.executable).with_name("scene-pipeline"))
REPO = Path(__file__).resolve().parents[1]


def script_document(
    script_id: str, scenes: int, *, emotions: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """A script of `scenes` scenes in the canonical shape (Korean text, two people).

    `emotions` sets a scene's dialogue emotion: the fake OpenAI copies emotions into the
    prompt, so a fault marker there reaches the fake KLING."""
    emotions = emotions or {}
    return {
        "script_metadata": {
            "script_id": script_id,
            "title": "정류장의 밤",
            "characters": [
                {"name": "민수", "gender": 0, "description": "안경을 쓴 회사원"},
                {"name": "할머니", "gender": 1, "description": "백발, 빨간 우산"},
            ],
        },
        "scenes": [
            {
                "scene_id": i,
                "audios": [
                    {"type": "narration", "character": "narration", "text": f"장면 {i}."},
                    {
                        "type": "dialogue",
                        "character": "민수" if i % 2 else "할머니",
                        "text": f"대사 {i}",
                        "emotion": emotions.get(i, "calm"),
                    },
                ],
            }
            for i in range(1, scenes + 1)
        ],
        "options": {"style": "ghibli", "aspect_ratio": "9:16"},
    }


def write_script(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False), "utf-8")
    return path


def fake_env(openai: FakeOpenAIServer, kling: FakeKlingServer, **extra: str) -> dict[str, str]:
    """The environment of a run with the real clients against the fakes."""
    return {
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.base_url,
        "KLING_ACCESS_KEY": kling.options.access_key,
        "KLING_SECRET_KEY": kling.options.secret_key,
        "KLING_API_BASE_URL": kling.url,
        "KLING_POLL_INTERVAL_SECONDS": "0.2",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        **extra,
    }


@dataclass
class Background:
    """A process started in its own session (process group = its pid)."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text("utf-8", "replace") + self.stderr.read_text("utf-8", "replace")

    def kill_group(self) -> None:
        """SIGKILL the whole group (run worker, forkserver, step processes) and reap it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        # Step processes are not our children: wait until none of the group is left.
        wait_until(lambda: not group_alive(self.process.pid), 15, "the process group to die")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie of another owner: still counts as gone for us
        return False
    return True


def start(args: list[str], env: dict[str, str], logs: Path, name: str) -> Background:
    """Start `args` with `env` on top of this process's environment, output to files."""
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=err,
            env={**os.environ, **env},
            cwd=REPO,
            start_new_session=True,
        )
    return Background(process, stdout, stderr)


def run_to_end(
    args: list[str], env: dict[str, str], logs: Path, name: str, timeout: float = 150
) -> tuple[int, str, str]:
    """Run to completion; (exit code, stdout, stderr). The group is killed on a timeout."""
    job = start(args, env, logs, name)
    code = job.wait(timeout)
    if group_alive(job.process.pid):  # leftovers of a crashed run: never leave them behind
        job.kill_group()
    return (
        code,
        job.stdout.read_text("utf-8", "replace"),
        job.stderr.read_text("utf-8", "replace"),
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
