"""`draw_portrait` (one step per character to draw) and `collect_portraits`, which makes the
`character_portraits` asset: every portrait the scenes of this run may reference."""

from dagster import OpExecutionContext, Output, op

from scene_pipeline.assets.metadata import portrait_metadata, portraits_metadata
from scene_pipeline.assets.support import RETRY_POLICY, attempt_of, script_step, tools
from scene_pipeline.core.operator import read_state, update_state, without_portrait_redraws
from scene_pipeline.core.rendering import draw_portrait as draw
from scene_pipeline.models import Portrait, PortraitPlan
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource
from scene_pipeline.storage import layout


@op(retry_policy=RETRY_POLICY, tags={"dagster/priority": "2"})
def draw_portrait(
    context: OpExecutionContext,
    plan: PortraitPlan,
    bucket: BucketResource,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
) -> Output[Portrait]:
    """Draw one character's reference portrait (one paid task)."""
    with script_step(context, bucket.get_bucket(), plan.script_id):
        portrait = draw(
            plan, tools(context, bucket, prompt_writer, image_maker), attempt_of(context)
        )
    if portrait.error:
        context.log.error(f"portrait of {plan.name}: {portrait.error}")
    return Output(
        portrait, metadata=portrait_metadata(bucket.get_bucket(), plan.script_id, portrait)
    )


@op
def collect_portraits(
    context: OpExecutionContext,
    portraits_planned: list[Portrait],
    drawn: list[Portrait],
    bucket: BucketResource,
) -> Output[list[Portrait]]:
    """Every portrait of the script after this run: drawn now, reused or uploaded."""
    store, script_id = bucket.get_bucket(), layout.script_segment(context.partition_key)
    by_name = {p.name: p for p in portraits_planned}
    by_name.update({p.name: p for p in drawn})
    portraits = list(by_name.values())
    done = {p.character_key for p in drawn if p.status == "succeeded"}
    if done & set(read_state(store, script_id).portrait_redraws):
        # Operators' redraw requests are fulfilled once their new portrait exists.
        update_state(store, script_id, lambda state: without_portrait_redraws(state, done))
    return Output(portraits, metadata=portraits_metadata(store, script_id, portraits))
