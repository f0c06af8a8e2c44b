"""Dagster metadata that operators read in the UI: thumbnails and per-scene tables."""

from __future__ import annotations

import base64
import io

import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema
from PIL import Image

from scene_pipeline.contract.outputs import SceneEntry

THUMBNAIL_LONG_SIDE = 160


def thumbnail_markdown(png: bytes, alt: str) -> MetadataValue:
    """A small inline preview (base64 data URI), so the UI shows the image without S3 access."""
    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((THUMBNAIL_LONG_SIDE, THUMBNAIL_LONG_SIDE))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=70)
    data = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![{alt}](data:image/jpeg;base64,{data})")


def scenes_frame(entries: list[SceneEntry]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "scene_id": e.scene_id,
                "status": e.status,
                "provider": e.provider or "",
                "model": e.model or "",
                "generation": e.generation or "",
                "prompt_chars": len(e.image_prompt or ""),
                "error": e.error or "",
            }
            for e in entries
        ],
        columns=["scene_id", "status", "provider", "model", "generation", "prompt_chars", "error"],
    )


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
