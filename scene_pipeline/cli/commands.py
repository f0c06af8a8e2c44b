"""The commands. Each validates everything it was given before it prints a banner or changes
anything: bad input is one line on stderr and exit 2, with no paid call."""

from __future__ import annotations

import hashlib
import json
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
from scene_pipeline.contract.script import Script, ScriptRejected, script_json_schema
from scene_pipeline.core import actions
from scene_pipeline.core.intake import accepted_script, read_accepted, store_accepted
from scene_pipeline.core.operator import read_state, stamp
from scene_pipeline.models import AcceptedScript
from scene_pipeline.settings import Settings
from scene_pipeline.storage import Bucket, StorageError, layout
from scene_pipeline.storage.factory import open_bucket

LOCAL_SOURCE_PREFIX = "local-file:"


def validate(files: list[Path]) -> int:
    status = EXIT_OK
    for path in files:
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


def schema() -> int:
    say(json.dumps(script_json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def _banner(settings: Settings) -> None:
    for line in settings.describe():
        note(f"scene-pipeline {line}")


def run(
    path: Path,
    scenes: str,
    force: bool,
    refresh_stale: bool,
    candidates: int | None,
    wait: float,
    log_level: str,
) -> int:
    settings = load_settings()
    try:
        script, shape, data = read_script_file(path)
    except ScriptRejected as err:
        raise CommandError("\n".join(rejection_lines(path, err))) from None
    scene_ids = parse_scene_ids(scenes)
    unknown = sorted(set(scene_ids) - {s.scene_id for s in script.scenes})
    if unknown:
        raise CommandError(f"{path}: --scenes: no such scene(s): {', '.join(unknown)}")
    check_candidates(settings, candidates)
    bucket = open_bucket(settings)
    source = SourceRef(
        # Only the file name: the absolute path says nothing the backend could use.
        key=LOCAL_SOURCE_PREFIX + path.name,
        etag=f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
    )
    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    request = RunRequest(scene_ids, force, refresh_stale, candidates, log_level=log_level)
    with script_lease(bucket, script.script_id, wait) as token:
        _banner(settings)
        # The file replaces whatever version is stored: the user asked to run this file.
        stored = store_accepted(
            bucket, accepted_script(script, shape, source, modified), keep_newer=False
        )
        return run_script(
            bucket, settings, stored.accepted, request, token=token, report=stored.changed
        )


def _accepted(bucket: Bucket, script_id: str) -> AcceptedScript:
    try:
        layout.script_segment(script_id)
    except layout.UnsafeKeyError as err:
        raise CommandError(str(err)) from None
    accepted = read_accepted(bucket, script_id)
    if accepted is None:
        raise CommandError(
            f"unknown script {script_id}: submit it (`scene-pipeline submit`) or run it first"
        )
    return accepted


def redraw(
    script_id: str,
    scene: str,
    prompt: str | None,
    prompt_file: Path | None,
    clear: bool,
    candidates: int | None,
    note_text: str,
    wait: float,
    log_level: str,
) -> int:
    settings = load_settings()
    if prompt_file is not None:
        prompt = read_text_file(prompt_file, "--prompt-file")
    check_candidates(settings, candidates)
    bucket = open_bucket(settings)
    accepted = _accepted(bucket, script_id)
    script = accepted.script
    try:
        actions.check_scene(script, scene)
        if prompt is not None:
            prompt = actions.check_prompt(prompt, settings.prompt_max_chars)
    except actions.ActionError as err:
        raise CommandError(str(err)) from None
    with script_lease(bucket, script_id, wait) as token:
        _banner(settings)
        if prompt is not None:
            actions.set_override(
                bucket,
                script,
                scene,
                prompt,
                settings.prompt_max_chars,
                stamp(operator_name(), note_text),
            )
        elif clear:
            actions.clear_override(bucket, script, scene)
        # A plain redraw rolls the dice again with the same prompt; a new or cleared prompt
        # draws only when that prompt has no picture yet.
        forced = prompt is None and not clear
        request = RunRequest([scene], forced, False, candidates, log_level=log_level)
        return run_script(bucket, settings, accepted, request, token=token, report=False)


def pick(script_id: str, scene: str, k: int, note_text: str) -> int:
    settings = load_settings()
    bucket = open_bucket(settings)
    accepted = _accepted(bucket, script_id)
    try:
        manifest = actions.pick(
            bucket, accepted.script, scene, k, stamp(operator_name(), note_text)
        )
    except actions.ActionError as err:
        raise CommandError(str(err)) from None
    entry = next(e for e in manifest.scenes if e.scene_id == scene)
    count = len(entry.candidates)
    say(f"script {script_id} scene {scene}: candidate {entry.picked} of {count}:")
    say(f"  {entry.image_s3url}")
    return EXIT_OK


def portrait(
    script_id: str,
    name: str,
    image: Path | None,
    redraw_it: bool,
    note_text: str,
    wait: float,
    log_level: str,
) -> int:
    settings = load_settings()
    data = None
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as err:
            raise CommandError(f"--image {image}: cannot read it ({err.strerror or err})") from None
    bucket = open_bucket(settings)
    accepted = _accepted(bucket, script_id)
    script = accepted.script
    try:
        actions.check_character(script, name)
        if data is not None:
            from scene_pipeline.core.portraits import check_upload

            check_upload(data)
    except ValueError as err:
        raise CommandError(str(err)) from None
    if data is not None:
        record = actions.upload_portrait(
            bucket, script, name, data, stamp(operator_name(), note_text), "cli"
        )
        scenes = _scenes_with(script, name)
        say(
            f"pinned the portrait of {name} ({record.image_s3url}); the next run redraws the"
            f" {len(scenes)} scene(s) it is in: {', '.join(scenes) or '-'}"
        )
        return EXIT_OK
    assert redraw_it
    with script_lease(bucket, script_id, wait) as token:
        _banner(settings)
        actions.request_portrait_redraw(bucket, script, name, stamp(operator_name(), note_text))
        request = RunRequest(redraw_portraits=[name], log_level=log_level)
        return run_script(bucket, settings, accepted, request, token=token, report=False)


def _scenes_with(script: Script, name: str) -> list[str]:
    from scene_pipeline.providers.prompting import involved_characters

    return [
        s.scene_id
        for s in script.scenes
        if name in {c.name for c in involved_characters(script, s)}
    ]


def submit(path: Path, name: str | None) -> int:
    settings = load_settings()
    try:
        script, _, data = read_script_file(path)
    except ScriptRejected as err:
        raise CommandError("\n".join(rejection_lines(path, err))) from None
    name = name or f"{script.script_id}.json"
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


def status(script_id: str) -> int:
    from scene_pipeline.cli.runs import RunRequest, plan_ahead
    from scene_pipeline.cli.status_view import status_lines

    settings = load_settings()
    bucket = open_bucket(settings)
    accepted = _accepted(bucket, script_id)
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
