"""manifest: the script's result for the backend, at results/<script_id>/manifest.json."""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
)

from scene_pipeline.constants import ASSET_GROUP
from scene_pipeline.contract.outputs import Manifest, ProviderInfo, SceneEntry, utc_now
from scene_pipeline.metadata import scenes_frame, table_metadata
from scene_pipeline.models import AcceptedScript
from scene_pipeline.partitions import script_partitions
from scene_pipeline.planning import order_entries
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource

OFFLINE_NOTICE = (
    "OFFLINE: prompts and/or images of this script are placeholders made without OpenAI or"
    " KLING. Set OPENAI_API_KEY and KLING_ACCESS_KEY/KLING_SECRET_KEY for real ones."
)


@asset(
    partitions_def=script_partitions,
    group_name=ASSET_GROUP,
    io_manager_key="manifest_io_manager",
    kinds={"json", "s3"},
    # Checks are evaluated with the manifest, so a script with failed scenes shows up in the
    # asset's health and the Checks tab, where an operator looks first.
    check_specs=[
        AssetCheckSpec(
            "all_scenes_succeeded",
            asset="manifest",
            description="Every scene of the script has a picture (none failed or pending).",
        ),
        AssetCheckSpec(
            "prompts_within_cap",
            asset="manifest",
            description="Every image prompt fits the configured cap"
            " (SCENE_PIPELINE_PROMPT_MAX_CHARS).",
        ),
    ],
)
def manifest(
    context: AssetExecutionContext,
    script_document: AcceptedScript,
    scene_images: list[SceneEntry],
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
) -> Iterator[Output[Manifest] | AssetCheckResult]:
    """The manifest the backend reads: every scene's status, prompt and image URI."""
    script = script_document.script
    writer_id, maker_id = prompt_writer.identity, image_maker.identity
    entries = order_entries(script, scene_images)
    offline = writer_id.offline or maker_id.offline or any(e.offline for e in entries)
    result = Manifest(
        script_id=script.script_id,
        title=script.title,
        source=script_document.source,
        status=Manifest.status_of(entries),
        updated_at=utc_now(),
        providers=ProviderInfo(
            prompt_writer=writer_id.label(),
            image_maker=maker_id.label(),
            offline=writer_id.offline or maker_id.offline,
        ),
        offline=offline,
        notice=OFFLINE_NOTICE if offline else None,
        scenes=entries,
    )
    if offline:
        context.log.warning(OFFLINE_NOTICE)
    counts = {
        s: sum(1 for e in entries if e.status == s)
        for s in ("succeeded", "failed", "pending", "removed")
    }
    yield Output(
        result,
        metadata={
            "status": result.status,
            **{f"scenes_{k}": v for k, v in counts.items()},
            "offline": offline,
            "scenes": table_metadata(scenes_frame(entries)),
            "failed_scenes": MetadataValue.text(
                ", ".join(e.scene_id for e in entries if e.status == "failed") or "-"
            ),
        },
    )
    unfinished = [e.scene_id for e in entries if e.status in ("failed", "pending")]
    yield AssetCheckResult(
        check_name="all_scenes_succeeded",
        passed=not unfinished,
        severity=AssetCheckSeverity.WARN,
        description=f"script {script.script_id}: "
        + (f"scenes without a picture: {', '.join(unfinished)}" if unfinished else "complete"),
        metadata={"script_id": script.script_id, "unfinished_scenes": len(unfinished)},
    )
    cap = prompt_writer.max_prompt_chars
    too_long = [e.scene_id for e in entries if len(e.image_prompt or "") > cap]
    yield AssetCheckResult(
        check_name="prompts_within_cap",
        passed=not too_long,
        severity=AssetCheckSeverity.WARN,
        description=f"script {script.script_id}: "
        + (f"prompts over {cap} chars: {', '.join(too_long)}" if too_long else f"all ≤ {cap}"),
        metadata={"script_id": script.script_id, "cap": cap, "over_cap": len(too_long)},
    )
