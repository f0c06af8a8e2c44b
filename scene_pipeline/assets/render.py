"""`render_scene`: one step per scene that needs work. It writes the scene's prompt (or uses
the known one), then draws its picture with the portraits of the characters present; each
scene is retryable and re-executable on its own, and shows its prompt and image."""

from dagster import OpExecutionContext, Output, op

from scene_pipeline.assets.metadata import scene_metadata
from scene_pipeline.assets.support import RETRY_POLICY, attempt_of, script_step, tools
from scene_pipeline.core.rendering import render_scene as render
from scene_pipeline.models import Portrait, SceneOutcome, ScenePlan
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource


@op(retry_policy=RETRY_POLICY, tags={"dagster/priority": "1"})
def render_scene(
    context: OpExecutionContext,
    plan: ScenePlan,
    character_portraits: list[Portrait],
    bucket: BucketResource,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
) -> Output[SceneOutcome]:
    """Write (or reuse) one scene's prompt and draw its picture."""
    portraits = {p.name: p for p in character_portraits}
    with script_step(context, bucket.get_bucket(), plan.script_id):
        outcome = render(
            plan, portraits, tools(context, bucket, prompt_writer, image_maker), attempt_of(context)
        )
    entry = outcome.entry
    if entry.error:
        context.log.error(f"scene {entry.scene_id}: {entry.error}")
    elif entry.offline:
        context.log.warning(f"scene {entry.scene_id}: OFFLINE placeholder image")
    return Output(outcome, metadata=scene_metadata(outcome))
