"""The backend's answer, `results/{script_id}/manifest.json`: built from the run's entries,
the portraits and the operators' picks, and written in one conditional PUT.

Picks are operator state: a run and an operator's `pick` may race. Both re-read the operator
state inside a read-modify-write of the manifest (If-Match on its ETag), so whichever writes
last still carries the other's change: a pick is never lost to a run that was already going.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scene_pipeline.contract.outputs import (
    Manifest,
    ProviderInfo,
    SceneEntry,
    SourceRef,
    utc_now,
)
from scene_pipeline.core.operator import OperatorState, read_state
from scene_pipeline.models import Portrait
from scene_pipeline.storage import Bucket, layout

OFFLINE_NOTICE = (
    "OFFLINE: prompts and/or images of this script are placeholders made without OpenAI or"
    " KLING. Set OPENAI_API_KEY and KLING_ACCESS_KEY/KLING_SECRET_KEY for real ones."
)


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
