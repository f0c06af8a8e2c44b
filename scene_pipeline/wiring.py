"""Which resources a deployment gets: the storage, the providers and the IO managers, chosen
from `Settings` in one place. Secrets are `EnvVar`s: the UI shows their names only."""

from __future__ import annotations

from typing import Any

from dagster import EnvVar

from scene_pipeline.io_managers import JsonIOManager, ManifestIOManager, ScriptDocumentIOManager
from scene_pipeline.resources.bucket import BucketResource, LocalBucketResource
from scene_pipeline.resources.pipeline import PipelineResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    KlingImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
    OpenAIImagesMakerResource,
    OpenAIPromptWriterResource,
    PromptWriterResource,
)
from scene_pipeline.settings import Settings


def build_bucket(settings: Settings) -> BucketResource:
    if settings.storage == "s3":
        from dagster_aws.s3 import S3Resource

        from scene_pipeline.resources.s3_bucket import S3BucketResource

        return S3BucketResource(
            bucket=settings.s3_bucket_name or "",
            s3=S3Resource(region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
        )
    return LocalBucketResource(local_dir=str(settings.local_root))


def build_prompt_writer(settings: Settings) -> PromptWriterResource:
    cap = settings.prompt_max_chars
    if settings.prompt_writer == "offline":
        return OfflinePromptWriterResource(max_prompt_chars=cap)
    return OpenAIPromptWriterResource(
        api_key=EnvVar("OPENAI_API_KEY"),
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        max_prompt_chars=cap,
    )


def build_image_maker(settings: Settings) -> ImageMakerResource:
    references = settings.character_references
    if settings.image_maker == "kling":
        return KlingImageMakerResource(
            access_key=EnvVar("KLING_ACCESS_KEY"),
            secret_key=EnvVar("KLING_SECRET_KEY"),
            base_url=settings.kling_api_base_url,
            model=settings.kling_model,
            reference_model=settings.kling_reference_model,
            task_timeout_seconds=settings.kling_task_timeout_seconds,
            poll_interval_seconds=settings.kling_poll_interval_seconds,
            references=references,
        )
    if settings.image_maker == "openai-images":
        return OpenAIImagesMakerResource(
            api_key=EnvVar(settings.openai_images_key_name or "OPENAI_API_KEY"),
            base_url=settings.openai_images_base_url,
            model=settings.openai_images_model,
            references=references,
        )
    return OfflineImageMakerResource(references=references)


def build_resources(settings: Settings) -> dict[str, Any]:
    """Every resource of the code location, chosen from `settings`."""
    bucket = build_bucket(settings)
    return {
        "bucket": bucket,
        "prompt_writer": build_prompt_writer(settings),
        "image_maker": build_image_maker(settings),
        "pipeline": PipelineResource(
            kling_pool_limit=settings.kling_max_concurrency,
            candidates=settings.candidates,
            redraw_stale=settings.redraw_stale,
        ),
        "io_manager": JsonIOManager(bucket=bucket),
        "script_io_manager": ScriptDocumentIOManager(bucket=bucket),
        "manifest_io_manager": ManifestIOManager(bucket=bucket),
    }
