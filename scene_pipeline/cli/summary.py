"""How a manifest is shown on the terminal (after a run, and by `status`)."""

from __future__ import annotations

from collections.abc import Sequence

from scene_pipeline.contract.outputs import Manifest


def summary_lines(manifest: Manifest, scene_ids: Sequence[str] = ()) -> list[str]:
    live = [e for e in manifest.scenes if e.status != "removed"]
    succeeded = sum(1 for e in live if e.status == "succeeded")
    lines = [
        f"script {manifest.script_id} {manifest.title!r}: {manifest.status}"
        f" ({succeeded}/{len(live)} scenes succeeded)"
    ]
    if manifest.offline:
        lines.append(f"NOTE: {manifest.notice}")
    for entry in manifest.scenes:
        if scene_ids and entry.scene_id not in scene_ids:
            continue
        where = entry.image_s3url or entry.error or ""
        flags = []
        if entry.offline:
            flags.append("offline")
        if entry.prompt_source == "override":
            flags.append("override")
        if len(entry.candidates) > 1:
            flags.append(f"picked {entry.picked}/{len(entry.candidates)}")
        if entry.refused:
            flags.append("refused")
        shown = f" [{', '.join(flags)}]" if flags else ""
        lines.append(f"  scene {entry.scene_id:<8} {entry.status:<9}{shown} {where}")
    return lines
