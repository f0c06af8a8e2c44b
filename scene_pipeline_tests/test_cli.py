"""`scene-pipeline` as a user runs it: a subprocess, exit codes, one line per problem."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from .conftest import EXAMPLES

CLI = str(Path(sys.executable).with_name("scene-pipeline"))


def cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def scene_lines(stdout: str) -> list[list[str]]:
    """The `  scene <id> <status> ...` lines of a run's summary, split into words."""
    return [line.split() for line in stdout.splitlines() if line.startswith("  scene ")]


def executor_of(instance: DagsterInstance, run_id: str) -> str:
    """How a run executed its steps: "in_process" or "multiprocess" (from its engine events)."""
    messages = [e.message for e in instance.all_logs(run_id)]
    if any(m.startswith("Executing steps using multiprocess executor") for m in messages):
        return "multiprocess"
    if any(m.startswith("Executing steps in process") for m in messages):
        return "in_process"
    return "unknown"


def test_validate_accepts_the_three_shapes() -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    done = cli("validate", *files)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(files)
    assert {line.rsplit("(", 1)[1] for line in lines} == {
        "script document)",
        "per-scene request array)",
        "per-scene request)",
    }


BAD_FILES: dict[str, bytes] = {
    "empty.json": b"",
    "binary.json": bytes(range(256)),
    "not-json.json": b"{scenes: [}",
    "null.json": b"null",
    "slash-id.json": json.dumps(
        {
            "script_metadata": {"script_id": "a/b", "title": "t"},
            "scenes": [{"scene_id": 1, "audios": [{"type": "sound", "text": "x"}]}],
        }
    ).encode(),
    "no-scenes.json": json.dumps(
        {"script_metadata": {"script_id": "a", "title": "t"}, "scenes": []}
    ).encode(),
    "too-large.json": b'{"pad": "' + b" " * (5 * 1024 * 1024) + b'"}',
}


def test_validate_rejects_bad_files_one_line_each_without_traceback(tmp_path: Path) -> None:
    paths = []
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    done = cli("validate", *paths, tmp_path / "missing.json", tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    for path in [*paths, tmp_path / "missing.json", tmp_path]:
        assert any(line.startswith(f"{path}: ") for line in lines), path
    assert any("slash-id.json: script_metadata.script_id: 'a/b'" in line for line in lines)
    assert any("too-large.json: $:" in line and "5 MiB" in line for line in lines)


def test_schema_is_json_that_names_the_contract_fields() -> None:
    done = cli("schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert "script_metadata" in schema["properties"]


def test_a_tmpdir_too_long_for_the_forkserver_socket_spawns_the_steps(tmp_path: Path) -> None:
    # An AF_UNIX socket path has at most 107 bytes; the forkserver's lives under TMPDIR.
    tmpdir = tmp_path / ("t" * max(1, 120 - len(str(tmp_path))))
    tmpdir.mkdir()
    storage = tmp_path / "storage"
    env = {"SCENE_PIPELINE_LOCAL_DIR": str(storage), "TMPDIR": str(tmpdir)}
    done = cli("run", EXAMPLES / "rooftop_cat.json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps start by spawn" in done.stderr
    assert "complete (3/3 scenes succeeded)" in done.stdout


def test_run_materializes_through_dagster_on_dagster_home(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    storage = tmp_path / "storage"
    env = {"DAGSTER_HOME": str(home), "SCENE_PIPELINE_LOCAL_DIR": str(storage)}
    done = cli("run", EXAMPLES / "rooftop_cat.json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "complete (3/3 scenes succeeded)" in done.stdout
    assert "OFFLINE" in done.stdout and "OFFLINE" in done.stderr
    manifest = json.loads((storage / "results/rooftop-cat/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["offline"] is True
    for scene in manifest["scenes"]:
        assert Path(scene["image_s3url"].removeprefix("file://")).is_file()
    # Character references are on by default: one portrait per character in a scene.
    assert sorted(c["name"] for c in manifest["characters"]) == ["고양이", "지우"]
    for character in manifest["characters"]:
        assert Path(character["portrait_s3url"].removeprefix("file://")).is_file()

    again = cli("run", EXAMPLES / "rooftop_cat.json", "--scenes", "2", "--force", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [words[1] for words in scene_lines(again.stdout)] == ["2"]

    # Nothing changed since: no run is started at all, and the summary is printed.
    unchanged = cli("run", EXAMPLES / "rooftop_cat.json", env=env)
    assert unchanged.returncode == 0, unchanged.stderr[-3000:]
    assert "up to date" in unchanged.stderr and "no run started" in unchanged.stderr
    assert "complete (3/3 scenes succeeded)" in unchanged.stdout
    assert [words[1:3] for words in scene_lines(unchanged.stdout)] == [
        ["1", "succeeded"],
        ["2", "succeeded"],
        ["3-key", "succeeded"],
    ]

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": "rooftop-cat"}))
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2
        assert {r.job_name for r in runs} == {"scene_job"}
        assert instance.has_dynamic_partition("scripts", "rooftop-cat")
        forced, first = runs  # newest first
        steps = {s.step_key for s in instance.get_run_step_stats(first.run_id)}
        # One step per scene (mapping keys escape '-' as '_h'); the plan step draws the
        # portraits, two of them.
        assert {s for s in steps if s.startswith("scenes.render_scene[")} == {
            "scenes.render_scene[1]",
            "scenes.render_scene[2]",
            "scenes.render_scene[3_hkey]",
        }
        assert not [s for s in steps if "portrait" in s]
        forced_steps = {s.step_key for s in instance.get_run_step_stats(forced.run_id)}
        assert {s for s in forced_steps if "[" in s} == {"scenes.render_scene[2]"}
        # Five images to draw: step processes; one image: in the CLI's own process.
        assert executor_of(instance, first.run_id) == "multiprocess"
        assert executor_of(instance, forced.run_id) == "in_process"
        # The kling pool's limit is KLING_MAX_CONCURRENCY (default 5).
        assert instance.event_log_storage.get_concurrency_info("kling").slot_count == 5


def test_run_refuses_bad_input_and_unknown_scenes(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    env = {"SCENE_PIPELINE_LOCAL_DIR": str(storage)}
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    refused = {
        "not UTF-8": cli("run", tmp_path / "bad.json", env=env),
        "no such scene(s): 99": cli(
            "run", EXAMPLES / "rooftop_cat.json", "--scenes", "1,99", env=env
        ),
        "--candidates 5: use 1-4": cli(
            "run", EXAMPLES / "rooftop_cat.json", "--candidates", "5", env=env
        ),
        "KLING_MAX_CONCURRENCY='0'": cli(
            "run", EXAMPLES / "rooftop_cat.json", env={**env, "KLING_MAX_CONCURRENCY": "0"}
        ),
        "SCENE_PIPELINE_CHARACTER_REFERENCES='maybe'": cli(
            "run",
            EXAMPLES / "rooftop_cat.json",
            env={**env, "SCENE_PIPELINE_CHARACTER_REFERENCES": "maybe"},
        ),
    }
    for expected, done in refused.items():
        # One line on stderr (no banner, no traceback), exit 2.
        assert done.returncode == 2, (expected, done.stderr)
        assert done.stderr.count("\n") == 1 and expected in done.stderr, (expected, done.stderr)
        assert done.stdout == ""
    # Nothing was written anywhere.
    assert not storage.exists()


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["run"], ["run", "x.json", "--wait"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_the_real_sample_gets_fifteen_pictures(tmp_path: Path, sample_path: Path) -> None:
    storage = tmp_path / "storage"
    done = cli("run", sample_path, env={"SCENE_PIPELINE_LOCAL_DIR": str(storage)})
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((storage / "results/1/manifest.json").read_text())
    assert [s["status"] for s in manifest["scenes"]] == ["succeeded"] * 15
    assert manifest["offline"] is True
    for scene in manifest["scenes"]:
        assert scene["image_prompt"]
        png = Path(scene["image_s3url"].removeprefix("file://"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_submit_uploads_to_the_inbox_and_status_prints_the_manifest(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    env = {"SCENE_PIPELINE_LOCAL_DIR": str(storage)}
    submitted = cli("submit", EXAMPLES / "rooftop_cat.json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    inbox_copy = storage / "scripts/incoming/rooftop-cat.json"
    assert inbox_copy.read_bytes() == (EXAMPLES / "rooftop_cat.json").read_bytes()
    assert (
        cli("submit", EXAMPLES / "rooftop_cat.json", "--name", "../x.json", env=env).returncode == 2
    )

    # Submitted is not accepted: the inbox sensor has not seen it yet.
    before = cli("status", "rooftop-cat", env=env)
    assert before.returncode == 2 and "unknown script rooftop-cat" in before.stderr
    assert cli("run", EXAMPLES / "rooftop_cat.json", env=env).returncode == 0
    status = cli("status", "rooftop-cat", env=env)
    assert status.returncode == 0, status.stderr
    assert "complete (3/3 scenes succeeded)" in status.stdout
    rows = [line.split() for line in status.stdout.splitlines() if line.strip().startswith("3-key")]
    assert rows and rows[0][1] == "succeeded"
    assert "due at the next run" not in status.stdout and "stale" not in status.stdout
    # With KLING keys set, the offline images are reported stale: kept, redrawn on request.
    keyed = {**env, "KLING_ACCESS_KEY": "k" * 32, "KLING_SECRET_KEY": "s" * 32}
    stale = cli("status", "rooftop-cat", env=keyed)
    assert stale.returncode == 0, stale.stderr
    assert "stale (kept; the configuration changed since they were drawn): 1, 2, 3-key" in (
        stale.stdout
    )
    assert "due at the next run" not in stale.stdout
    assert cli("status", "../etc", env=env).returncode == 2
