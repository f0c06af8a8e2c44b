"""Helpers that run the real assets on a real Dagster instance, with chosen resources."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, build_schedule_context, materialize

from scene_pipeline.assets import all_assets
from scene_pipeline.constants import SCRIPT_PARTITIONS_NAME
from scene_pipeline.contract.outputs import Manifest, SourceRef, utc_now
from scene_pipeline.contract.script_parsing import parse_script
from scene_pipeline.core.intake import accepted_script, store_accepted
from scene_pipeline.io_managers import JsonIOManager, ManifestIOManager, ScriptDocumentIOManager
from scene_pipeline.jobs import build_scene_job
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.pipeline import PipelineResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
    PromptWriterResource,
)
from scene_pipeline.resources.slots import ensure_pool_limit
from scene_pipeline.schedules import build_nightly_schedule
from scene_pipeline.settings import Settings
from scene_pipeline.storage import Bucket


def accept(bucket: BucketResource, document: Any, instance: DagsterInstance) -> str:
    """What the sensor and the CLI do before a run: store the accepted copy, add the partition."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    script, shape = parse_script(data)
    store_accepted(
        bucket.get_bucket(),
        accepted_script(script, shape, SourceRef(key="test"), utc_now()),
        keep_newer=False,
    )
    if not instance.has_dynamic_partition(SCRIPT_PARTITIONS_NAME, script.script_id):
        instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, [script.script_id])
    return script.script_id


def resources(
    bucket: BucketResource,
    image_maker: ImageMakerResource | None = None,
    prompt_writer: PromptWriterResource | None = None,
    pipeline: PipelineResource | None = None,
) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "prompt_writer": prompt_writer or OfflinePromptWriterResource(),
        "image_maker": image_maker or OfflineImageMakerResource(long_side=480),
        "pipeline": pipeline or PipelineResource(),
        "io_manager": JsonIOManager(bucket=bucket),
        "script_io_manager": ScriptDocumentIOManager(bucket=bucket),
        "manifest_io_manager": ManifestIOManager(bucket=bucket),
    }


def plan_config(**config: Any) -> dict[str, Any]:
    """Run config of scene_job's first step (scene selection, overrides, picks, ...)."""
    return {"ops": {"scenes": {"ops": {"plan_script": {"config": config}}}}}


def run_script(
    instance: DagsterInstance,
    bucket: BucketResource,
    script_id: str,
    *,
    image_maker: ImageMakerResource | None = None,
    prompt_writer: PromptWriterResource | None = None,
    pipeline: PipelineResource | None = None,
    expect_success: bool = True,
    **config: Any,
) -> Manifest:
    """Materialize every asset of one partition in-process (the CLI's small-run path)."""
    ensure_pool_limit(instance, (pipeline or PipelineResource()).kling_pool_limit)
    result = materialize(
        all_assets,
        partition_key=script_id,
        instance=instance,
        resources=resources(bucket, image_maker, prompt_writer, pipeline),
        run_config=plan_config(**config),
        raise_on_error=False,
        selection=[a for a in all_assets if hasattr(a, "node_def")],
    )
    assert result.success is expect_success, result
    manifest = bucket.get_bucket().read_manifest(script_id)
    assert manifest is not None
    return manifest


def keys(bucket: Bucket, prefix: str) -> list[str]:
    return [info.key for info in bucket.list(prefix)]


def png_size(data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as image:
        image.verify()
    with Image.open(BytesIO(data)) as image:
        return image.size


def example(name: str) -> Any:
    return json.loads((Path(__file__).resolve().parents[1] / "examples" / name).read_text("utf-8"))


SCHEDULE_RESOURCES = ("bucket", "prompt_writer", "image_maker", "pipeline")
# 18:00 UTC on the 25th is 03:00 on the 26th in Seoul: the default schedule's tick.
NIGHT = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)


def nightly_tick(
    instance: DagsterInstance,
    settings: Settings,
    resources: dict[str, Any],
    when: datetime = NIGHT,
) -> Any:
    """One tick of the nightly schedule, built from `settings` and evaluated with `resources`
    as definitions.py builds them."""
    job = build_scene_job(settings.kling_max_concurrency)
    schedule = build_nightly_schedule(settings, job)
    repository = Definitions(
        assets=all_assets, jobs=[job], schedules=[schedule], resources=resources
    ).get_repository_def()
    with build_schedule_context(
        instance=instance,
        repository_def=repository,
        scheduled_execution_time=when,
        resources={k: resources[k] for k in SCHEDULE_RESOURCES},
    ) as context:
        return schedule.evaluate_tick(context)
