"""Dagster metadata that operators read in the UI: thumbnails, galleries and per-scene tables.

Thumbnails are small JPEGs stored beside each image (core/generations.py) and shown inline as
data URIs, so the UI shows pictures without access to the bucket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from scene_pipeline.contract.outputs import SceneEntry
from scene_pipeline.core import generations
from scene_pipeline.core.assessment import Assessment
from scene_pipeline.core.sheets import SheetResult
from scene_pipeline.models import Portrait, SceneOutcome
from scene_pipeline.storage import Bucket

# The gallery shows at most this many scenes (a 200-scene script would make a huge event).
GALLERY_SCENES = 120


def table_metadata(frame: pd.DataFrame) -> MetadataValue:
    """A pandas frame as Dagster's native table metadata."""
    kinds = {"int64": "int", "float64": "float", "bool": "bool"}
    schema = TableSchema(
        columns=[
            TableColumn(name=str(name), type=kinds.get(str(dtype), "string"))
            for name, dtype in frame.dtypes.items()
        ]
    )
    records = [TableRecord(dict(row)) for row in frame.astype(object).to_dict(orient="records")]
    return MetadataValue.table(records=records, schema=schema)


def sheet_metadata(result: SheetResult) -> dict[str, object]:
    sheet = result.sheet
    provenance = sheet.provenance
    looks = "\n".join(
        f"- **{look.name}**{' (template fallback)' if look.fallback else ''}: {look.look}"
        for look in sheet.looks
    )
    return {
        "status": sheet.status,
        "characters": len(sheet.looks),
        "looks_written": result.written,
        "looks_reused": result.reused,
        "looks": MetadataValue.md(looks or "(no characters)"),
        "model": provenance.model if provenance else "",
        "tokens": provenance.usage.total_tokens if provenance and provenance.usage else 0,
    }


def plan_metadata(plan: Assessment) -> dict[str, object]:
    scenes = plan.scenes
    return {
        "portraits_to_draw": len(plan.portraits.to_draw),
        "scenes_to_render": len(scenes.to_render),
        "scenes_carried": len(scenes.carried) + len(scenes.records_to_read),
        "scenes_refused": len(scenes.refused),
        **stale_metadata(scenes.stale),
    }


def stale_metadata(stale: Mapping[str, str]) -> dict[str, object]:
    """How many scenes are stale (kept, drawn under another configuration) and why each is."""
    return {
        "scenes_stale": len(stale),
        "stale": MetadataValue.md(
            "\n".join(f"- scene {sid}: {why}" for sid, why in stale.items()) or "-"
        ),
    }


def _images_md(thumbnails: Sequence[str], alt: str) -> str:
    return " ".join(f"![{alt} {k}]({uri})" for k, uri in enumerate(thumbnails, start=1))


def portraits_metadata(
    bucket: Bucket, script_id: str, portraits: Sequence[Portrait]
) -> dict[str, object]:
    rows = []
    for p in portraits:
        thumbs = (
            generations.thumbnails(
                bucket, script_id, ("characters", p.character_key), [p.image_key]
            )
            if p.image_key and p.status == "succeeded"
            else []
        )
        shown = _images_md(thumbs, p.name) or p.error or "-"
        rows.append(f"| {p.name} | {p.source} | {p.status} | {shown} |")
    table = "| character | source | status | portrait |\n|---|---|---|---|\n" + "\n".join(rows)
    return {
        "portraits": len(portraits),
        "uploaded": sum(1 for p in portraits if p.source == "uploaded"),
        "failed": sum(1 for p in portraits if p.status == "failed"),
        "gallery": MetadataValue.md(table if rows else "(no characters in any scene)"),
    }


def scene_metadata(outcome: SceneOutcome) -> dict[str, object]:
    entry = outcome.entry
    metadata: dict[str, object] = {
        "scene_id": entry.scene_id,
        "status": entry.status,
        "prompt": outcome.prompt_status,
        "prompt_source": entry.prompt_source or "",
        "image_prompt": MetadataValue.text(entry.image_prompt or ""),
        "characters": ", ".join(entry.characters) or "-",
        "references": len(entry.references),
        "candidates": len(entry.candidates),
        "provider": entry.provider or "",
        "model": entry.model or "",
        "offline": entry.offline,
        "tokens": outcome.tokens,
        "error": entry.error or "",
    }
    if entry.image_s3url:
        metadata["image"] = MetadataValue.url(entry.image_s3url)
    if outcome.thumbnails:
        metadata["preview"] = MetadataValue.md(
            _images_md(outcome.thumbnails, f"scene {entry.scene_id}")
        )
    return metadata


def gallery_markdown(bucket: Bucket, script_id: str, entries: Sequence[SceneEntry]) -> str:
    """Every scene at once: thumbnails of its candidates, with its id, status, prompt source
    and pick (thumbnails read in one batch)."""
    shown = list(entries)[:GALLERY_SCENES]
    uris = {e.scene_id: e.candidates or ([e.image_s3url] if e.image_s3url else []) for e in shown}
    thumbs = generations.thumbnails_of_scenes(bucket, script_id, uris)
    rows = []
    for entry in shown:
        count = len(uris[entry.scene_id])
        picked = f"picked {entry.picked}/{count}" if count > 1 else "-"
        status = entry.status + (" (refused)" if entry.refused else "")
        pictures = _images_md(thumbs.get(entry.scene_id, []), f"scene {entry.scene_id}")
        rows.append(
            f"| {entry.scene_id} | {status} | {entry.prompt_source or '-'} | {picked} |"
            f" {pictures or (entry.error or '-')[:120]} |"
        )
    more = len(entries) - GALLERY_SCENES
    tail = f"\n\n{more} more scene(s): see the manifest." if more > 0 else ""
    return (
        "| scene | status | prompt | candidates | pictures |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + tail
    )
