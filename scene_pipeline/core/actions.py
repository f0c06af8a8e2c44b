"""What operators can do to a script, from the shell or from the UI's run config: override a
scene's prompt (or clear it), pick a candidate, upload or redraw a portrait. Each validates its
input first (`ActionError`: nothing is changed), then updates the operator state; a pick also
rewrites the manifest at once (it costs nothing)."""

from __future__ import annotations

import re

from scene_pipeline.contract.outputs import ImageProvenance, Manifest, PortraitRecord, utc_now
from scene_pipeline.contract.script import Script
from scene_pipeline.core import generations
from scene_pipeline.core.hashing import uploaded_portrait_hash
from scene_pipeline.core.manifests import apply_picks, publish
from scene_pipeline.core.naming import generation_name
from scene_pipeline.core.operator import (
    Pick,
    PinnedPortrait,
    PromptOverride,
    Stamp,
    update_state,
    with_override,
    with_pick,
    with_pinned_portrait,
    with_portrait_redraw,
)
from scene_pipeline.core.portraits import character_key, check_upload
from scene_pipeline.storage import Bucket, UnsafeKeyError, layout

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ActionError(ValueError):
    """An operator's request that cannot be done as asked (one line, says why)."""


def check_scene(script: Script, scene_id: str) -> None:
    if scene_id not in {s.scene_id for s in script.scenes}:
        raise ActionError(
            f"script {script.script_id} has no scene {scene_id!r}"
            f" (its scenes: {', '.join(s.scene_id for s in script.scenes)})"
        )


def check_prompt(text: str, cap: int) -> str:
    """An override is checked like any prompt: not empty, within the cap, one plain text."""
    cleaned = _CONTROL.sub(" ", text).strip()
    if not cleaned:
        raise ActionError("the prompt is empty")
    if len(cleaned) > cap:
        raise ActionError(
            f"the prompt is {len(cleaned)} characters; at most {cap}"
            " (SCENE_PIPELINE_PROMPT_MAX_CHARS)"
        )
    return cleaned


def set_override(
    bucket: Bucket, script: Script, scene_id: str, text: str, cap: int, stamp: Stamp
) -> str:
    check_scene(script, scene_id)
    prompt = check_prompt(text, cap)
    update_state(
        bucket,
        script.script_id,
        lambda state: with_override(state, scene_id, PromptOverride(prompt=prompt, stamp=stamp)),
    )
    return prompt


def clear_override(bucket: Bucket, script: Script, scene_id: str) -> bool:
    """Returns whether there was an override to clear."""
    check_scene(script, scene_id)
    had = False

    def change(state):  # type: ignore[no-untyped-def]
        nonlocal had
        had = scene_id in state.overrides
        return with_override(state, scene_id, None)

    update_state(bucket, script.script_id, change)
    return had


def check_pick(manifest: Manifest | None, script: Script, scene_id: str, k: int) -> str:
    """The generation candidate `k` belongs to (ActionError when out of range)."""
    check_scene(script, scene_id)
    entry = next((e for e in (manifest.scenes if manifest else []) if e.scene_id == scene_id), None)
    if entry is None or entry.status != "succeeded" or not entry.generation:
        raise ActionError(f"scene {scene_id} has no picture to pick from yet")
    count = len(entry.candidates or [entry.image_s3url])
    if not 1 <= k <= count:
        raise ActionError(f"scene {scene_id} has {count} candidate(s): pick 1-{count}, not {k}")
    return entry.generation


def pick(bucket: Bucket, script: Script, scene_id: str, k: int, stamp: Stamp) -> Manifest:
    """Make candidate `k` the scene's picture: operator state, then the manifest (no paid call)."""
    generation = check_pick(bucket.read_manifest(script.script_id), script, scene_id, k)
    update_state(
        bucket,
        script.script_id,
        lambda state: with_pick(
            state, scene_id, Pick(generation=generation, picked=k, stamp=stamp)
        ),
    )

    def rebuilt(state, current):  # type: ignore[no-untyped-def]
        if current is None:
            raise ActionError(f"script {script.script_id} has no manifest")
        return current.model_copy(
            update={"scenes": apply_picks(current.scenes, state), "updated_at": utc_now()}
        )

    return publish(bucket, script.script_id, rebuilt)


def check_character(script: Script, name: str) -> str:
    names = [c.name for c in script.script_metadata.characters]
    if name not in names:
        shown = ", ".join(names) or "none"
        raise ActionError(
            f"script {script.script_id} has no character {name!r} (its characters: {shown})"
        )
    return character_key(name)


def upload_portrait(
    bucket: Bucket, script: Script, name: str, data: bytes, stamp: Stamp, run_id: str
) -> PortraitRecord:
    """Store an operator's portrait as a generation of the character and pin it."""
    key = check_character(script, name)
    try:
        png, width, height = check_upload(data)
    except ValueError as err:
        raise ActionError(str(err)) from None
    content_hash = uploaded_portrait_hash(png)
    generation = generation_name(stamp.at, content_hash, run_id)
    subject = ("characters", key)
    keys, uris, _ = generations.store_images(bucket, script.script_id, subject, generation, [png])
    record = PortraitRecord(
        script_id=script.script_id,
        generation=generation,
        content_hash=content_hash,
        image_prompt="(uploaded by an operator)",
        negative_prompt="",
        image_key=keys[0],
        image_s3url=uris[0],
        candidates=uris,
        image=ImageProvenance(provider="operator", model="upload", width=width, height=height),
        created_at=stamp.at,
        name=name,
        character_key=key,
        source="uploaded",
    )
    generations.write_record(bucket, subject, record)
    pinned = PinnedPortrait(
        name=name, generation=generation, content_hash=content_hash, image_key=keys[0], stamp=stamp
    )
    update_state(bucket, script.script_id, lambda state: with_pinned_portrait(state, key, pinned))
    return record


def request_portrait_redraw(bucket: Bucket, script: Script, name: str, stamp: Stamp) -> str:
    key = check_character(script, name)
    update_state(bucket, script.script_id, lambda state: with_portrait_redraw(state, key, stamp))
    return key


def read_upload(bucket: Bucket, key: str) -> bytes:
    """An operator's file under `uploads/` in the bucket (for the UI's portrait uploads)."""
    try:
        layout.upload_key(key)
    except UnsafeKeyError as err:
        raise ActionError(str(err)) from None
    data = bucket.read_bytes_if_present(key)
    if data is None:
        raise ActionError(f"no object {key} in the bucket")
    return data
