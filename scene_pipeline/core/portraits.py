"""Reference portraits: one per character who appears in a scene, drawn once per look.

A portrait is drawn by the image maker from the character's look (one figure, full body,
front view, plain light background, no text) and stored like a scene's generation under
`results/{script}/characters/{character_key}/`. It is cached by `portrait_hash` (look, style,
maker): a re-drop that leaves a character's look alone costs nothing. An operator's upload is
pinned and never redrawn automatically; `portrait --redraw` asks for a new drawing.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from PIL import Image, UnidentifiedImageError

from scene_pipeline.contract.outputs import PortraitRecord
from scene_pipeline.contract.script import Script
from scene_pipeline.core.hashing import look_hash, portrait_hash
from scene_pipeline.core.naming import external_task_id, generation_name
from scene_pipeline.core.operator import OperatorState
from scene_pipeline.models import CharacterSheet, Portrait, PortraitPlan
from scene_pipeline.providers.base import ProviderIdentity
from scene_pipeline.providers.prompting import (
    DEFAULT_STYLE_PHRASE,
    STYLE_PHRASES,
    involved_characters,
    known_style,
)
from scene_pipeline.storage import GenerationRef

PORTRAIT_ASPECT_RATIO = "2:3"
PORTRAIT_NEGATIVE_PROMPT = (
    "text, watermark, several people, cropped body, busy background, low quality, blurry"
)
# KLING's limits for reference images (../shared/reference/kling-api.md).
MIN_SIDE_PX = 300
MAX_ASPECT = 2.5
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def character_key(name: str) -> str:
    """A safe, stable key for a character name (names are mostly Korean): an ASCII slug of
    the name when it has one, and a hash of the whole name. Never a path built from input."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}" if slug else f"char-{digest}"


def portrait_prompt(look: str, style: str | None) -> str:
    key = known_style(style)
    style_phrase = STYLE_PHRASES[key] if key else DEFAULT_STYLE_PHRASE
    return (
        f"{style_phrase}. Character reference sheet: one single figure, full body, standing,"
        f" front view, neutral pose, plain light grey background, even soft lighting, no text."
        f" The character: {look}"
    )


def appearing(script: Script) -> list[str]:
    """Names of the characters involved in at least one scene, in the script's order."""
    names = {c.name for scene in script.scenes for c in involved_characters(script, scene)}
    return [c.name for c in script.script_metadata.characters if c.name in names]


@dataclass
class PortraitPlanning:
    """Portraits scenes may reference (by name), and the ones to draw in this run."""

    current: dict[str, Portrait] = field(default_factory=dict)
    to_draw: list[PortraitPlan] = field(default_factory=list)
    records_to_read: dict[str, str] = field(default_factory=dict)  # name -> record key
    stale: dict[str, str] = field(default_factory=dict)  # name -> why it is kept anyway


def _reused(name: str, key: str, ref: GenerationRef) -> Portrait:
    return Portrait(
        name=name,
        character_key=key,
        content_hash=ref.content_hash,
        generation=ref.generation,
        image_key=ref.image_keys[0],
    )


def _same_look_other_maker(
    refs: list[GenerationRef],
    wanted_look: str,
    read_record: Callable[[str], PortraitRecord | None],
) -> GenerationRef | None:
    """The latest drawn portrait of the same look made by other providers, if any: it stays
    (stale) until an operator asks for stale pictures to be redrawn."""
    if not refs:
        return None
    record = read_record(refs[-1].record_key)
    if record is None or record.source != "drawn" or record.look_hash != wanted_look:
        return None
    return refs[-1]


def plan_portraits(
    script: Script,
    sheet: CharacterSheet,
    maker: ProviderIdentity,
    state: OperatorState,
    generations: dict[str, list[GenerationRef]],
    read_record: Callable[[str], PortraitRecord | None],
    *,
    redraw: Sequence[str] = (),
    refresh_stale: bool = False,
    run_id: str,
    now: datetime,
) -> PortraitPlanning:
    """Decide per appearing character: pinned upload, reuse a drawn portrait, or draw."""
    looks = {look.name: look.look for look in sheet.looks}
    planning = PortraitPlanning()
    for name in appearing(script):
        key = character_key(name)
        forced = key in state.portrait_redraws or name in redraw
        pinned = state.pinned_portraits.get(key)
        if pinned is not None and not forced:
            planning.current[name] = Portrait(
                name=name,
                character_key=key,
                content_hash=pinned.content_hash,
                generation=pinned.generation,
                image_key=pinned.image_key,
                source="uploaded",
            )
            continue
        look = looks.get(name, "")
        wanted = portrait_hash(look, script.options.style, maker)
        refs = generations.get(key, [])
        drawn = [g for g in refs if g.content_hash == wanted]
        kept = (
            None
            if forced or refresh_stale
            else _same_look_other_maker(refs, look_hash(look, script.options.style), read_record)
        )
        if not forced and _plan_reuse(planning, name, key, drawn, kept):
            continue
        plan = _portrait_plan(script, name, key, look, wanted, forced, run_id=run_id, now=now)
        planning.to_draw.append(plan)
        # Scenes are planned against the portrait this run is about to draw.
        planning.current[name] = Portrait(
            name=name, character_key=key, content_hash=wanted, generation=plan.generation,
            status="pending",
        )  # fmt: skip
    return planning


def _plan_reuse(
    planning: PortraitPlanning,
    name: str,
    key: str,
    drawn: list[GenerationRef],
    kept: GenerationRef | None,
) -> bool:
    """Plan to reuse the latest portrait with the wanted hash, else the kept stale one (same
    look, other providers); False when there is neither."""
    ref = drawn[-1] if drawn else kept
    if ref is None:
        return False
    planning.current[name] = _reused(name, key, ref)
    planning.records_to_read[name] = ref.record_key
    if not drawn:
        planning.stale[name] = "drawn by other providers (kept until stale redraws)"
    return True


def _portrait_plan(
    script: Script,
    name: str,
    key: str,
    look: str,
    wanted: str,
    forced: bool,
    *,
    run_id: str,
    now: datetime,
) -> PortraitPlan:
    generation = generation_name(now, wanted, run_id)
    return PortraitPlan(
        script_id=script.script_id,
        name=name,
        character_key=key,
        look=look,
        style=script.options.style,
        content_hash=wanted,
        generation=generation,
        external_task_id=external_task_id(script.script_id, f"portrait:{key}", generation),
        forced=forced,
    )


def portrait_from_record(record: PortraitRecord) -> Portrait:
    return Portrait(
        name=record.name,
        character_key=record.character_key,
        content_hash=record.content_hash,
        generation=record.generation,
        image_key=record.image_key,
        uri=record.image_s3url,
        source=record.source,
        created_at=record.created_at,
    )


def reference_problem(width: int, height: int) -> str | None:
    """Why a picture of this size cannot be a reference image (KLING's limits), if it can't."""
    if min(width, height) < MIN_SIDE_PX:
        return f"the image is {width}x{height}; each side must be at least {MIN_SIDE_PX} px"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return f"the image is {width}x{height}; the aspect ratio must be between 1:2.5 and 2.5:1"
    return None


class UploadRejected(ValueError):
    """An operator's portrait file that the image provider would refuse."""


def check_upload(data: bytes) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of an uploaded portrait: PNG or JPEG, at most 10 MB, at
    least 300 px on each side, aspect ratio between 1:2.5 and 2.5:1 (KLING's limits)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRejected(f"the file is {len(data)} bytes; at most 10 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.load()
            width, height = image.size
            if image_format not in ("PNG", "JPEG"):
                raise UploadRejected(
                    f"the file is {image_format or 'not an image'}; use PNG or JPEG"
                )
            problem = reference_problem(width, height)
            if problem:
                raise UploadRejected(problem)
            if image_format == "PNG":
                return data, width, height
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), width, height
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UploadRejected("the file is not a readable PNG or JPEG image") from None
