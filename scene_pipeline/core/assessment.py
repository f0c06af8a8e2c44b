"""What a script needs, read from the bucket in a handful of requests: the plan that a run
would make, without making it. Used before a run (the CLI's and the sensor's "up to date"),
by the nightly schedule (its image budget), by `status`, and by the run's own plan step.

Reads: the accepted copy, the manifest, the sheet, the operator state, and one listing each
of the scenes' and the portraits' generations; prompts only for scenes whose prompt the last
manifest does not already describe.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from scene_pipeline.contract.outputs import Manifest, PortraitRecord
from scene_pipeline.core.intake import read_accepted
from scene_pipeline.core.operator import OperatorState, read_state
from scene_pipeline.core.planning import ScenePlanning, Selection, plan_scenes
from scene_pipeline.core.planning_inputs import Holdings, Providers
from scene_pipeline.core.portraits import PortraitPlanning, plan_portraits
from scene_pipeline.core.sheets import current_looks, stored_sheet
from scene_pipeline.models import AcceptedScript, CharacterSheet, StoredPrompt
from scene_pipeline.settings import Settings
from scene_pipeline.storage import Bucket, GenerationRef, layout


@dataclass(frozen=True)
class ScriptView:
    """What the bucket holds about one script."""

    accepted: AcceptedScript
    manifest: Manifest | None
    sheet: CharacterSheet | None
    state: OperatorState
    scene_generations: dict[str, list[GenerationRef]]
    portrait_generations: dict[str, list[GenerationRef]]


@dataclass(frozen=True)
class Assessment:
    portraits: PortraitPlanning
    scenes: ScenePlanning

    @property
    def up_to_date(self) -> bool:
        return not self.portraits.to_draw and not self.scenes.to_render

    @property
    def paid_images(self) -> int:
        """Images a run would draw (each a paid task with a real image maker)."""
        return len(self.portraits.to_draw) + len(self.scenes.to_render)


class NotAccepted(LookupError):
    """No accepted copy of the script: drop it into the inbox or `scene-pipeline run` it."""


def load_view(bucket: Bucket, script_id: str, accepted: AcceptedScript | None = None) -> ScriptView:
    """Read everything planning needs, concurrently (S3 requests are latency-bound)."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        accepted_f = pool.submit(read_accepted, bucket, script_id) if accepted is None else None
        manifest_f = pool.submit(bucket.read_manifest, script_id)
        sheet_f = pool.submit(stored_sheet, bucket, script_id)
        state_f = pool.submit(read_state, bucket, script_id)
        scenes_f = pool.submit(bucket.list_generations, script_id, "scenes")
        portraits_f = pool.submit(bucket.list_generations, script_id, "characters")
        if accepted_f is not None:
            accepted = accepted_f.result()
        if accepted is None:
            raise NotAccepted(f"no accepted script {script_id}")
        return ScriptView(
            accepted=accepted,
            manifest=manifest_f.result(),
            sheet=sheet_f.result(),
            state=state_f.result(),
            scene_generations=scenes_f.result(),
            portrait_generations=portraits_f.result(),
        )


def assess(
    bucket: Bucket,
    view: ScriptView,
    providers: Providers,
    selection: Selection,
    *,
    run_id: str,
    now: datetime,
    sheet: CharacterSheet | None = None,
    redraw_portraits: tuple[str, ...] = (),
) -> Assessment:
    """Plan portraits and scenes. `sheet`: the sheet this run ensured; without it, only the
    stored looks that are still valid count (missing looks make their scenes due)."""
    script = view.accepted.script
    if sheet is None:
        valid = current_looks(script, view.sheet, providers.writer)
        sheet = CharacterSheet(script_id=script.script_id, looks=list(valid.values()))
    portraits = (
        plan_portraits(
            script,
            sheet,
            providers.maker,
            view.state,
            view.portrait_generations,
            lambda key: bucket.read_model(key, PortraitRecord),
            redraw=redraw_portraits,
            refresh_stale=selection.refresh_stale,
            run_id=run_id,
            now=now,
        )
        if providers.references_on
        else PortraitPlanning()
    )

    def stored_prompt(scene_id: str, prompt_hash: str) -> StoredPrompt | None:
        return bucket.read_model(
            layout.prompt_key(script.script_id, scene_id, prompt_hash), StoredPrompt
        )

    held = Holdings(
        sheet=sheet,
        portraits=portraits.current,
        state=view.state,
        previous=view.manifest,
        generations=view.scene_generations,
        stored_prompt=stored_prompt,
    )
    scenes = plan_scenes(script, held, providers, selection, run_id=run_id, now=now)
    return Assessment(portraits=needed_portraits(portraits, scenes), scenes=scenes)


def needed_portraits(portraits: PortraitPlanning, scenes: ScenePlanning) -> PortraitPlanning:
    """Draw only the portraits that a scene of this run will use (its known references, or
    every character it involves when its prompt is still to be written), and those an
    operator asked to redraw: switching references on, or a new image model, must not pay
    for the portraits of a whole library whose scenes stay as they are (stale)."""
    needed: set[str] = set()
    for plan in scenes.to_render:
        if plan.prompt is None:
            needed.update(c.name for c in plan.characters)
        else:
            needed.update(plan.prompt.characters_present)
    to_draw = [p for p in portraits.to_draw if p.name in needed or p.forced]
    dropped = {p.name for p in portraits.to_draw} - {p.name for p in to_draw}
    return PortraitPlanning(
        current={n: p for n, p in portraits.current.items() if n not in dropped},
        to_draw=to_draw,
        records_to_read=portraits.records_to_read,
        stale=portraits.stale,
    )


def run_due(
    bucket: Bucket, accepted: AcceptedScript, providers: Providers, refresh_stale: bool
) -> tuple[bool, str]:
    """Whether a run of this script would draw anything, and a one-line why."""
    view = load_view(bucket, accepted.script.script_id, accepted)
    found = assess(
        bucket,
        view,
        providers,
        Selection(refresh_stale=refresh_stale),
        run_id="assess",
        now=datetime.now(UTC),
    )
    if found.up_to_date:
        stale = len(found.scenes.stale)
        return False, "up to date" + (f" ({stale} stale scene(s) kept)" if stale else "")
    return True, (
        f"{len(found.scenes.to_render)} scene(s) and {len(found.portraits.to_draw)}"
        " portrait(s) to draw"
    )


def providers_of(settings: Settings) -> Providers:
    """What the configured providers mean for planning, from settings alone (the resources'
    `planning_providers` gives the same for a code location)."""
    from scene_pipeline.constants import KLING_MAX_REFERENCES
    from scene_pipeline.providers import identities

    references = settings.character_references
    if settings.image_maker == "kling":
        maker = identities.kling(
            settings.kling_model, settings.kling_reference_model if references else None
        )
    elif settings.image_maker == "openai-images":
        maker = identities.openai_images(settings.openai_images_model)
    else:
        maker = identities.PLACEHOLDER_MAKER
    writer = (
        identities.openai_writer(settings.openai_model)
        if settings.prompt_writer == "openai"
        else identities.TEMPLATE_WRITER
    )
    return Providers(
        writer=writer,
        maker=maker,
        references_on=references,
        max_references=KLING_MAX_REFERENCES if references else 0,
        prompt_cap=settings.prompt_max_chars,
    )
