"""The backend's answer, `results/{script_id}/manifest.json`: built from the run's entries,
the portraits and the operators' picks, and written in one conditional PUT. A drawn scene's
entry is made from its generation record, whether drawn in this run or reused.

Picks are operator state: a run and an operator's `pick` may race. Both re-read the operator
state inside a read-modify-write of the manifest (If-Match on its ETag), so whichever writes
last still carries the other's change: a pick is never lost to a run that was already going.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scene_pipeline.contract.outputs import (
    GenerationRecord,
    Manifest,
    ProviderInfo,
    SceneEntry,
    SourceRef,
    utc_now,
)
from scene_pipeline.contract.script import Script
from scene_pipeline.core.operator import OperatorState, read_state
from scene_pipeline.models import Portrait
from scene_pipeline.storage import Bucket, layout

OFFLINE_NOTICE = (
    "OFFLINE: prompts and/or images of this script are placeholders made without OpenAI or"
    " KLING. Set OPENAI_API_KEY and KLING_ACCESS_KEY/KLING_SECRET_KEY for real ones."
)


def entry_from_record(record: GenerationRecord, offline: bool) -> SceneEntry:
    """The manifest entry of a drawn scene, from its generation record."""
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


def order_entries(script: Script, entries: list[SceneEntry]) -> list[SceneEntry]:
    """Story order first, then scenes no longer in the script."""
    position = {s.scene_id: i for i, s in enumerate(script.scenes)}
    return sorted(entries, key=lambda e: (position.get(e.scene_id, len(position)), e.scene_id))


def apply_picks(entries: Sequence[SceneEntry], state: OperatorState) -> list[SceneEntry]:
    """Each drawn scene shows its picked candidate: the operator's pick of its current
    generation, else the first."""
    out: list[SceneEntry] = []
    for entry in entries:
        if entry.status != "succeeded" or not entry.image_s3url:
            out.append(entry)
            continue
        candidates = entry.candidates or [entry.image_s3url]
        pick = state.picks.get(entry.scene_id)
        picked = 1
        if (
            pick is not None
            and pick.generation == entry.generation
            and pick.picked <= len(candidates)
        ):
            picked = pick.picked
        out.append(
            entry.model_copy(
                update={
                    "candidates": candidates,
                    "picked": picked,
                    "image_s3url": candidates[picked - 1],
                }
            )
        )
    return out


def build_manifest(
    *,
    script_id: str,
    title: str,
    source: SourceRef | None,
    entries: Sequence[SceneEntry],
    portraits: Sequence[Portrait],
    providers: ProviderInfo,
    state: OperatorState,
) -> Manifest:
    scenes = apply_picks(entries, state)
    offline = providers.offline or any(e.offline for e in scenes)
    return Manifest(
        script_id=script_id,
        title=title,
        source=source,
        status=Manifest.status_of(scenes),
        updated_at=utc_now(),
        providers=providers,
        offline=offline,
        notice=OFFLINE_NOTICE if offline else None,
        scenes=scenes,
        characters=[p.entry() for p in portraits],
    )


def publish(
    bucket: Bucket, script_id: str, build: Callable[[OperatorState, Manifest | None], Manifest]
) -> Manifest:
    """Write the manifest `build` makes from the current operator state and manifest, again
    when another writer changed the manifest in between (a conditional read-modify-write)."""
    return bucket.update_model(
        layout.manifest_key(script_id),
        Manifest,
        lambda current: build(read_state(bucket, script_id), current),
    )
