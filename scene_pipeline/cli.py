"""`scene-pipeline`: validate scripts, print the schema, and run a script through Dagster.

`run` executes the same job, with the same executor, as a run launched from the Dagster UI:
on the instance at $DAGSTER_HOME when it is set (so the run shows up in `dagster dev`),
otherwise on a temporary instance that is thrown away afterwards.

Exit codes: 0 ok / complete, 1 partial or failed run, 2 invalid input or usage.

Dagster and the providers are imported inside the commands that need them, so that
`validate` and `schema` answer at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scene_pipeline.constants import (
    DEFAULT_KLING_MAX_CONCURRENCY,
    KLING_POOL,
    MAX_SCRIPT_BYTES,
    SCENE_JOB_NAME,
    SCRIPT_PARTITIONS_NAME,
    TAG_LAUNCHED_BY,
)
from scene_pipeline.contract.outputs import Manifest, SourceRef, utc_now
from scene_pipeline.contract.script import (
    ContractError,
    Script,
    ScriptRejected,
    ScriptShape,
    parse_script,
    script_json_schema,
)

EXIT_OK = 0
EXIT_NOT_COMPLETE = 1
EXIT_INVALID = 2
LOCAL_SOURCE_PREFIX = "local-file:"
# Which process ran a CLI run: lets the next CLI run recognise a run whose process was killed.
TAG_CLI_HOST = "scene_pipeline/cli_host"
TAG_CLI_PID = "scene_pipeline/cli_pid"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scene-pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = commands.add_parser("validate", help="check script files against the contract")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")

    commands.add_parser("schema", help="print the JSON Schema of the canonical script document")

    run = commands.add_parser("run", help="validate a script and materialize its assets")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument(
        "--scenes",
        default="",
        metavar="ID,...",
        help="only (re)generate these scenes; the others keep their current images",
    )
    run.add_argument(
        "--force", action="store_true", help="regenerate the scenes even if they are unchanged"
    )
    submit = commands.add_parser(
        "submit", help="validate a script and upload it to the inbox (the sensor runs it)"
    )
    submit.add_argument("file", type=Path, metavar="FILE")
    submit.add_argument(
        "--name",
        default=None,
        help="object name under the inbox prefix (default: <script id>.json)",
    )

    status = commands.add_parser("status", help="print a script's manifest as a table")
    status.add_argument("script_id", metavar="SCRIPT_ID")

    run.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Dagster event log level shown on stderr (default: WARNING)",
    )
    return parser


# -- reading and validating -----------------------------------------------------------------


def read_script_file(path: Path) -> tuple[Script, ScriptShape, bytes]:
    """Read and validate one file; ScriptRejected for anything the contract refuses."""
    try:
        size = path.stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise ScriptRejected(
                [ContractError(path="$", message=f"file is {size} bytes; the limit is 5 MiB")]
            )
        if not path.is_file():
            raise ScriptRejected([ContractError(path="$", message="not a regular file")])
        data = path.read_bytes()
    except OSError as err:
        raise ScriptRejected(
            [ContractError(path="$", message=f"cannot read file: {err.strerror or err}")]
        ) from None
    script, shape = parse_script(data)
    return script, shape, data


def _print_rejection(path: Path, err: ScriptRejected) -> None:
    for error in err.errors:
        print(f"{path}: {error.path}: {error.message}", file=sys.stderr)


def cmd_validate(files: Sequence[Path]) -> int:
    status = EXIT_OK
    for path in files:
        try:
            script, shape, _ = read_script_file(path)
        except ScriptRejected as err:
            _print_rejection(path, err)
            status = EXIT_INVALID
            continue
        print(
            f"{path}: ok: script {script.script_id} {script.title!r}, {len(script.scenes)}"
            f" scene(s), {len(script.script_metadata.characters)} character(s) ({shape})"
        )
    return status


def cmd_schema() -> int:
    print(json.dumps(script_json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


# -- running ----------------------------------------------------------------------------------


def _pool_limit(env: os._Environ[str] | dict[str, str]) -> int:
    raw = env.get("KLING_MAX_CONCURRENCY", "").strip()
    try:
        return max(1, int(raw)) if raw else DEFAULT_KLING_MAX_CONCURRENCY
    except ValueError:
        return DEFAULT_KLING_MAX_CONCURRENCY


@contextmanager
def _instance() -> Iterator[Any]:
    """The instance at $DAGSTER_HOME, or a temporary one with the kling pool limited."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            _ensure_pool_limit(instance)
            _fail_abandoned_runs(instance)
            yield instance
        return
    limit = _pool_limit(os.environ)
    with tempfile.TemporaryDirectory(prefix="scene-pipeline-dagster-") as home:
        overrides = {
            "concurrency": {"pools": {"default_limit": limit, "granularity": "op"}},
            "telemetry": {"enabled": False},
            # The instance is deleted after the run: capturing each step's stdout would only
            # cost two extra processes per step (a `tail -F` and its watcher).
            "compute_logs": {
                "module": "dagster._core.storage.noop_compute_log_manager",
                "class": "NoOpComputeLogManager",
            },
        }
        with DagsterInstance.local_temp(home, overrides=overrides) as instance:
            yield instance


def _ensure_pool_limit(instance: Any) -> None:
    """An instance whose dagster.yaml sets no limit would let every image step of every run
    submit at once; give the kling pool the account's limit unless an operator set one."""
    config = instance.get_concurrency_config()
    if config.pool_config.default_pool_limit is not None:
        return
    if KLING_POOL in instance.event_log_storage.get_concurrency_keys():
        return
    limit = _pool_limit(os.environ)
    instance.event_log_storage.set_concurrency_slots(KLING_POOL, limit)
    print(f"set the '{KLING_POOL}' pool limit of this instance to {limit}", file=sys.stderr)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _fail_abandoned_runs(instance: Any) -> None:
    """A `scene-pipeline run` that was killed leaves its run STARTED, holding kling pool
    slots that no daemon frees (CLI runs have no launcher watching them): the next run's
    image steps would wait for them forever. Runs this host's CLI started from a process
    that no longer exists are marked failed and their slots freed; re-executions (which copy
    the parent's tags) are left to whoever launched them."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(
        RunsFilter(
            statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
            tags={TAG_LAUNCHED_BY: "cli", TAG_CLI_HOST: socket.gethostname()},
        )
    )
    for run in runs:
        pid = run.tags.get(TAG_CLI_PID, "")
        if run.parent_run_id or not pid.isdigit() or _process_alive(int(pid)):
            continue
        instance.report_run_failed(
            run, message=f"the scene-pipeline process {pid} that ran it no longer exists"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        print(
            f"marked abandoned run {run.run_id} failed (its process {pid} is gone)", file=sys.stderr
        )


def _accept(script: Script, shape: ScriptShape, data: bytes, path: Path) -> None:
    """Store the accepted copy of a validated file, as the inbox sensor does. The file
    replaces whatever version is stored: the user asked to run this file."""
    from scene_pipeline.environment import build_storage
    from scene_pipeline.intake import accepted_script, store_accepted

    source = SourceRef(
        # Only the file name: the absolute path says nothing the backend could use.
        key=LOCAL_SOURCE_PREFIX + path.name,
        etag=f'"{hashlib.md5(data).hexdigest()}"',
    )
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    store_accepted(
        build_storage(os.environ).get_bucket(),
        accepted_script(script, shape, source, modified),
        keep_newer=False,
    )


def run_config(scene_ids: Sequence[str], force: bool, log_level: str = "WARNING") -> dict[str, Any]:
    """Run config of scene_job: the scene selection lives on the fan-out op."""
    return {
        "ops": {
            "scenes": {
                "ops": {"plan_scenes": {"config": {"scene_ids": list(scene_ids), "force": force}}}
            }
        },
        "loggers": {"console": {"config": {"log_level": log_level}}},
    }


def execute_scene_job(
    instance: Any,
    script_id: str,
    scene_ids: Sequence[str] = (),
    force: bool = False,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> tuple[bool, str]:
    """Run scene_job for one partition with the job's own (multiprocess) executor."""
    from dagster import execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, [script_id])
    job = ReconstructableRepository.for_module(
        "scene_pipeline.definitions", "defs", working_directory=os.getcwd()
    ).get_reconstructable_job(SCENE_JOB_NAME)
    with execute_job(
        job,
        instance=instance,
        run_config=run_config(scene_ids, force, log_level),
        tags={
            "dagster/partition": script_id,
            TAG_LAUNCHED_BY: "cli",
            TAG_CLI_HOST: socket.gethostname(),
            TAG_CLI_PID: str(os.getpid()),
            **(tags or {}),
        },
        raise_on_error=False,
    ) as result:
        return result.success, result.run_id


def _summary(manifest: Manifest, scene_ids: Sequence[str]) -> list[str]:
    counts = {s: sum(1 for e in manifest.scenes if e.status == s) for s in ("succeeded", "failed")}
    lines = [
        f"script {manifest.script_id} {manifest.title!r}: {manifest.status}"
        f" ({counts['succeeded']}/{len([e for e in manifest.scenes if e.status != 'removed'])}"
        " scenes succeeded)"
    ]
    if manifest.offline:
        lines.append(f"NOTE: {manifest.notice}")
    for entry in manifest.scenes:
        if scene_ids and entry.scene_id not in scene_ids:
            continue
        where = entry.image_s3url or entry.error or ""
        flag = " [offline]" if entry.offline else ""
        lines.append(f"  scene {entry.scene_id:<8} {entry.status:<9}{flag} {where}")
    return lines


def cmd_run(path: Path, scenes: str, force: bool, log_level: str) -> int:
    try:
        script, shape, data = read_script_file(path)
    except ScriptRejected as err:
        _print_rejection(path, err)
        return EXIT_INVALID
    scene_ids = [s.strip() for s in scenes.split(",") if s.strip()]
    unknown = sorted(set(scene_ids) - {s.scene_id for s in script.scenes})
    if unknown:
        print(f"{path}: --scenes: no such scene(s): {', '.join(unknown)}", file=sys.stderr)
        return EXIT_INVALID

    from scene_pipeline.environment import ConfigurationError, build_storage, describe
    from scene_pipeline.storage import StorageError

    try:
        for line in describe(os.environ):
            print(f"scene-pipeline {line}", file=sys.stderr)
        _accept(script, shape, data, path)
    except ConfigurationError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except StorageError as err:
        print(f"storage error: {err}", file=sys.stderr)
        return EXIT_NOT_COMPLETE

    started = utc_now()
    with _instance() as instance:
        ok, run_id = execute_scene_job(instance, script.script_id, scene_ids, force, log_level)
        where = (
            f"in the UI of DAGSTER_HOME={os.environ['DAGSTER_HOME']}"
            if os.environ.get("DAGSTER_HOME")
            else "on a temporary instance (set DAGSTER_HOME to keep runs for the UI)"
        )
        print(f"run {run_id} {'succeeded' if ok else 'FAILED'} {where}", file=sys.stderr)

    try:
        manifest = build_storage(os.environ).get_bucket().read_manifest(script.script_id)
    except StorageError as err:
        print(f"storage error: {err}", file=sys.stderr)
        return EXIT_NOT_COMPLETE
    if manifest is None or manifest.updated_at < started:
        print("this run wrote no manifest; see the run's logs above", file=sys.stderr)
        return EXIT_NOT_COMPLETE
    for line in _summary(manifest, scene_ids):
        print(line)
    if not ok:
        return EXIT_NOT_COMPLETE
    return EXIT_OK if manifest.status == "complete" else EXIT_NOT_COMPLETE


def cmd_submit(path: Path, name: str | None) -> int:
    try:
        script, _, data = read_script_file(path)
    except ScriptRejected as err:
        _print_rejection(path, err)
        return EXIT_INVALID
    from scene_pipeline.environment import ConfigurationError, build_storage
    from scene_pipeline.sensors import InboxSettings
    from scene_pipeline.storage import StorageError, layout

    name = name or f"{script.script_id}.json"
    segments = name.split("/")
    if any(not layout.is_safe_name(s) for s in segments):
        print(f"--name {name!r}: use letters, digits, '.', '_', '-' and '/'", file=sys.stderr)
        return EXIT_INVALID
    try:
        inbox = InboxSettings.from_env(os.environ).prefix
        store = build_storage(os.environ).get_store()
        store.put(inbox + name, data, "application/json")
    except (ConfigurationError, StorageError) as err:
        print(f"upload failed: {err}", file=sys.stderr)
        return EXIT_NOT_COMPLETE
    print(
        f"uploaded script {script.script_id} to {store.uri(inbox + name)}; the inbox sensor"
        " runs it at its next tick (see `scene-pipeline status` and the Dagster UI)"
    )
    return EXIT_OK


def cmd_status(script_id: str) -> int:
    from scene_pipeline.environment import (
        ConfigurationError,
        build_image_maker,
        build_prompt_writer,
        build_storage,
        resolve_mode,
    )
    from scene_pipeline.metadata import scenes_frame
    from scene_pipeline.regeneration import script_health
    from scene_pipeline.storage import StorageError, layout

    try:
        layout.script_segment(script_id)
    except layout.UnsafeKeyError as err:
        print(str(err), file=sys.stderr)
        return EXIT_INVALID
    try:
        bucket = build_storage(os.environ).get_bucket()
        manifest = bucket.read_manifest(script_id)
        accepted = bucket.read_accepted(script_id)
    except StorageError as err:
        print(f"cannot read script {script_id}: {err}", file=sys.stderr)
        return EXIT_NOT_COMPLETE
    if manifest is None:
        known = "accepted, but no run has finished yet" if accepted else "unknown"
        print(f"script {script_id}: {known}", file=sys.stderr)
        return EXIT_NOT_COMPLETE
    for line in _summary(manifest, [])[:2]:
        print(line)
    frame = scenes_frame(manifest.scenes)
    print(frame.to_string(index=False))
    if accepted is not None:
        try:
            mode = resolve_mode(os.environ)
            # process_config_and_initialize resolves the EnvVar keys, as a run would.
            writer = build_prompt_writer(os.environ, mode).process_config_and_initialize()
            maker = build_image_maker(os.environ, mode).process_config_and_initialize()
        except ConfigurationError as err:
            print(f"configuration error: {err}", file=sys.stderr)
            return EXIT_INVALID
        health = script_health(accepted.script, manifest, writer.identity, maker.identity)
        if health.stale:
            print(
                f"stale with the current providers: {', '.join(health.stale)} (the nightly"
                " schedule or `scene-pipeline run` redraws them)"
            )
    print(f"manifest: {bucket.store.uri(layout.manifest_key(script_id))}")
    return EXIT_OK if manifest.status == "complete" else EXIT_NOT_COMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "validate":
        return cmd_validate(args.files)
    if args.command == "schema":
        return cmd_schema()
    if args.command == "submit":
        return cmd_submit(args.file, args.name)
    if args.command == "status":
        return cmd_status(args.script_id)
    return cmd_run(args.file, args.scenes, args.force, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
