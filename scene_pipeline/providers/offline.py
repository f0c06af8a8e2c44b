"""The embedded providers: no keys, no network, deterministic, and never mistaken for real.

The template prompt writer builds an English prompt from the character descriptions and the
scene's lines; the placeholder image maker draws a PNG of the requested aspect ratio with a
red OFFLINE banner, the subject, the prompt (Korean included, with the bundled Hangul font),
and the reference portraits it was given as small insets, so that an operator can see which
references a scene received. Both mark everything they make as offline.
"""

from __future__ import annotations

import hashlib
import io
import time
from datetime import UTC, datetime

from PIL import Image, ImageDraw, ImageFont

from scene_pipeline.constants import KLING_MAX_REFERENCES
from scene_pipeline.contract.outputs import ImageProvenance
from scene_pipeline.contract.script import Character, Script
from scene_pipeline.fonts import hangul_font
from scene_pipeline.providers.base import (
    CharacterLook,
    GeneratedImage,
    ImageRequest,
    ScenePromptRequest,
    SlotGate,
    TaskJournal,
    WrittenPrompt,
    WrittenSheet,
)
from scene_pipeline.providers.identities import PLACEHOLDER_MAKER, TEMPLATE_WRITER
from scene_pipeline.providers.prompting import (
    DEFAULT_STYLE_PHRASE,
    STYLE_PHRASES,
    cap_prompt,
    known_style,
    negative_prompt_for,
)

_GENDER_WORDS = {0: "man", 1: "woman"}


def template_look(character: Character) -> str:
    person = (
        _GENDER_WORDS.get(character.gender, "person") if character.gender is not None else "person"
    )
    notes = character.description.strip()
    return f"a {person}" + (f" described as: {notes}" if notes else "")


class TemplatePromptWriter:
    """Deterministic English prompts from the script's own words; no LLM involved."""

    identity = TEMPLATE_WRITER

    def write_character_sheet(self, script: Script) -> WrittenSheet:
        looks = [
            CharacterLook(name=c.name, look=template_look(c))
            for c in script.script_metadata.characters
        ]
        return WrittenSheet(looks=looks, model=self.identity.model)

    def write_scene_prompt(self, request: ScenePromptRequest) -> WrittenPrompt:
        style = known_style(request.style)
        style_phrase = STYLE_PHRASES[style] if style else DEFAULT_STYLE_PHRASE
        looks = {look.name: look.look for look in request.looks}
        people = [looks.get(c.name, template_look(c)) for c in request.characters]
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
            # The template cannot tell who is prominent: the script's order.
            characters_present=[c.name for c in request.characters],
            model=self.identity.model,
        )


def image_size(aspect_ratio: str, long_side: int) -> tuple[int, int]:
    """Pixel size with the requested ratio and the given long side."""
    w, h = (int(x) for x in aspect_ratio.split(":"))
    if w >= h:
        return long_side, round(long_side * h / w)
    return round(long_side * w / h), long_side


def _wrap(text: str, width_px: int, font: ImageFont.FreeTypeFont) -> str:
    """Greedy word wrap by measured width (Hangul and Latin glyphs differ in width)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width_px:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return "\n".join(lines)


class PlaceholderImageMaker:
    """Real PNGs of the requested aspect ratio, clearly labelled as offline placeholders."""

    identity = PLACEHOLDER_MAKER
    max_references = KLING_MAX_REFERENCES

    def __init__(self, long_side: int = 768) -> None:
        self.long_side = long_side

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        del journal, slots  # nothing is paid for: nothing to resume, no account to share
        started = time.monotonic()
        submitted_at = datetime.now(UTC)
        pngs = [self._draw(request, k) for k in range(1, request.n + 1)]
        width, height = image_size(request.aspect_ratio, self.long_side)
        return GeneratedImage(
            pngs=pngs,
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

    def _draw(self, request: ImageRequest, candidate: int) -> bytes:
        width, height = image_size(request.aspect_ratio, self.long_side)
        seed = hashlib.sha256(f"{request.content_hash}:{candidate}".encode()).digest()
        background = (40 + seed[0] % 80, 40 + seed[1] % 80, 60 + seed[2] % 90)
        image = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(image)
        margin = max(8, width // 24)
        title = hangul_font(max(14, width // 16))
        body = hangul_font(max(11, width // 36))
        band = height // 8
        draw.rectangle((0, 0, width, band), fill=(200, 40, 40))
        draw.text((margin, band // 4), "OFFLINE PLACEHOLDER", fill="white", font=title)
        label = request.subject + (f" · candidate {candidate}/{request.n}" if request.n > 1 else "")
        draw.text((margin, band + margin // 2), label, fill="white", font=title)
        top = band + margin // 2 + int(title.size * 1.6)
        if request.kind == "portrait":
            top = self._figure(draw, seed, width, height, top) + margin // 2
        insets = self._insets(image, request.references, top, margin)
        if insets:
            top = insets + margin // 2
        text = _wrap(request.prompt, width - 2 * margin, body)
        draw.multiline_text((margin, top), text, fill=(235, 235, 235), font=body, spacing=4)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()

    @staticmethod
    def _figure(draw: ImageDraw.ImageDraw, seed: bytes, width: int, height: int, top: int) -> int:
        """A plain standing figure in the character's own colour, so that a portrait is
        recognisable as one (and tells characters apart) when it is shown as an inset."""
        colour = (120 + seed[3] % 130, 120 + seed[4] % 130, 120 + seed[5] % 130)
        cx, unit = width // 2, min(width, height - top) // 10
        draw.ellipse((cx - unit, top, cx + unit, top + 2 * unit), fill=colour)
        draw.rounded_rectangle(
            (cx - 2 * unit, top + 2 * unit + 4, cx + 2 * unit, top + 6 * unit),
            radius=unit // 2,
            fill=colour,
        )
        draw.rectangle((cx - 2 * unit + 6, top + 6 * unit, cx - 4, top + 9 * unit), fill=colour)
        draw.rectangle((cx + 4, top + 6 * unit, cx + 2 * unit - 6, top + 9 * unit), fill=colour)
        return top + 9 * unit

    @staticmethod
    def _insets(image: Image.Image, references: list[bytes], top: int, margin: int) -> int:
        """Paste the reference portraits in a row, numbered in request order; returns the row's
        bottom edge (0 when there are none)."""
        if not references:
            return 0
        draw = ImageDraw.Draw(image)
        count = len(references)
        side = min(image.width // 3, (image.width - 2 * margin) // count - margin // 2)
        font = hangul_font(max(10, side // 6))
        x = margin
        for index, png in enumerate(references, start=1):
            with Image.open(io.BytesIO(png)) as portrait:
                thumb = portrait.convert("RGB")
                thumb.thumbnail((side, side))
            image.paste(thumb, (x, top))
            draw.rectangle((x, top, x + thumb.width - 1, top + thumb.height - 1), outline="white")
            draw.text((x + 3, top + 1), f"ref {index}", fill="white", font=font)
            x += side + margin // 2
        return top + side
