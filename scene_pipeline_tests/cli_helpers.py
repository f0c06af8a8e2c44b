"""Helpers shared by the CLI end-to-end tests of portraits (test_characters.py) and of
steering (test_steering.py): a first run made once per test session, the CLI's environment,
and small readers of manifests and of the fake KLING's task times."""

from __future__ import annotations

import fcntl
import os
import pickle
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .conftest import PIPELINE_ENV
from .fakes.kling import FakeTask

T = TypeVar("T")


def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], T]
) -> T:
    """`make(folder)` once per test session, even on several xdist workers: the first worker
    to get here makes it, the others wait for it and read its (pickled) result."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # this session's folder, for every worker
    with open(shared / f"{name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        result = shared / f"{name}.pickle"
        if not result.exists():
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared))
            result.write_bytes(pickle.dumps(make(folder)))
        return pickle.loads(result.read_bytes())


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any of the pipeline's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
    return {**env, "DAGSTER_DISABLE_TELEMETRY": "1", **extra}


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def scenes_of(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["scene_id"]: s for s in manifest["scenes"]}


def generations(manifest: dict[str, Any]) -> dict[str, str]:
    return {sid: s["generation"] for sid, s in scenes_of(manifest).items()}


def peak_in_flight(tasks: list[FakeTask]) -> int:
    """The most images the fake account had in flight at any moment (from its task times)."""
    events = sorted(
        [(t.created_mono, t.n) for t in tasks]
        + [(t.finishes_mono, -t.n) for t in tasks if t.finishes_mono is not None]
    )  # at the same instant an end (negative) sorts before a start
    peak = level = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak
