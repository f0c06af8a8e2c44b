"""Prompt pieces every prompt writer shares: styles, negative prompts, length caps."""

from __future__ import annotations

import re

from scene_pipeline.constants import BASE_NEGATIVE_PROMPT
from scene_pipeline.contract.script import Character, Scene, Script

# The earlier service's styles; anything else is treated as free text describing a style.
STYLE_PHRASES: dict[str, str] = {
    "disney": "classic Disney 2D animation style, expressive characters, vibrant colors",
    "pixar": "Pixar-style 3D animated film still, soft global illumination, rounded shapes",
    "illustrate": "clean storybook digital illustration, soft shading, clear outlines",
    "ghibli": "Studio Ghibli-inspired hand-painted animation, soft watercolor backgrounds",
}
DEFAULT_STYLE_PHRASE = "cinematic digital illustration, soft natural lighting"


def known_style(style: str | None) -> str | None:
    key = (style or "").strip().lower()
    return key if key in STYLE_PHRASES else None


def negative_prompt_for(style: str | None) -> str:
    """The earlier service's base list plus the other known styles, so they do not bleed in."""
    key = known_style(style)
    if key is None:
        return BASE_NEGATIVE_PROMPT
    others = [f"{name} style" for name in STYLE_PHRASES if name != key]
    return ", ".join([BASE_NEGATIVE_PROMPT, *others, "photorealistic photo"])


def cap_prompt(text: str, limit: int) -> str:
    """Shorten to at most `limit` characters, preferring to cut at a sentence or a comma."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for mark in (". ", ", ", " "):
        index = cut.rfind(mark)
        if index >= limit * 0.6:
            return cut[: index + (1 if mark != " " else 0)].rstrip(" ,")
    return cut.rstrip()


# Korean particles that may follow a name ("나는", "할아버지께서", "기사님도").
_PARTICLES = "은|는|이|가|을|를|의|에게|에|께서|께|도|만|와|과|이랑|랑|한테|야|아|요|님"
_WORD = "[가-힣A-Za-z0-9]"


def _mentions(name: str, text: str) -> bool:
    """`name` as a word of `text`, possibly followed by particles: "나는" mentions 나, but
    "나셨는지" (a verb) does not."""
    pattern = rf"(?<!{_WORD}){re.escape(name)}(?:(?:{_PARTICLES})+)?(?!{_WORD})"
    return re.search(pattern, text) is not None


def involved_characters(script: Script, scene: Scene) -> list[Character]:
    """Characters who speak in the scene or are named in its lines, in the script's order."""
    speakers = {line.speaker for line in scene.audios}
    text = " ".join(line.text for line in scene.audios)
    return [
        c
        for c in script.script_metadata.characters
        if c.name in speakers or _mentions(c.name, text)
    ]
