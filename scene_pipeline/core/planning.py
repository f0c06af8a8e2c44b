"""Deciding, per scene, what a run must pay for and what it can reuse.

Pure: given the script, its sheet and portraits, the operators' state, what the bucket holds
and the selection, return the scenes to render and the manifest entries of every other scene.
The same function answers the CLI's "up to date?", the sensor's "is a run needed?", the
nightly schedule's budget and `status`.

A scene is carried as it is when:
- its current image already exists (same image hash) and it is not forced;
- it is not selected (a run of other scenes);
- it was refused for its content and neither its content nor its prompt override changed;
- it is *stale*: its image was made for the same content under other providers or another
  reference mode. Stale scenes are redrawn only when asked (`refresh_stale`, the setting
  SCENE_PIPELINE_REDRAW_STALE, or selecting/forcing them): a change of model must not
  silently redraw a whole library.
Everything else is rendered: new or changed content, a corrected look, a replaced portrait,
failed or pending scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from scene_pipeline.contract.outputs import GenerationRecord, Manifest, SceneEntry
from scene_pipeline.contract.script import Character, Scene, Script
from scene_pipeline.core.hashing import (
    config_hash,
    image_hash,
    override_prompt_hash,
    prompt_hash,
    scene_source_hash,
)
from scene_pipeline.core.operator import OperatorState
from scene_pipeline.models import CharacterSheet, Portrait, PromptChoice, ScenePlan, StoredPrompt
from scene_pipeline.providers.base import CharacterLook, ProviderIdentity
from scene_pipeline.providers.prompting import involved_characters, negative_prompt_for
from scene_pipeline.storage import GenerationRef


class UnknownScenesError(ValueError):
    """The operator selected scene ids that the script does not have."""


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
class Selection:
    """Which scenes a run works on. Empty `scene_ids`: every scene that needs work."""

    scene_ids: frozenset[str] = frozenset()
    force: bool = False
    refresh_stale: bool = False
    candidates: int = 1


@dataclass
class ScenePlanning:
    to_render: list[ScenePlan] = field(default_factory=list)
    # Scenes this run leaves as they are: reused, not selected, refused, stale or removed.
    carried: list[SceneEntry] = field(default_factory=list)
    # Reused generations whose manifest entries must be read from their records.
    records_to_read: dict[str, str] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)  # scene id -> why
    refused: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.to_render


def entry_from_record(record: GenerationRecord, offline: bool) -> SceneEntry:
    return SceneEntry(
        scene_id=record.scene_id,
        status="succeeded",
        image_prompt=record.image_prompt,
        negative_prompt=record.negative_prompt,
        image_s3url=record.image_s3url,
        provider=record.image.provider,
        model=record.image.model,
        offline=offline or record.image.offline or bool(record.prompt and record.prompt.offline),
        content_hash=record.content_hash,
        generation=record.generation,
        generated_at=record.created_at,
        prompt_source=record.prompt_source,
        characters=record.characters,
        references=record.references,
        candidates=record.candidates or [record.image_s3url],
        picked=1,
        source_hash=record.source_hash,
        prompt_hash=record.prompt_hash,
        config_hash=record.config_hash,
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


@dataclass(frozen=True)
class _Scene:
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


def _inputs(
    script: Script, index: int, held: Holdings, last: SceneEntry | None, providers: Providers
) -> _Scene:
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
    return _Scene(
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


def _place(item: _Scene, selection: Selection, config: str, planning: ScenePlanning) -> bool:
    """Carry the scene as it is when nothing is to be drawn for it; False: render it."""
    sid, last = item.scene.scene_id, item.last
    explicitly = sid in selection.scene_ids
    wanted = explicitly or not selection.scene_ids
    forced = selection.force and wanted
    if item.image_hash in item.drawn and not forced:
        latest = item.drawn[item.image_hash or ""]
        if last is not None and last.status == "succeeded" and last.generation == latest.generation:
            planning.carried.append(last)
        else:
            planning.records_to_read[sid] = latest.record_key
        return True
    if not wanted:
        planning.carried.append(last or SceneEntry(scene_id=sid, status="pending"))
        return True
    if explicitly or forced:
        return False
    if last is not None and last.refused and last.source_hash == item.source_hash:
        planning.carried.append(last)
        planning.refused.append(sid)
        return True
    stale_reason = _stale(last, item.source_hash, config, item.drawn)
    if stale_reason and not selection.refresh_stale:
        assert last is not None
        planning.carried.append(last)
        planning.stale[sid] = stale_reason
        return True
    return False


def plan_scenes(
    script: Script,
    held: Holdings,
    providers: Providers,
    selection: Selection,
    *,
    run_id: str,
    now: datetime,
) -> ScenePlanning:
    scene_ids = [s.scene_id for s in script.scenes]
    unknown = sorted(selection.scene_ids - set(scene_ids))
    if unknown:
        raise UnknownScenesError(
            f"script {script.script_id} has no scene {', '.join(unknown)}"
            f" (its scenes: {', '.join(scene_ids)})"
        )
    previous_entries = {e.scene_id: e for e in held.previous.scenes} if held.previous else {}
    config = providers.config_hash
    planning = ScenePlanning()
    for index, scene in enumerate(script.scenes):
        item = _inputs(script, index, held, previous_entries.get(scene.scene_id), providers)
        if _place(item, selection, config, planning):
            continue
        wanted_explicitly = scene.scene_id in selection.scene_ids or not selection.scene_ids
        planning.to_render.append(
            ScenePlan(
                script_id=script.script_id,
                script_title=script.title,
                scene=scene,
                previous_scene=script.scenes[index - 1] if index > 0 else None,
                next_scene=script.scenes[index + 1] if index + 1 < len(script.scenes) else None,
                characters=item.involved,
                looks=item.looks,
                style=script.options.style,
                aspect_ratio=script.options.aspect_ratio,
                source_hash=item.source_hash,
                config_hash=config,
                prompt_hash=item.prompt_hash,
                prompt=item.prompt,
                references_on=providers.references_on,
                candidates=selection.candidates,
                forced=selection.force and wanted_explicitly,
                planned_at=now,
                root_run_id=run_id,
                drawn={h: g.record_key for h, g in item.drawn.items()},
            )
        )
    current = set(scene_ids)
    for sid, entry in previous_entries.items():
        if sid not in current:
            planning.carried.append(entry.model_copy(update={"status": "removed", "error": None}))
    return planning


def _stale(
    last: SceneEntry | None, source: str, config: str, drawn: Mapping[str, GenerationRef]
) -> str | None:
    """Why a succeeded scene's picture is out of date for configuration reasons only."""
    if last is None or last.status != "succeeded" or last.content_hash not in drawn:
        return None
    if last.source_hash is None:
        return "drawn by an older version of the pipeline"
    if last.source_hash != source:
        return None  # its content changed: not stale, due
    if last.config_hash != config:
        return "the providers or the reference mode changed since it was drawn"
    return None


def order_entries(script: Script, entries: list[SceneEntry]) -> list[SceneEntry]:
    """Story order first, then scenes no longer in the script."""
    position = {s.scene_id: i for i, s in enumerate(script.scenes)}
    return sorted(entries, key=lambda e: (position.get(e.scene_id, len(position)), e.scene_id))
