"""Scenes as a table: the manifest asset's metadata in the UI and `scene-pipeline status`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from scene_pipeline.contract.outputs import SceneEntry

COLUMNS = [
    "scene_id", "status", "prompt_source", "candidates", "picked", "characters",
    "provider", "model", "generation", "prompt_chars", "error",
]  # fmt: skip


def scenes_frame(entries: Sequence[SceneEntry]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "scene_id": e.scene_id,
                "status": e.status + (" (refused)" if e.refused else ""),
                "prompt_source": e.prompt_source or "",
                "candidates": len(e.candidates),
                "picked": e.picked or 0,
                "characters": ", ".join(e.characters),
                "provider": e.provider or "",
                "model": e.model or "",
                "generation": e.generation or "",
                "prompt_chars": len(e.image_prompt or ""),
                "error": e.error or "",
            }
            for e in entries
        ],
        columns=COLUMNS,
    )


def scenes_table(
    entries: Sequence[SceneEntry], *, due: Collection[str] = (), stale: Mapping[str, str] = {}
) -> str:
    frame = scenes_frame(entries)
    frame.insert(
        2,
        "next_run",
        ["due" if sid in due else "stale" if sid in stale else "" for sid in frame["scene_id"]],
    )
    frame = frame.drop(columns=["generation"])
    return frame.to_string(index=False)
