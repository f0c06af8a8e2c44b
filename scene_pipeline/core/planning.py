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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from scene_pipeline.contract.outputs import SceneEntry
from scene_pipeline.contract.script import Script
from scene_pipeline.core.planning_inputs import Holdings, Providers, SceneInputs, scene_inputs
from scene_pipeline.models import ScenePlan
from scene_pipeline.storage import GenerationRef


class UnknownScenesError(ValueError):
    """The operator selected scene ids that the script does not have."""


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


def _place(item: SceneInputs, selection: Selection, config: str, planning: ScenePlanning) -> bool:
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
    _check_known(script, scene_ids, selection)
    previous_entries = {e.scene_id: e for e in held.previous.scenes} if held.previous else {}
    config = providers.config_hash
    planning = ScenePlanning()
    for index, scene in enumerate(script.scenes):
        item = scene_inputs(script, index, held, previous_entries.get(scene.scene_id), providers)
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


def _check_known(script: Script, scene_ids: list[str], selection: Selection) -> None:
    """UnknownScenesError when the selection names scenes that the script does not have."""
    unknown = sorted(selection.scene_ids - set(scene_ids))
    if unknown:
        raise UnknownScenesError(
            f"script {script.script_id} has no scene {', '.join(unknown)}"
            f" (its scenes: {', '.join(scene_ids)})"
        )


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
