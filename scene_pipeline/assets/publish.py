"""`publish_script`: the run's last step. It merges the scenes this run rendered with the ones
it left alone and emits `scene_prompts`, `scene_images` (with a gallery of every scene) and the
`manifest` for the backend, with its checks."""

from collections.abc import Iterator, Mapping, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    op,
)

from scene_pipeline.assets.metadata import gallery_markdown, stale_metadata, table_metadata
from scene_pipeline.assets.support import lease_token, script_step
from scene_pipeline.constants import TAG_LEASE
from scene_pipeline.contract.outputs import Manifest, SceneEntry
from scene_pipeline.core import checks, leases
from scene_pipeline.core.operator import read_state
from scene_pipeline.core.runs import finish
from scene_pipeline.core.tables import scenes_frame
from scene_pipeline.models import AcceptedScript, CarriedScenes, Portrait, SceneOutcome
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    PromptWriterResource,
    planning_providers,
)
from scene_pipeline.storage import Bucket

CHECKS = {
    "all_scenes_succeeded": "Every scene of the script has a picture (none failed or pending).",
    "prompts_within_cap": "Every image prompt fits the cap (SCENE_PIPELINE_PROMPT_MAX_CHARS).",
    "references_exist": "Every portrait a scene was drawn with exists in the bucket.",
}


@op(
    out={
        "scene_prompts": Out(list[dict], description="Every scene's prompt and its source."),
        "scene_images": Out(list[SceneEntry], description="Every scene's picture and status."),
        "manifest": Out(Manifest, io_manager_key="manifest_io_manager"),
        **{f"manifest_{name}": Out(is_required=False) for name in CHECKS},
    }
)
def publish_script(
    context: OpExecutionContext,
    script_document: AcceptedScript,
    carried: CarriedScenes,
    outcomes: list[SceneOutcome],
    character_portraits: list[Portrait],
    bucket: BucketResource,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
) -> Iterator[Output | AssetCheckResult]:
    """Merge this run's scenes with the others; write the manifest the backend reads."""
    sid, store = script_document.script.script_id, bucket.get_bucket()
    with script_step(context, store, sid):
        manifest = finish(
            script_document,
            [*carried.entries, *(o.entry for o in outcomes)],
            character_portraits,
            planning_providers(prompt_writer, image_maker),
            read_state(store, sid),
        )
        gallery = gallery_markdown(store, sid, manifest.scenes)
    if manifest.offline:
        context.log.warning(manifest.notice or "OFFLINE")
    rows = prompt_rows(manifest.scenes, outcomes)
    yield Output(rows, "scene_prompts", metadata={"scenes": len(rows)})
    yield Output(manifest.scenes, "scene_images", metadata=images_metadata(manifest, gallery))
    yield Output(manifest, "manifest", metadata=manifest_metadata(manifest, carried.stale))
    yield from check_results(manifest, prompt_writer.max_prompt_chars, store)
    # A CLI run's lease is the CLI's to release; a re-execution of one (from the UI) is not
    # the CLI's any more.
    if TAG_LEASE not in context.run.tags or context.run.parent_run_id:
        leases.release(store, sid, lease_token(context))


def prompt_rows(entries: Sequence[SceneEntry], outcomes: Sequence[SceneOutcome]) -> list[dict]:
    status = {o.entry.scene_id: o.prompt_status for o in outcomes}
    return [
        {
            "scene_id": e.scene_id,
            "status": status.get(e.scene_id, "not in this run"),
            "prompt_source": e.prompt_source,
            "image_prompt": e.image_prompt,
            "negative_prompt": e.negative_prompt,
            "characters": e.characters,
            "prompt_hash": e.prompt_hash,
        }
        for e in entries
        if e.status != "removed"
    ]


def images_metadata(manifest: Manifest, gallery: str) -> dict[str, object]:
    counts = {
        f"scenes_{s}": sum(1 for e in manifest.scenes if e.status == s)
        for s in ("succeeded", "failed", "pending", "removed")
    }
    return {**counts, "gallery": MetadataValue.md(gallery)}


def manifest_metadata(manifest: Manifest, stale: Mapping[str, str]) -> dict[str, object]:
    return {
        "status": manifest.status,
        "offline": manifest.offline,
        "characters": len(manifest.characters),
        "scenes": table_metadata(scenes_frame(manifest.scenes)),
        **stale_metadata(stale),
    }


def check_results(manifest: Manifest, cap: int, bucket: Bucket) -> Iterator[AssetCheckResult]:
    found = {
        "all_scenes_succeeded": checks.unfinished_scenes(manifest),
        "prompts_within_cap": checks.prompts_over_cap(manifest, cap),
        "references_exist": checks.missing_references(manifest, bucket),
    }
    for name, problems in found.items():
        yield AssetCheckResult(
            check_name=name,
            asset_key="manifest",
            passed=not problems,
            severity=AssetCheckSeverity.WARN,
            description=f"script {manifest.script_id}: "
            + (", ".join(problems[:20]) if problems else "ok"),
            metadata={"problems": len(problems)},
        )
