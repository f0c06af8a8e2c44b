"""scene_prompts and scene_images: one prompt step and one image step per scene.

A graph-backed multi-asset: `plan_scenes` fans the scenes that need work out (mapping key =
scene id), each gets its own `write_scene_prompt` and `draw_scene_image` step (retryable on
its own, visible in the UI, image steps in the `kling` pool), and two collectors merge the
results with the scenes this run left alone. Both assets come from one graph so that a
scene's image starts as soon as its own prompt is written, not after all prompts.

A scene that fails for good returns a `failed` entry instead of raising, so the manifest
always materializes and later runs redo only the failed scenes.
"""

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from dagster import (
    AssetOut,
    Backoff,
    Config,
    DynamicOut,
    DynamicOutput,
    Failure,
    Jitter,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    RetryRequested,
    graph_multi_asset,
    op,
)
from pydantic import Field

from scene_pipeline import planning
from scene_pipeline.bucket import Bucket, StoredTaskJournal
from scene_pipeline.constants import (
    ASSET_GROUP,
    IMAGE_STEP_MAX_RETRIES,
    IMAGE_STEP_TAG,
    KLING_POOL,
    PROMPT_STEP_MAX_RETRIES,
    RETRY_DELAY_SECONDS,
)
from scene_pipeline.contract.outputs import GenerationRecord, PromptProvenance, SceneEntry, utc_now
from scene_pipeline.contract.script import Script
from scene_pipeline.metadata import scenes_frame, table_metadata, thumbnail_markdown
from scene_pipeline.models import (
    AcceptedScript,
    CharacterSheet,
    PromptEntry,
    ScenePlan,
    ScenePrompt,
)
from scene_pipeline.partitions import script_partitions
from scene_pipeline.planning import UnknownScenesError, entry_from_record
from scene_pipeline.providers.base import GeneratedImage, ImageRequest, ScenePromptRequest
from scene_pipeline.providers.errors import AccountError, ProviderError, TransientProviderError
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource
from scene_pipeline.resources.storage import StorageResource
from scene_pipeline.storage import StorageError, layout

T = TypeVar("T")


class SceneSelection(Config):
    """Which scenes a run works on. Empty `scene_ids`: every scene that needs work."""

    scene_ids: list[str] = Field(
        default_factory=list,
        description="Scene ids to (re)generate; the others keep their current state.",
    )
    force: bool = Field(
        default=False,
        description="Regenerate the selected scenes even if unchanged: one new generation each"
        " (new prompt and image); older images stay in the bucket.",
    )


def mapping_key(scene_id: str) -> str:
    """Scene ids allow '-', Dagster mapping keys do not: escape '_' as '__' and '-' as '_h'."""
    return scene_id.replace("_", "__").replace("-", "_h")


def _retry_policy(max_retries: int) -> RetryPolicy:
    return RetryPolicy(
        max_retries=max_retries,
        delay=RETRY_DELAY_SECONDS,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def _guarded(
    context: OpExecutionContext,
    bucket: Bucket,
    max_retries: int,
    work: Callable[[], T],
    failed: Callable[[str], T],
) -> T:
    """Run `work`; transient errors are retried by the step's RetryPolicy, and on the last
    attempt every error becomes a failed scene instead of a failed run.

    An account error (bad keys, quota, allowlist) is recorded for the run, and every later
    step of the same run fails its scene without calling the provider: retrying would only
    pile up errors, or cost money once the account recovers mid-run without anyone knowing.
    """
    stopped = bucket.read_account_stop(context.run_id)
    if stopped is not None:
        return failed(f"not attempted: {stopped}")
    last_attempt = context.retry_number >= max_retries
    try:
        return work()
    except AccountError as err:
        bucket.write_account_stop(context.run_id, f"account error earlier in this run: {err}")
        context.log.error(f"provider account error; the run stops calling it: {err}")
        return failed(str(err))
    except ProviderError as err:
        if isinstance(err, TransientProviderError) and not last_attempt:
            if err.retry_after:
                # The provider said when to come back: wait that long rather than the policy's.
                raise RetryRequested(
                    max_retries=max_retries, seconds_to_wait=min(err.retry_after, 300)
                ) from err
            raise
        if isinstance(err, TransientProviderError):
            return failed(f"gave up after {max_retries + 1} attempts: {err}")
        return failed(str(err))
    except StorageError as err:
        if not last_attempt:
            raise
        # Storage messages name the key and the error code, never credentials.
        return failed(f"storage error after {max_retries + 1} attempts: {err}")
    except Exception as err:
        if not last_attempt:
            raise
        context.log.exception("scene failed after its last retry")
        return failed(f"internal error after {max_retries + 1} attempts: {type(err).__name__}")


@op(
    name="plan_scenes",
    out={
        "todo": DynamicOut(ScenePlan, description="Scenes that need a new prompt and image."),
        "carried": Out(list[SceneEntry], description="Scenes this run leaves as they are."),
    },
)
def plan_scenes(
    context: OpExecutionContext,
    config: SceneSelection,
    script_document: AcceptedScript,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
    storage: StorageResource,
) -> Iterator[Output[list[SceneEntry]] | DynamicOutput[ScenePlan]]:
    """Decide which scenes need paid work; everything unchanged is reused."""
    script: Script = script_document.script
    bucket = storage.get_bucket()
    writer_id, maker_id = prompt_writer.identity, image_maker.identity
    for identity, what in ((writer_id, "prompts"), (maker_id, "images")):
        if identity.offline:
            context.log.warning(
                f"OFFLINE {what}: {identity.label()}. Set the provider keys for real {what}."
            )
    try:
        plan = planning.plan_scenes(
            script,
            prompt_writer=writer_id,
            image_maker=maker_id,
            generations=bucket.list_generations(script.script_id),
            previous=bucket.read_manifest(script.script_id),
            selected=config.scene_ids,
            force=config.force,
            run_id=context.run_id,
            now=utc_now(),
        )
    except UnknownScenesError as err:
        raise Failure(description=str(err), allow_retries=False) from err

    carried = list(plan.carried)
    records = bucket.read_records(plan.records_to_read.values())
    carried += [entry_from_record(r) for r in records]
    # A record listed a moment ago but gone now: the scene is pending, never silently dropped.
    read = {r.scene_id for r in records}
    carried += [
        SceneEntry(scene_id=scene_id, status="pending", error="its generation record is gone")
        for scene_id in plan.records_to_read
        if scene_id not in read
    ]
    reused = sum(1 for e in carried if e.status == "succeeded")
    context.log.info(
        f"script {script.script_id}: {len(plan.to_generate)} scene(s) to generate,"
        f" {reused} reused, {len(carried) - reused} other"
    )
    yield Output(
        carried,
        output_name="carried",
        metadata={
            "to_generate": len(plan.to_generate),
            "reused": reused,
            "scenes_to_generate": ", ".join(p.scene.scene_id for p in plan.to_generate) or "-",
        },
    )
    for scene_plan in plan.to_generate:
        yield DynamicOutput(
            scene_plan, mapping_key=mapping_key(scene_plan.scene.scene_id), output_name="todo"
        )


@op(retry_policy=_retry_policy(PROMPT_STEP_MAX_RETRIES))
def write_scene_prompt(
    context: OpExecutionContext,
    plan: ScenePlan,
    character_sheet: CharacterSheet,
    prompt_writer: PromptWriterResource,
    storage: StorageResource,
) -> Output[ScenePrompt]:
    """Write (or reuse) the English image prompt of one scene."""
    bucket = storage.get_bucket()
    writer = prompt_writer.get_writer()

    def work() -> ScenePrompt:
        if not plan.forced:
            stored = bucket.read_prompt(plan.script_id, plan.scene.scene_id, plan.content_hash)
            if stored is not None and stored.image_prompt:
                return stored.model_copy(update={"plan": plan, "reused": True})
        started = time.monotonic()
        written = writer.write_scene_prompt(
            ScenePromptRequest(
                script_title=plan.script_title,
                scene=plan.scene,
                previous_scene=plan.previous_scene,
                next_scene=plan.next_scene,
                characters=plan.characters,
                looks=character_sheet.looks,
                style=plan.style,
                aspect_ratio=plan.aspect_ratio,
                max_prompt_chars=prompt_writer.max_prompt_chars,
            )
        )
        prompt = ScenePrompt(
            plan=plan,
            image_prompt=written.image_prompt,
            negative_prompt=written.negative_prompt,
            provenance=PromptProvenance(
                provider=writer.identity.provider,
                model=written.model,
                writer_version=writer.identity.version,
                offline=writer.identity.offline,
                usage=written.usage,
                input_hash=plan.content_hash,
                duration_seconds=round(time.monotonic() - started, 3),
            ),
        )
        bucket.write_prompt(prompt)
        return prompt

    prompt = _guarded(
        context,
        bucket,
        PROMPT_STEP_MAX_RETRIES,
        work,
        lambda error: ScenePrompt(plan=plan, error=f"prompt: {error}"),
    )
    if prompt.error:
        context.log.error(f"scene {plan.scene.scene_id}: {prompt.error}")
    provenance = prompt.provenance
    return Output(
        prompt,
        metadata={
            "scene_id": plan.scene.scene_id,
            "status": "failed" if prompt.error else ("reused" if prompt.reused else "written"),
            "image_prompt": MetadataValue.text(prompt.image_prompt or ""),
            "prompt_chars": len(prompt.image_prompt or ""),
            "provider": provenance.provider if provenance else "",
            "model": provenance.model if provenance else "",
            "tokens": provenance.usage.total_tokens if provenance and provenance.usage else 0,
            "error": prompt.error or "",
        },
    )


@op(
    pool=KLING_POOL,
    retry_policy=_retry_policy(IMAGE_STEP_MAX_RETRIES),
    # Image steps first: a scene's picture should start as soon as its prompt exists, ahead of
    # the next scene's prompt, so the account's slots are busy as early as possible.
    tags={"dagster/priority": "1", IMAGE_STEP_TAG: "image"},
)
def draw_scene_image(
    context: OpExecutionContext,
    prompt: ScenePrompt,
    image_maker: ImageMakerResource,
    storage: StorageResource,
) -> Output[SceneEntry]:
    """Draw one scene's picture and store it, with its generation record, at the contract's keys."""
    plan = prompt.plan
    scene_id = plan.scene.scene_id
    bucket = storage.get_bucket()
    maker = image_maker.get_maker()
    drawn: GeneratedImage | None = None

    def failed(error: str) -> SceneEntry:
        return SceneEntry(
            scene_id=scene_id,
            status="failed",
            image_prompt=prompt.image_prompt,
            negative_prompt=prompt.negative_prompt,
            provider=maker.identity.provider,
            model=maker.identity.model,
            offline=maker.identity.offline,
            content_hash=plan.content_hash,
            error=error,
        )

    def work() -> SceneEntry:
        nonlocal drawn
        assert prompt.image_prompt is not None and prompt.provenance is not None
        image = maker.make_image(
            ImageRequest(
                script_id=plan.script_id,
                scene_id=scene_id,
                content_hash=plan.content_hash,
                prompt=prompt.image_prompt,
                negative_prompt=prompt.negative_prompt or "",
                aspect_ratio=plan.aspect_ratio,
                external_task_id=plan.external_task_id,
            ),
            StoredTaskJournal(
                bucket.store, layout.task_key(plan.script_id, scene_id, plan.content_hash)
            ),
        )
        image_key, image_uri = bucket.image_uri(plan.script_id, scene_id, plan.generation)
        record = GenerationRecord(
            script_id=plan.script_id,
            scene_id=scene_id,
            generation=plan.generation,
            content_hash=plan.content_hash,
            image_prompt=prompt.image_prompt,
            negative_prompt=prompt.negative_prompt or "",
            image_key=image_key,
            image_s3url=image_uri,
            prompt=prompt.provenance,
            image=image.provenance,
            created_at=utc_now(),
            forced=plan.forced,
        )
        bucket.write_generation(record, image.png)
        StoredTaskJournal(
            bucket.store, layout.task_key(plan.script_id, scene_id, plan.content_hash)
        ).clear()
        drawn = image
        return entry_from_record(record)

    if prompt.error:
        entry = failed(prompt.error)
    else:
        entry = _guarded(
            context, bucket, IMAGE_STEP_MAX_RETRIES, work, lambda e: failed(f"image: {e}")
        )
    if entry.error:
        context.log.error(f"scene {scene_id}: {entry.error}")
    elif entry.offline:
        context.log.warning(f"scene {scene_id}: OFFLINE placeholder image (no image provider keys)")
    metadata: dict[str, object] = {
        "scene_id": scene_id,
        "status": entry.status,
        "image_prompt": MetadataValue.text(entry.image_prompt or ""),
        "provider": entry.provider or "",
        "model": entry.model or "",
        "offline": entry.offline,
        "error": entry.error or "",
    }
    if entry.image_s3url:
        metadata["image"] = MetadataValue.url(entry.image_s3url)
    if drawn is not None:
        cost = drawn.provenance
        metadata["preview"] = thumbnail_markdown(drawn.png, f"scene {scene_id}")
        metadata["attempts"] = cost.attempts
        metadata["task_id"] = cost.task_id or ""
        metadata["duration_seconds"] = cost.duration_seconds or 0.0
        metadata["final_unit_deduction"] = cost.final_unit_deduction or ""
    return Output(entry, metadata=metadata)


@op
def collect_scene_prompts(
    carried: list[SceneEntry], prompts: list[ScenePrompt]
) -> Output[list[PromptEntry]]:
    """Every scene's prompt: written in this run, or reused from an earlier generation."""
    entries = [
        PromptEntry(
            scene_id=e.scene_id,
            content_hash=e.content_hash,
            status="reused" if e.status == "succeeded" else "not in this run",
            image_prompt=e.image_prompt,
            negative_prompt=e.negative_prompt,
            error=e.error,
        )
        for e in carried
        if e.status != "removed"
    ]
    for p in prompts:
        entries.append(
            PromptEntry(
                scene_id=p.plan.scene.scene_id,
                content_hash=p.plan.content_hash,
                status="failed" if p.error else ("reused" if p.reused else "written"),
                image_prompt=p.image_prompt,
                negative_prompt=p.negative_prompt,
                provider=p.provenance.provider if p.provenance else None,
                model=p.provenance.model if p.provenance else None,
                error=p.error,
            )
        )
    counts = {s: sum(1 for e in entries if e.status == s) for s in ("written", "reused", "failed")}
    return Output(entries, metadata={**counts, "scenes": len(entries)})


@op
def collect_scene_images(
    carried: list[SceneEntry], images: list[SceneEntry]
) -> Output[list[SceneEntry]]:
    """Every scene's state after this run: drawn, reused, failed, pending or removed."""
    entries = [*carried, *images]
    frame = scenes_frame(entries)
    counts = frame["status"].value_counts().to_dict()
    return Output(
        entries,
        metadata={
            **{f"scenes_{status}": int(n) for status, n in counts.items()},
            "scenes": table_metadata(frame),
        },
    )


@graph_multi_asset(
    outs={
        "scene_prompts": AssetOut(
            kinds={"openai"},
            description="One English image prompt per scene, written from the character sheet.",
        ),
        "scene_images": AssetOut(
            kinds={"kling", "png"},
            description="One picture per scene, stored at results/<script>/scenes/<scene>/.",
        ),
    },
    partitions_def=script_partitions,
    # AssetOut(group_name=...) is ignored by graph_multi_asset (1.13.27); the group goes here.
    group_name=ASSET_GROUP,
)
def scenes(script_document: AcceptedScript, character_sheet: CharacterSheet):
    todo, carried = plan_scenes(script_document)
    prompts = todo.map(lambda plan: write_scene_prompt(plan, character_sheet))
    images = prompts.map(draw_scene_image)
    return {
        "scene_prompts": collect_scene_prompts(carried, prompts.collect()),
        "scene_images": collect_scene_images(carried, images.collect()),
    }
