"""Content hashes: what decides whether a paid call is needed again.

Each hash covers exactly what its output is made from, in a chain:

- `scene_source_hash`: the scene's own lines, the script data of the characters it involves,
  style, aspect ratio and an operator's prompt override. Not the neighbouring scenes (context
  for the writer only): editing scene 3 does not redraw scenes 2 and 4. A moderation refusal
  is not retried until this changes.
- `config_hash`: the providers' identities and the reference mode. A scene whose source is
  unchanged but whose config differs is "stale": redrawn only on request.
- `look_input_hash`: one character's data and the writer: a look is rewritten when it changes.
- `prompt_hash`: the source, the looks of the involved characters (so a template-fallback
  look is corrected once a real one exists) and the writer.
- `portrait_hash`: a portrait's look, style and the image maker.
- `image_hash`: the generation's content hash: the prompt text, the referenced portraits (in
  order), the image maker and the aspect ratio. The number of candidates is not in it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from scene_pipeline.contract.script import Character, Scene, Script
from scene_pipeline.providers.base import CharacterLook, ProviderIdentity
from scene_pipeline.providers.prompting import involved_characters

HASH_CHARS = 16


def stable_hash(value: Any, length: int = HASH_CHARS) -> str:
    """sha256 of canonical JSON, shortened: stable across processes and Python versions."""
    data = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:length]


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def scene_source_hash(script: Script, scene: Scene, override: str | None) -> str:
    return stable_hash(
        {
            "lines": [line.model_dump(mode="json") for line in scene.audios],
            "characters": [c.model_dump(mode="json") for c in involved_characters(script, scene)],
            "style": script.options.style,
            "aspect_ratio": script.options.aspect_ratio,
            "override": override,
        }
    )


def config_hash(
    writer: ProviderIdentity, maker: ProviderIdentity, references_on: bool, prompt_cap: int
) -> str:
    return stable_hash(
        {
            "writer": writer.model_dump(mode="json"),
            "maker": maker.model_dump(mode="json"),
            "references": references_on,
            "prompt_cap": prompt_cap,
        }
    )


def look_input_hash(character: Character, style: str | None, writer: ProviderIdentity) -> str:
    return stable_hash(
        {
            "character": character.model_dump(mode="json"),
            "style": style,
            "writer": writer.model_dump(mode="json"),
        }
    )


def prompt_hash(
    script: Script,
    scene: Scene,
    looks: Sequence[CharacterLook],
    writer: ProviderIdentity,
    prompt_cap: int,
) -> str:
    return stable_hash(
        {
            "source": scene_source_hash(script, scene, None),
            "looks": [look.model_dump(mode="json") for look in looks],
            "writer": writer.model_dump(mode="json"),
            "prompt_cap": prompt_cap,
        }
    )


def override_prompt_hash(text: str) -> str:
    return stable_hash({"override": text})


def look_hash(look: str, style: str | None) -> str:
    """What a portrait shows, whoever draws it: a change here is a content change."""
    return stable_hash({"portrait": look, "style": style})


def portrait_hash(look: str, style: str | None, maker: ProviderIdentity) -> str:
    return stable_hash({"portrait": look, "style": style, "maker": maker.model_dump(mode="json")})


def uploaded_portrait_hash(data: bytes) -> str:
    return "u" + bytes_hash(data)[: HASH_CHARS - 1]


def image_hash(
    prompt: str,
    negative_prompt: str,
    reference_hashes: Sequence[str],
    maker: ProviderIdentity,
    aspect_ratio: str,
) -> str:
    return stable_hash(
        {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "references": list(reference_hashes),
            "maker": maker.model_dump(mode="json"),
            "aspect_ratio": aspect_ratio,
        }
    )
