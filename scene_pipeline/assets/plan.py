"""`plan_script`: the run's first step. It takes the script's lease, applies the operators'
changes from the run config, writes the character sheet (the `character_sheet` asset) and
fans out the portraits and scenes this run draws."""

from collections.abc import Iterator
from datetime import UTC, datetime

from dagster import DynamicOut, DynamicOutput, Failure, OpExecutionContext, Out, Output, op

from scene_pipeline.assets.config import ScriptRunConfig
from scene_pipeline.assets.metadata import plan_metadata, portraits_metadata, sheet_metadata
from scene_pipeline.assets.support import RETRY_POLICY, attempt_of, script_step, tools
from scene_pipeline.contract.script import Script
from scene_pipeline.core import actions
from scene_pipeline.core.operator import read_state, stamp, update_state, without_portrait_redraws
from scene_pipeline.core.planning import Selection, UnknownScenesError
from scene_pipeline.core.runs import Prepared, draw_portraits, merge_portraits, prepare
from scene_pipeline.models import AcceptedScript, CarriedScenes, CharacterSheet, Portrait, ScenePlan
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.pipeline import PipelineResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    PromptWriterResource,
    planning_providers,
)
from scene_pipeline.resources.slots import ensure_pool_limit
from scene_pipeline.storage import Bucket


def mapping_key(value: str) -> str:
    """Dagster mapping keys allow [A-Za-z0-9_]: escape '_' as '__' and '-' as '_h'."""
    return value.replace("_", "__").replace("-", "_h")


@op(
    out={
        "character_sheet": Out(CharacterSheet, description="The script's character sheet."),
        "character_portraits": Out(list[Portrait], description="Portraits scenes may reference."),
        "scenes_todo": DynamicOut(ScenePlan, description="Scenes to render."),
        "carried": Out(CarriedScenes, description="Scenes this run leaves as they are."),
    },
    retry_policy=RETRY_POLICY,
)
def plan_script(
    context: OpExecutionContext,
    config: ScriptRunConfig,
    script_document: AcceptedScript,
    bucket: BucketResource,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
    pipeline: PipelineResource,
) -> Iterator[Output | DynamicOutput]:
    """Write the sheet's missing looks, draw the missing portraits, decide what this run draws."""
    script, store = script_document.script, bucket.get_bucket()
    with script_step(context, store, script.script_id, first=True):
        apply_operator_config(context, store, script, config, prompt_writer.max_prompt_chars)
        set_account_pool(context, pipeline.kling_pool_limit)
        prepared = prepare_run(
            context, config, script_document, prompt_writer, image_maker, pipeline
        )
        drawn = draw_portraits(
            prepared.assessment.portraits.to_draw,
            tools(context, bucket, prompt_writer, image_maker),
            attempt_of(context),
        )
        forget_fulfilled_redraws(store, script.script_id, drawn)
    if prepared.sheet_error:
        context.log.warning(f"character sheet falls back to the template: {prepared.sheet_error}")
    portraits = merge_portraits(prepared.portraits, drawn)
    yield Output(prepared.sheet.sheet, "character_sheet", metadata=sheet_metadata(prepared.sheet))
    yield Output(
        portraits,
        "character_portraits",
        metadata={
            **portraits_metadata(store, script.script_id, portraits),
            **plan_metadata(prepared.assessment),
        },
    )
    for scene in prepared.assessment.scenes.to_render:
        yield DynamicOutput(scene, mapping_key(scene.scene.scene_id), "scenes_todo")
    stale = dict(prepared.assessment.scenes.stale)
    yield Output(CarriedScenes(entries=prepared.carried_scenes, stale=stale), "carried")


def set_account_pool(context: OpExecutionContext, limit: int) -> None:
    previous = ensure_pool_limit(context.instance, limit)
    if previous is not None:
        context.log.warning(
            f"kling pool limit was {previous}; set to KLING_MAX_CONCURRENCY={limit}"
        )


def prepare_run(
    context: OpExecutionContext,
    config: ScriptRunConfig,
    accepted: AcceptedScript,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
    pipeline: PipelineResource,
) -> Prepared:
    """The sheet and the plan of this run (core/runs.py), with the run config's selection."""
    candidates = config.candidates or pipeline.candidates
    if candidates > pipeline.kling_pool_limit:
        raise Failure(
            f"{candidates} candidates need as many KLING slots; the account allows"
            f" {pipeline.kling_pool_limit} (KLING_MAX_CONCURRENCY)",
            allow_retries=False,
        )
    selection = Selection(
        scene_ids=frozenset(config.scene_ids),
        force=config.force,
        refresh_stale=config.refresh_stale or pipeline.redraw_stale,
        candidates=candidates,
    )
    try:
        return prepare(
            context.resources.bucket.get_bucket(),
            accepted,
            prompt_writer.get_writer,
            planning_providers(prompt_writer, image_maker),
            selection,
            attempt_of(context),
            root_run_id=context.run.root_run_id or context.run_id,
            now=datetime.now(UTC),
            redraw_portraits=config.redraw_portraits,
        )
    except UnknownScenesError as err:
        raise Failure(description=str(err), allow_retries=False) from err


def forget_fulfilled_redraws(bucket: Bucket, script_id: str, drawn: list[Portrait]) -> None:
    """Operators' redraw requests are fulfilled once their new portrait exists."""
    done = {p.character_key for p in drawn if p.status == "succeeded"}
    if done & set(read_state(bucket, script_id).portrait_redraws):
        update_state(bucket, script_id, lambda state: without_portrait_redraws(state, done))


def apply_operator_config(
    context: OpExecutionContext, bucket: Bucket, script: Script, config: ScriptRunConfig, cap: int
) -> None:
    """Overrides, picks and portraits from the Launchpad, checked like the CLI's."""
    when = stamp(context.run.tags.get("user", "ui"), config.note)
    try:
        for scene_id, text in config.prompt_overrides.items():
            actions.set_override(bucket, script, scene_id, text, cap, when)
        for scene_id in config.clear_prompt_overrides:
            actions.clear_override(bucket, script, scene_id)
        for scene_id, k in config.picks.items():
            actions.pick(bucket, script, scene_id, k, when)
        for name in config.redraw_portraits:
            actions.request_portrait_redraw(bucket, script, name, when)
        for name, key in config.portrait_uploads.items():
            data = actions.read_upload(bucket, key)
            actions.upload_portrait(bucket, script, name, data, when, context.run_id)
    except actions.ActionError as err:
        raise Failure(description=str(err), allow_retries=False) from err
