"""The `bucket` resource on S3 (AWS, MinIO or moto), through dagster-aws's S3Resource.

A module of its own: dagster-aws is imported only by code locations that use S3.
"""

from dagster import ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field

from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.storage import Bucket
from scene_pipeline.storage.s3 import S3ObjectStore


class S3BucketResource(BucketResource):
    """An S3 bucket (S3_BUCKET_NAME)."""

    s3: ResourceDependency[S3Resource]
    bucket: str = Field(description="Bucket name (S3_BUCKET_NAME).")

    def _make_bucket(self) -> Bucket:
        # S3Resource's client retries throttling and 5xx before we see an error.
        return Bucket(S3ObjectStore(self.s3.get_client(), self.bucket))
