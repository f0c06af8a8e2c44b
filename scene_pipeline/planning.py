"""Deciding, per scene, what a run must pay for and what it can reuse.

Pure functions: given the accepted script, what the bucket already holds, and the operator's
selection, return the scenes to generate and the manifest entries of every other scene.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from scene_pipeline.bucket import GenerationRef
from scene_pipeline.contract.outputs import GenerationRecord, Manifest, SceneEntry
from scene_pipeline.contract.script import Script
from scene_pipeline.hashing import scene_content_hash, stable_hash
from scene_pipeline.models import ScenePlan
from scene_pipeline.providers.base import ProviderIdentity
from scene_pipeline.providers.prompting import involved_characters


class UnknownScenesError(ValueError):
    """The operator selected scene ids that the script does not have."""


@dataclass(frozen=True)
class ScenePlanning:
    to_generate: list[ScenePlan]
    # Scenes this run leaves as they are: reused, not selected, or removed from the script.
    carried: list[SceneEntry]
    # Generation records whose entries must be read to carry a reused scene.
    records_to_read: dict[str, str]


def generation_name(now: datetime, content_hash: str, run_id: str) -> str:
    """Unique and sortable: a UTC timestamp, the content hash, and the run that made it."""
    return f"{now:%Y%m%dT%H%M%SZ}-{content_hash}-{run_id.replace('-', '')[:8]}"


def external_task_id(script_id: str, scene_id: str, generation: str) -> str:
    """Our idempotency key at the image provider: one per generation, stable across retries."""
    return "sp-" + stable_hash(["image-task", script_id, scene_id, generation], length=32)


def entry_from_record(record: GenerationRecord) -> SceneEntry:
    return SceneEntry(
        scene_id=record.scene_id,
        status="succeeded",
        image_prompt=record.image_prompt,
        negative_prompt=record.negative_prompt,
        image_s3url=record.image_s3url,
        provider=record.image.provider,
        model=record.image.model,
        offline=record.image.offline or record.prompt.offline,
        content_hash=record.content_hash,
        generation=record.generation,
        generated_at=record.created_at,
    )


def plan_scenes(
    script: Script,
    *,
    prompt_writer: ProviderIdentity,
    image_maker: ProviderIdentity,
    generations: Mapping[str, list[GenerationRef]],
    previous: Manifest | None,
    selected: list[str],
    force: bool,
    run_id: str,
    now: datetime,
) -> ScenePlanning:
    scene_ids = [s.scene_id for s in script.scenes]
    unknown = sorted(set(selected) - set(scene_ids))
    if unknown:
        raise UnknownScenesError(
            f"script {script.script_id} has no scene {', '.join(unknown)}"
            f" (its scenes: {', '.join(scene_ids)})"
        )
    in_scope = set(selected) if selected else set(scene_ids)
    previous_entries = {e.scene_id: e for e in previous.scenes} if previous else {}

    to_generate: list[ScenePlan] = []
    carried: list[SceneEntry] = []
    records_to_read: dict[str, str] = {}
    for index, scene in enumerate(script.scenes):
        content_hash = scene_content_hash(script, scene, prompt_writer, image_maker)
        drawn = [
            g
            for g in generations.get(scene.scene_id, [])
            if g.content_hash == content_hash and g.has_image
        ]
        last = previous_entries.get(scene.scene_id)
        wanted = scene.scene_id in in_scope

        if drawn and not (wanted and force):
            latest = drawn[-1]
            if (
                last is not None
                and last.status == "succeeded"
                and last.generation == latest.generation
            ):
                carried.append(last)  # the manifest already describes this generation
            else:
                records_to_read[scene.scene_id] = latest.record_key
            continue
        if not wanted:
            # Not asked for in this run: keep what the last manifest said about this content.
            if last is not None and last.content_hash == content_hash and last.status == "failed":
                carried.append(last)
            else:
                carried.append(
                    SceneEntry(scene_id=scene.scene_id, status="pending", content_hash=content_hash)
                )
            continue

        generation = generation_name(now, content_hash, run_id)
        to_generate.append(
            ScenePlan(
                script_id=script.script_id,
                script_title=script.title,
                scene=scene,
                previous_scene=script.scenes[index - 1] if index > 0 else None,
                next_scene=script.scenes[index + 1] if index + 1 < len(script.scenes) else None,
                characters=involved_characters(script, scene),
                style=script.options.style,
                aspect_ratio=script.options.aspect_ratio,
                content_hash=content_hash,
                generation=generation,
                external_task_id=external_task_id(script.script_id, scene.scene_id, generation),
                forced=force and bool(drawn),
            )
        )

    current = set(scene_ids)
    for scene_id, entry in previous_entries.items():
        if scene_id not in current:
            carried.append(entry.model_copy(update={"status": "removed", "error": None}))
    return ScenePlanning(to_generate=to_generate, carried=carried, records_to_read=records_to_read)


def order_entries(script: Script, entries: list[SceneEntry]) -> list[SceneEntry]:
    """Story order first, then scenes no longer in the script."""
    position = {s.scene_id: i for i, s in enumerate(script.scenes)}
    return sorted(entries, key=lambda e: (position.get(e.scene_id, len(position)), e.scene_id))
