"""The two ends of a run, as plain functions: `prepare` (the sheet, then the plan of portraits
and scenes) and `finish` (every scene's entry, the portraits, the manifest). The steps in
assets/ wire Dagster's context and resources to these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from scene_pipeline.contract.outputs import (
    GenerationRecord,
    Manifest,
    PortraitRecord,
    ProviderInfo,
    SceneEntry,
)
from scene_pipeline.contract.script import Script
from scene_pipeline.core.assessment import Assessment, ScriptView, assess, load_view
from scene_pipeline.core.manifests import build_manifest, entry_from_record, order_entries
from scene_pipeline.core.operator import OperatorState, read_state
from scene_pipeline.core.outcomes import AccountStops, Attempt, Failed, guarded
from scene_pipeline.core.planning import Selection
from scene_pipeline.core.planning_inputs import Providers
from scene_pipeline.core.portrait_drawing import draw_portrait
from scene_pipeline.core.portraits import portrait_from_record
from scene_pipeline.core.rendering import Tools
from scene_pipeline.core.sheets import SheetResult, ensure_sheet
from scene_pipeline.models import AcceptedScript, Portrait, PortraitPlan
from scene_pipeline.providers.base import PromptWriter
from scene_pipeline.storage import Bucket


@dataclass(frozen=True)
class Prepared:
    sheet: SheetResult
    sheet_error: str | None
    view: ScriptView
    assessment: Assessment
    portraits: list[Portrait]  # every portrait scenes may reference; pending: drawn this run
    carried_scenes: list[SceneEntry]


def prepare(
    bucket: Bucket,
    accepted: AcceptedScript,
    writer: Callable[[], PromptWriter],
    providers: Providers,
    selection: Selection,
    attempt: Attempt,
    *,
    root_run_id: str,
    now: datetime,
    redraw_portraits: Sequence[str] = (),
) -> Prepared:
    """Ensure the character sheet, then plan portraits and scenes.

    The sheet follows core/outcomes.py like any paid item: a transient failure is retried by
    the step; when the writer gives up, the missing looks fall back to the template (marked,
    and corrected by a later run).
    """
    script = accepted.script
    sheet, sheet_error = _sheet(bucket, script, writer, attempt)
    view = load_view(bucket, script.script_id, accepted)
    assessment = assess(
        bucket,
        view,
        providers,
        selection,
        run_id=root_run_id,
        now=now,
        sheet=sheet.sheet,
        redraw_portraits=tuple(redraw_portraits),
    )
    return Prepared(
        sheet=sheet,
        sheet_error=sheet_error,
        view=view,
        assessment=assessment,
        portraits=_portraits(bucket, assessment),
        carried_scenes=_carried_scenes(bucket, assessment, providers),
    )


def _sheet(
    bucket: Bucket, script: Script, writer: Callable[[], PromptWriter], attempt: Attempt
) -> tuple[SheetResult, str | None]:
    """The character sheet, and why the writer gave up on it (then from the template)."""
    stops = AccountStops(bucket, attempt.run_id)
    result = guarded(
        lambda: ensure_sheet(bucket, script, writer()), attempt, stops, "prompt_writer"
    )
    if isinstance(result, Failed):
        return ensure_sheet(bucket, script, writer(), write=False), result.message
    return result, None


def _portraits(bucket: Bucket, assessment: Assessment) -> list[Portrait]:
    """Every portrait scenes may reference, read from its record where it has one."""
    records = bucket.read_models(assessment.portraits.records_to_read.values(), PortraitRecord)
    portraits = []
    for name, portrait in assessment.portraits.current.items():
        record = records.get(assessment.portraits.records_to_read.get(name, ""))
        if record is not None:
            portrait = portrait_from_record(record)
        elif portrait.image_key:
            portrait = portrait.model_copy(update={"uri": bucket.uri(portrait.image_key)})
        portraits.append(portrait)
    return portraits


def _carried_scenes(
    bucket: Bucket, assessment: Assessment, providers: Providers
) -> list[SceneEntry]:
    """The entries of the scenes this run leaves as they are."""
    scene_records = bucket.read_models(assessment.scenes.records_to_read.values(), GenerationRecord)
    carried = list(assessment.scenes.carried)
    carried += [entry_from_record(r, providers.maker.offline) for r in scene_records.values()]
    read = {r.scene_id for r in scene_records.values()}
    # A record listed a moment ago but gone now: the scene is pending, never silently dropped.
    carried += [
        SceneEntry(scene_id=sid, status="pending", error="its generation record is gone")
        for sid in assessment.scenes.records_to_read
        if sid not in read
    ]
    return carried


def draw_portraits(plans: Sequence[PortraitPlan], tools: Tools, attempt: Attempt) -> list[Portrait]:
    """Draw the portraits this run needs, in parallel (each holds a slot of the account while
    its task runs). A failure that the step should retry is raised once every other portrait
    is done: the retried step finds those stored and does not pay for them again."""
    if not plans:
        return []
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        futures = [pool.submit(draw_portrait, plan, tools, attempt) for plan in plans]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


def merge_portraits(planned: Sequence[Portrait], drawn: Sequence[Portrait]) -> list[Portrait]:
    """Every portrait scenes may reference: the ones drawn now replace the pending ones."""
    by_name = {p.name: p for p in planned}
    by_name.update({p.name: p for p in drawn})
    return list(by_name.values())


def finish(
    accepted: AcceptedScript,
    entries: Sequence[SceneEntry],
    portraits: Sequence[Portrait],
    providers: Providers,
    state: OperatorState,
) -> Manifest:
    """The manifest of this run: every scene in story order, every portrait, picks applied."""
    script = accepted.script
    offline = providers.writer.offline or providers.maker.offline
    return build_manifest(
        script_id=script.script_id,
        title=script.title,
        source=accepted.source,
        entries=order_entries(script, list(entries)),
        portraits=sorted(portraits, key=lambda p: _character_order(accepted, p.name)),
        providers=ProviderInfo(
            prompt_writer=providers.writer.label(),
            image_maker=providers.maker.label(),
            offline=offline,
        ),
        state=state,
    )


def _character_order(accepted: AcceptedScript, name: str) -> int:
    names = [c.name for c in accepted.script.script_metadata.characters]
    return names.index(name) if name in names else len(names)


__all__ = ["Prepared", "finish", "prepare", "read_state"]
