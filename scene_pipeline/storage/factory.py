"""The bucket the settings name, without Dagster: for the CLI's commands that read or write
objects but start no run (status, pick, submit, the up-to-date check)."""

from __future__ import annotations

from scene_pipeline.settings import Settings
from scene_pipeline.storage.bucket import Bucket
from scene_pipeline.storage.local import LocalObjectStore


def open_bucket(settings: Settings) -> Bucket:
    if settings.storage == "s3":
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            # The same retries as dagster-aws's S3Resource (throttling and 5xx).
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        from scene_pipeline.storage.s3 import S3ObjectStore

        return Bucket(S3ObjectStore(client, settings.s3_bucket_name or ""))
    return Bucket(LocalObjectStore(settings.local_root))
