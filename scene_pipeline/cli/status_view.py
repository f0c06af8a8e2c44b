"""`scene-pipeline status`: per scene its state, prompt source, candidates and pick, and what
a run would do (stale, refused, due), then the portraits and the operators' overrides."""

from __future__ import annotations

from scene_pipeline.contract.outputs import Manifest
from scene_pipeline.core.assessment import Assessment
from scene_pipeline.core.operator import OperatorState
from scene_pipeline.core.tables import scenes_table


def status_lines(manifest: Manifest, plan: Assessment, state: OperatorState) -> list[str]:
    due = {p.scene.scene_id for p in plan.scenes.to_render}
    lines = [scenes_table(manifest.scenes, due=due, stale=plan.scenes.stale)]
    if plan.scenes.stale:
        lines.append(
            f"stale (kept; the configuration changed since they were drawn): "
            f"{', '.join(sorted(plan.scenes.stale))}. Redraw them with `scene-pipeline run FILE"
            " --refresh-stale` or SCENE_PIPELINE_REDRAW_STALE=on."
        )
    if plan.scenes.refused:
        lines.append(
            f"refused by moderation, not requested again until their content or prompt override"
            f" changes: {', '.join(plan.scenes.refused)}"
        )
    if due:
        lines.append(f"due at the next run: {', '.join(sorted(due))}")
    for c in manifest.characters:
        where = c.portrait_s3url or c.error or ""
        lines.append(f"  portrait {c.name} [{c.source or '-'}, {c.status}] {where}")
    for scene_id, override in sorted(state.overrides.items()):
        by = f" by {override.stamp.by}" if override.stamp.by else ""
        lines.append(f"  override scene {scene_id}{by} at {override.stamp.at:%Y-%m-%dT%H:%M:%SZ}")
    return lines
