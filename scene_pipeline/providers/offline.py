"""The embedded providers: no keys, no network, deterministic, and never mistaken for real.

The template prompt writer builds an English prompt from the character descriptions and the
scene's lines; the placeholder image maker draws a PNG of the requested aspect ratio with the
scene id and the prompt on it. Both mark everything they make as offline.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
import time
from datetime import UTC, datetime

from PIL import Image, ImageDraw, ImageFont

from scene_pipeline.contract.outputs import ImageProvenance
from scene_pipeline.contract.script import Character, Script
from scene_pipeline.providers.base import (
    CharacterLook,
    GeneratedImage,
    ImageRequest,
    ProviderIdentity,
    ScenePromptRequest,
    TaskJournal,
    WrittenPrompt,
    WrittenSheet,
)
from scene_pipeline.providers.prompting import (
    DEFAULT_STYLE_PHRASE,
    STYLE_PHRASES,
    cap_prompt,
    known_style,
    negative_prompt_for,
)

_GENDER_WORDS = {0: "man", 1: "woman"}


def _look(character: Character) -> str:
    person = (
        _GENDER_WORDS.get(character.gender, "person") if character.gender is not None else "person"
    )
    notes = character.description.strip()
    return f"a {person}" + (f" described as: {notes}" if notes else "")


class TemplatePromptWriter:
    """Deterministic English prompts from the script's own words; no LLM involved."""

    identity = ProviderIdentity(provider="offline", model="template", version="1", offline=True)

    def write_character_sheet(self, script: Script) -> WrittenSheet:
        looks = [
            CharacterLook(name=c.name, look=_look(c)) for c in script.script_metadata.characters
        ]
        return WrittenSheet(looks=looks, model=self.identity.model)

    def write_scene_prompt(self, request: ScenePromptRequest) -> WrittenPrompt:
        style = known_style(request.style)
        style_phrase = STYLE_PHRASES[style] if style else DEFAULT_STYLE_PHRASE
        looks = {look.name: look.look for look in request.looks}
        people = [looks.get(c.name, _look(c)) for c in request.characters]
        lines = []
        for line in request.scene.audios:
            who = line.speaker
            # Names are replaced by looks: the image model does not know who a name is.
            speaker = looks.get(who, "someone") if who else None
            kind = {"narration": "Narration", "dialogue": f"{speaker} says", "sound": "Sound"}[
                line.type
            ]
            lines.append(f'{kind}: "{line.text}"')
        prompt = (
            f"{style_phrase}, short-form video frame, aspect ratio {request.aspect_ratio}. "
            + (f"Characters: {'; '.join(people)}. " if people else "")
            + f"Depict the moment of these story lines: {' '.join(lines)}"
        )
        return WrittenPrompt(
            image_prompt=cap_prompt(prompt, request.max_prompt_chars),
            negative_prompt=negative_prompt_for(request.style),
            model=self.identity.model,
        )


def image_size(aspect_ratio: str, long_side: int) -> tuple[int, int]:
    """Pixel size with the requested ratio and the given long side."""
    w, h = (int(x) for x in aspect_ratio.split(":"))
    if w >= h:
        return long_side, round(long_side * h / w)
    return round(long_side * w / h), long_side


def _printable(text: str) -> str:
    # The bundled font has Latin glyphs only; other scripts would draw as empty boxes.
    out = "".join(ch if 32 <= ord(ch) < 0x250 else "\u00b7" for ch in text)
    while "\u00b7\u00b7" in out:
        out = out.replace("\u00b7\u00b7", "\u00b7")
    return out


class PlaceholderImageMaker:
    """A real PNG of the requested aspect ratio, clearly labelled as an offline placeholder."""

    identity = ProviderIdentity(provider="offline", model="placeholder", version="1", offline=True)

    def __init__(self, long_side: int = 768) -> None:
        self.long_side = long_side

    def make_image(self, request: ImageRequest, journal: TaskJournal) -> GeneratedImage:
        del journal  # nothing is paid for, so nothing needs resuming
        started = time.monotonic()
        submitted_at = datetime.now(UTC)
        width, height = image_size(request.aspect_ratio, self.long_side)
        seed = hashlib.sha256(request.content_hash.encode()).digest()
        background = (40 + seed[0] % 80, 40 + seed[1] % 80, 60 + seed[2] % 90)
        image = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(image)
        title_font = ImageFont.load_default(size=max(18, width // 14))
        body_font = ImageFont.load_default(size=max(12, width // 32))
        margin = width // 16
        draw.rectangle((0, 0, width, height // 7), fill=(200, 40, 40))
        draw.text((margin, height // 40), "OFFLINE PLACEHOLDER", fill="white", font=title_font)
        draw.text(
            (margin, height // 7 + margin),
            f"scene {request.scene_id}",
            fill="white",
            font=title_font,
        )
        chars_per_line = max(20, int((width - 2 * margin) / (body_font.size * 0.55)))
        body = textwrap.fill(_printable(request.prompt), width=chars_per_line)
        draw.multiline_text(
            (margin, height // 7 + 3 * margin), body, fill=(235, 235, 235), font=body_font
        )
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        return GeneratedImage(
            png=buffer.getvalue(),
            provenance=ImageProvenance(
                provider=self.identity.provider,
                model=self.identity.model,
                offline=True,
                submitted_at=submitted_at,
                finished_at=datetime.now(UTC),
                duration_seconds=round(time.monotonic() - started, 3),
                width=width,
                height=height,
            ),
        )
