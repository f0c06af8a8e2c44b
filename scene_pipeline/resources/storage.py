"""Where the pipeline's objects live: an S3 bucket, or a local folder with the same keys."""

from abc import ABC, abstractmethod

from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from scene_pipeline.bucket import Bucket
from scene_pipeline.constants import DEFAULT_LOCAL_DIR
from scene_pipeline.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from scene_pipeline.urls import redacted_url


class StorageResource(ConfigurableResource, ABC):
    """The object store every asset, IO manager, sensor and schedule reads and writes."""

    _store: ObjectStore | None = PrivateAttr(default=None)

    @abstractmethod
    def _make_store(self) -> ObjectStore: ...

    @abstractmethod
    def describe(self) -> str: ...

    def get_store(self) -> ObjectStore:
        if self._store is None:
            self._store = self._make_store()
        return self._store

    def get_bucket(self) -> Bucket:
        return Bucket(self.get_store())


class LocalStorageResource(StorageResource):
    """A local folder holding the bucket's keys: the embedded default when S3 is not set."""

    local_dir: str = Field(
        default=DEFAULT_LOCAL_DIR,
        description="Folder that holds the same keys as the bucket (SCENE_PIPELINE_LOCAL_DIR).",
    )

    def _make_store(self) -> ObjectStore:
        return LocalObjectStore(self.local_dir)

    def describe(self) -> str:
        return f"local folder {LocalObjectStore(self.local_dir).root}"


class S3StorageResource(StorageResource):
    """An S3 bucket (AWS, MinIO or moto), through dagster-aws's S3Resource."""

    s3: ResourceDependency[S3Resource]
    bucket: str = Field(description="Bucket name (S3_BUCKET_NAME).")

    def _make_store(self) -> ObjectStore:
        # S3Resource's client retries throttling and 5xx (max_attempts) before we see an error.
        return S3ObjectStore(self.s3.get_client(), self.bucket)

    def describe(self) -> str:
        return f"S3 bucket s3://{self.bucket} at {redacted_url(self.s3.endpoint_url, 'AWS')}"
