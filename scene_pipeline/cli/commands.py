"""The commands. Each validates everything it was given before it prints a banner or changes
anything: bad input is one line on stderr and exit 2, with no paid call."""

from __future__ import annotations

import hashlib
import json
import os
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path

from scene_pipeline.cli.common import (
    EXIT_INVALID,
    EXIT_NOT_COMPLETE,
    EXIT_OK,
    CommandError,
    load_settings,
    note,
    operator_name,
    parse_scene_ids,
    read_script_file,
    read_text_file,
    rejection_lines,
    say,
)
from scene_pipeline.cli.runs import RunRequest, check_candidates, run_script, script_lease
from scene_pipeline.cli.summary import summary_lines
from scene_pipeline.contract.outputs import SourceRef
from scene_pipeline.contract.script import Script, script_json_schema
from scene_pipeline.contract.script_parsing import ScriptRejected, ScriptShape
from scene_pipeline.core import actions
from scene_pipeline.core.intake import accepted_script, read_accepted, store_accepted
from scene_pipeline.core.operator import read_state, stamp
from scene_pipeline.core.portraits import check_upload
from scene_pipeline.models import AcceptedScript
from scene_pipeline.settings import Settings
from scene_pipeline.storage import Bucket, StorageError, layout
from scene_pipeline.storage.factory import open_bucket

LOCAL_SOURCE_PREFIX = "local-file:"


def validate(args: Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            script, shape, _ = read_script_file(path)
        except ScriptRejected as err:
            for line in rejection_lines(path, err):
                note(line)
            status = EXIT_INVALID
            continue
        say(
            f"{path}: ok: script {script.script_id} {script.title!r}, {len(script.scenes)}"
            f" scene(s), {len(script.script_metadata.characters)} character(s) ({shape})"
        )
    return status


def schema(args: Namespace) -> int:
    del args
    say(json.dumps(script_json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def _read(path: Path) -> tuple[Script, ScriptShape, bytes]:
    try:
        return read_script_file(path)
    except ScriptRejected as err:
        raise CommandError("\n".join(rejection_lines(path, err))) from None


def _banner(settings: Settings) -> None:
    for line in settings.describe():
        note(f"scene-pipeline {line}")


def run(args: Namespace) -> int:
    settings = load_settings()
    path: Path = args.file
    script, shape, data = _read(path)
    scene_ids = parse_scene_ids(args.scenes)
    unknown = sorted(set(scene_ids) - {s.scene_id for s in script.scenes})
    if unknown:
        raise CommandError(f"{path}: --scenes: no such scene(s): {', '.join(unknown)}")
    check_candidates(settings, args.candidates)
    bucket = open_bucket(settings)
    source = SourceRef(
        # Only the file name: the absolute path says nothing the backend could use.
        key=LOCAL_SOURCE_PREFIX + path.name,
        etag=f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
    )
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    request = RunRequest(
        scene_ids, args.force, args.refresh_stale, args.candidates, log_level=args.log_level
    )
    with script_lease(bucket, script.script_id, args.wait) as token:
        _banner(settings)
        # The file replaces whatever version is stored: the user asked to run this file.
        stored = store_accepted(
            bucket, accepted_script(script, shape, source, modified), keep_newer=False
        )
        return run_script(
            bucket, settings, stored.accepted, request, token=token, report=stored.changed
        )


def _script(settings: Settings, script_id: str) -> tuple[Bucket, AcceptedScript]:
    """The bucket and the accepted copy of a script a command works on (CommandError when
    the id is not valid or no such script was accepted)."""
    try:
        layout.script_segment(script_id)
    except layout.UnsafeKeyError as err:
        raise CommandError(str(err)) from None
    bucket = open_bucket(settings)
    accepted = read_accepted(bucket, script_id)
    if accepted is None:
        raise CommandError(
            f"unknown script {script_id}: submit it (`scene-pipeline submit`) or run it first"
        )
    return bucket, accepted


def redraw(args: Namespace) -> int:
    settings = load_settings()
    prompt: str | None = args.prompt
    if args.prompt_file is not None:
        prompt = read_text_file(args.prompt_file, "--prompt-file")
    check_candidates(settings, args.candidates)
    bucket, accepted = _script(settings, args.script_id)
    script, scene = accepted.script, args.scene
    try:
        actions.check_scene(script, scene)
        if prompt is not None:
            prompt = actions.check_prompt(prompt, settings.prompt_max_chars)
    except actions.ActionError as err:
        raise CommandError(str(err)) from None
    with script_lease(bucket, script.script_id, args.wait) as token:
        _banner(settings)
        when = stamp(operator_name(), args.note)
        if prompt is not None:
            actions.set_override(bucket, script, scene, prompt, settings.prompt_max_chars, when)
        elif args.clear_prompt:
            actions.clear_override(bucket, script, scene)
        # A plain redraw rolls the dice again with the same prompt; a new or cleared prompt
        # draws only when that prompt has no picture yet.
        forced = prompt is None and not args.clear_prompt
        request = RunRequest([scene], forced, False, args.candidates, log_level=args.log_level)
        return run_script(bucket, settings, accepted, request, token=token, report=False)


def pick(args: Namespace) -> int:
    settings = load_settings()
    bucket, accepted = _script(settings, args.script_id)
    when = stamp(operator_name(), args.note)
    try:
        manifest = actions.pick(bucket, accepted.script, args.scene_id, args.k, when)
    except actions.ActionError as err:
        raise CommandError(str(err)) from None
    entry = next(e for e in manifest.scenes if e.scene_id == args.scene_id)
    say(
        f"script {args.script_id} scene {args.scene_id}: candidate {entry.picked} of"
        f" {len(entry.candidates)}:"
    )
    say(f"  {entry.image_s3url}")
    home = os.environ.get("DAGSTER_HOME")
    if home:
        from scene_pipeline.cli.instance import report_manifest
        from scene_pipeline.cli.runs import RunRequest, plan_ahead

        stale = plan_ahead(bucket, settings, accepted, RunRequest()).scenes.stale
        why = f"scene {args.scene_id}: candidate {entry.picked} picked"
        report_manifest(home, manifest, why, stale)
    return EXIT_OK


def portrait(args: Namespace) -> int:
    settings = load_settings()
    data = None
    if args.image is not None:
        try:
            data = args.image.read_bytes()
        except OSError as err:
            raise CommandError(
                f"--image {args.image}: cannot read it ({err.strerror or err})"
            ) from None
    bucket, accepted = _script(settings, args.script_id)
    script, name = accepted.script, args.name
    try:
        actions.check_character(script, name)
        if data is not None:
            check_upload(data)
    except ValueError as err:
        raise CommandError(str(err)) from None
    when = stamp(operator_name(), args.note)
    if data is not None:
        record = actions.upload_portrait(bucket, script, name, data, when, "cli")
        scenes = _scenes_with(script, name)
        say(
            f"pinned the portrait of {name} ({record.image_s3url}); the next run redraws the"
            f" {len(scenes)} scene(s) it is in: {', '.join(scenes) or '-'}"
        )
        return EXIT_OK
    with script_lease(bucket, script.script_id, args.wait) as token:
        _banner(settings)
        actions.request_portrait_redraw(bucket, script, name, when)
        request = RunRequest(redraw_portraits=[name], log_level=args.log_level)
        return run_script(bucket, settings, accepted, request, token=token, report=False)


def _scenes_with(script: Script, name: str) -> list[str]:
    from scene_pipeline.providers.prompting import involved_characters

    return [
        s.scene_id
        for s in script.scenes
        if name in {c.name for c in involved_characters(script, s)}
    ]


def submit(args: Namespace) -> int:
    settings = load_settings()
    path: Path = args.file
    script, _, data = _read(path)
    name = args.name or f"{script.script_id}.json"
    if any(not layout.is_safe_name(s) for s in name.split("/")):
        raise CommandError(f"--name {name!r}: use letters, digits, '.', '_', '-' and '/'")
    bucket = open_bucket(settings)
    key = settings.inbox_prefix + name
    try:
        bucket.write_bytes(key, data, "application/json")
    except StorageError as err:
        raise CommandError(f"upload failed: {err}", code=EXIT_NOT_COMPLETE) from None
    say(
        f"uploaded script {script.script_id} to {bucket.uri(key)}; the inbox sensor runs it at"
        " its next tick (see `scene-pipeline status` and the Dagster UI)"
    )
    return EXIT_OK


def status(args: Namespace) -> int:
    from scene_pipeline.cli.runs import RunRequest, plan_ahead
    from scene_pipeline.cli.status_view import status_lines

    settings = load_settings()
    script_id = args.script_id
    bucket, accepted = _script(settings, script_id)
    manifest = bucket.read_manifest(script_id)
    if manifest is None:
        note(f"script {script_id}: accepted, but no run has finished yet")
        return EXIT_NOT_COMPLETE
    plan = plan_ahead(bucket, settings, accepted, RunRequest())
    for line in summary_lines(manifest)[:2]:
        say(line)
    for line in status_lines(manifest, plan, read_state(bucket, script_id)):
        say(line)
    say(f"manifest: {bucket.uri(layout.manifest_key(script_id))}")
    return EXIT_OK if manifest.status == "complete" else EXIT_NOT_COMPLETE
