"""Content hashes: what decides whether a paid call is needed again.

A scene's hash covers its own lines, the characters it involves, the style and aspect ratio,
and the identities (provider, model, version) of the prompt writer and the image maker. It
does not cover neighbouring scenes, which the prompt writer reads only for context: editing
scene 3 does not redraw scenes 2 and 4.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scene_pipeline.contract.script import Scene, Script
from scene_pipeline.providers.base import ProviderIdentity
from scene_pipeline.providers.prompting import involved_characters

HASH_CHARS = 16


def stable_hash(value: Any, length: int = HASH_CHARS) -> str:
    """sha256 of canonical JSON, shortened: stable across processes and Python versions."""
    data = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:length]


def scene_content_hash(
    script: Script,
    scene: Scene,
    prompt_writer: ProviderIdentity,
    image_maker: ProviderIdentity,
) -> str:
    return stable_hash(
        {
            "lines": [line.model_dump(mode="json") for line in scene.audios],
            "characters": [c.model_dump(mode="json") for c in involved_characters(script, scene)],
            "style": script.options.style,
            "aspect_ratio": script.options.aspect_ratio,
            "prompt_writer": prompt_writer.model_dump(mode="json"),
            "image_maker": image_maker.model_dump(mode="json"),
        }
    )


def character_sheet_hash(script: Script, prompt_writer: ProviderIdentity) -> str:
    meta = script.script_metadata
    return stable_hash(
        {
            "title": meta.title,
            "characters": [c.model_dump(mode="json") for c in meta.characters],
            "story": meta.original_story,
            "style": script.options.style,
            "prompt_writer": prompt_writer.model_dump(mode="json"),
        }
    )
