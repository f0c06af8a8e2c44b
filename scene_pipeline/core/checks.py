"""The manifest's checks, as plain functions (the asset checks in the UI report them)."""

from __future__ import annotations

from scene_pipeline.contract.outputs import Manifest
from scene_pipeline.storage import Bucket, layout


def unfinished_scenes(manifest: Manifest) -> list[str]:
    return [e.scene_id for e in manifest.scenes if e.status in ("failed", "pending")]


def prompts_over_cap(manifest: Manifest, cap: int) -> list[str]:
    return [e.scene_id for e in manifest.scenes if len(e.image_prompt or "") > cap]


def missing_references(manifest: Manifest, bucket: Bucket) -> list[str]:
    """Scenes (as "scene: portrait file") whose reference portraits are not in the bucket,
    found with one listing of the script's portraits."""
    prefix = layout.subjects_prefix(manifest.script_id, "characters")
    present = {info.key.removeprefix(prefix) for info in bucket.list(prefix)}
    missing = []
    for entry in manifest.scenes:
        if entry.status != "succeeded":
            continue
        for uri in entry.references:
            tail = uri.partition(f"/{prefix}")[2] or uri.partition(prefix)[2]
            if tail not in present:
                missing.append(f"{entry.scene_id}: {uri.rpartition('/')[2]}")
    return missing
