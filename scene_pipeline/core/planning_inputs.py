"""What scene planning reads (core/planning.py decides from it): the configured providers,
what the bucket holds about the script, and per scene what it is made from.

A scene is made from its characters and their looks, and from its prompt: an operator's
override, else the written prompt its prompt hash already has (in the last manifest or the
prompt cache), else none yet. Its image hash exists only once its prompt is known; it covers
the portraits that go with the scene's request, so that a redrawn portrait redraws its scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from scene_pipeline.contract.outputs import Manifest, SceneEntry
from scene_pipeline.contract.script import Character, Scene, Script
from scene_pipeline.core.hashing import (
    config_hash,
    image_hash,
    override_prompt_hash,
    prompt_hash,
    scene_source_hash,
)
from scene_pipeline.core.operator import OperatorState
from scene_pipeline.models import CharacterSheet, Portrait, PromptChoice, StoredPrompt
from scene_pipeline.providers.base import CharacterLook, ProviderIdentity
from scene_pipeline.providers.prompting import involved_characters, negative_prompt_for
from scene_pipeline.storage import GenerationRef


@dataclass(frozen=True)
class Providers:
    """What the configured providers mean for planning (identities come from settings)."""

    writer: ProviderIdentity
    maker: ProviderIdentity
    references_on: bool
    max_references: int
    prompt_cap: int

    @property
    def limit(self) -> int:
        """How many references a scene's request carries (0: none)."""
        return self.max_references if self.references_on else 0

    @property
    def config_hash(self) -> str:
        return config_hash(self.writer, self.maker, self.references_on, self.prompt_cap)


@dataclass(frozen=True)
class Holdings:
    """What planning reads besides the script: the sheet, the portraits, the operators' state,
    the stored generations and prompts, and the last manifest."""

    sheet: CharacterSheet
    portraits: Mapping[str, Portrait]
    state: OperatorState
    previous: Manifest | None
    generations: Mapping[str, list[GenerationRef]]
    stored_prompt: Callable[[str, str], StoredPrompt | None]


@dataclass(frozen=True)
class SceneInputs:
    """What one scene is made from, and what the bucket already holds for it."""

    index: int
    scene: Scene
    involved: list[Character]
    looks: list[CharacterLook]
    source_hash: str
    prompt_hash: str
    prompt: PromptChoice | None
    image_hash: str | None
    drawn: dict[str, GenerationRef]
    last: SceneEntry | None


def scene_inputs(
    script: Script, index: int, held: Holdings, last: SceneEntry | None, providers: Providers
) -> SceneInputs:
    scene = script.scenes[index]
    involved = involved_characters(script, scene)
    override = held.state.overrides.get(scene.scene_id)
    by_name = {look.name: look.look for look in held.sheet.looks}
    portraits, generations, stored_prompt = held.portraits, held.generations, held.stored_prompt
    looks = [
        CharacterLook(name=c.name, look=by_name[c.name]) for c in involved if c.name in by_name
    ]
    prompt: PromptChoice | None
    if override is not None:
        p_hash = override_prompt_hash(override.prompt)
        prompt = PromptChoice(
            image_prompt=override.prompt,
            negative_prompt=negative_prompt_for(script.options.style),
            characters_present=[c.name for c in involved],
            source="override",
        )
    else:
        p_hash = prompt_hash(script, scene, looks, providers.writer, providers.prompt_cap)
        prompt = known_prompt(scene, p_hash, last, stored_prompt)
    i_hash = None
    if prompt is not None:
        i_hash = image_hash(
            prompt.image_prompt,
            prompt.negative_prompt,
            portrait_ids(
                portraits[n]
                for n in reference_names(prompt.characters_present, portraits, providers.limit)
            ),
            providers.maker,
            script.options.aspect_ratio,
        )
    return SceneInputs(
        index=index,
        scene=scene,
        involved=involved,
        looks=looks,
        source_hash=scene_source_hash(script, scene, override.prompt if override else None),
        prompt_hash=p_hash,
        prompt=prompt,
        image_hash=i_hash,
        drawn={g.content_hash: g for g in generations.get(scene.scene_id, [])},
        last=last,
    )


def reference_names(present: list[str], portraits: Mapping[str, Portrait], limit: int) -> list[str]:
    """The characters whose portraits go with a scene's request, most prominent first, at
    most `limit` (0: references are off)."""
    return [n for n in present if n in portraits][:limit]


def portrait_ids(portraits: Iterable[Portrait]) -> list[str]:
    """What a picture's hash records of its references: the drawing (generation) of each, so
    that a portrait drawn anew (an operator's redraw or upload) redraws the scenes it is in."""
    return [p.generation or p.content_hash for p in portraits]


def known_prompt(
    scene: Scene,
    p_hash: str,
    last: SceneEntry | None,
    stored_prompt: Callable[[str, str], StoredPrompt | None],
) -> PromptChoice | None:
    """The written prompt for `p_hash`: from the last manifest, else from the prompt cache."""
    if (
        last is not None
        and last.prompt_hash == p_hash
        and last.prompt_source == "written"
        and last.image_prompt
    ):
        return PromptChoice(
            image_prompt=last.image_prompt,
            negative_prompt=last.negative_prompt or "",
            characters_present=last.characters,
            source="written",
        )
    stored = stored_prompt(scene.scene_id, p_hash)
    if stored is None:
        return None
    return PromptChoice(
        image_prompt=stored.image_prompt,
        negative_prompt=stored.negative_prompt,
        characters_present=stored.characters_present,
        source="written",
        provenance=stored.provenance,
    )
