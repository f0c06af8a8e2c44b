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


def test_validate_accepts_the_three_shapes() -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    done = cli("validate", *files)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(files) == 3
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

    again = cli("run", EXAMPLES / "rooftop_cat.json", "--scenes", "2", "--force", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [
        line.split()[1] for line in again.stdout.splitlines() if line.startswith("  scene")
    ] == ["2"]

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": "rooftop-cat"}))
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2
        assert {r.job_name for r in runs} == {"scene_job"}
        assert instance.has_dynamic_partition("scripts", "rooftop-cat")
        # The step per scene ran under the multiprocess executor, in the kling pool.
        assert instance.event_log_storage.get_concurrency_info("kling").slot_count == 5


def test_run_refuses_bad_input_and_unknown_scenes(tmp_path: Path) -> None:
    env = {"SCENE_PIPELINE_LOCAL_DIR": str(tmp_path / "storage")}
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    bad = cli("run", tmp_path / "bad.json", env=env)
    assert bad.returncode == 2 and "not UTF-8" in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli("run", EXAMPLES / "rooftop_cat.json", "--scenes", "1,99", env=env)
    assert unknown.returncode == 2 and "no such scene(s): 99" in unknown.stderr
    assert not (tmp_path / "storage" / "results").exists()


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["run"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert cli(*args).returncode == 2


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

    before = cli("status", "rooftop-cat", env=env)
    assert before.returncode == 1 and "unknown" in before.stderr
    assert cli("run", EXAMPLES / "rooftop_cat.json", env=env).returncode == 0
    status = cli("status", "rooftop-cat", env=env)
    assert status.returncode == 0, status.stderr
    assert "complete (3/3 scenes succeeded)" in status.stdout
    rows = [line.split() for line in status.stdout.splitlines() if line.strip().startswith("3-key")]
    assert rows and rows[0][1] == "succeeded"
    # With KLING keys set, the offline images are reported stale (they would be redrawn).
    keyed = {**env, "KLING_ACCESS_KEY": "k" * 32, "KLING_SECRET_KEY": "s" * 32}
    stale = cli("status", "rooftop-cat", env=keyed)
    assert stale.returncode == 0, stale.stderr
    assert "stale with the current providers: 1, 2, 3-key" in stale.stdout
    assert cli("status", "../etc", env=env).returncode == 2
