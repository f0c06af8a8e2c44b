"""The `bucket` resource: where every asset, IO manager, sensor and schedule reads and writes.

No `from __future__ import annotations` here: Dagster reads the field annotations at class
creation to build the config schema, and string annotations break that.
"""

from abc import ABC, abstractmethod

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from scene_pipeline.storage import Bucket
from scene_pipeline.storage.local import LocalObjectStore


class BucketResource(ConfigurableResource, ABC):
    """Typed access to the pipeline's objects (an S3 bucket, or a local folder)."""

    _bucket: Bucket | None = PrivateAttr(default=None)

    @abstractmethod
    def _make_bucket(self) -> Bucket: ...

    def get_bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = self._make_bucket()
        return self._bucket


class LocalBucketResource(BucketResource):
    """A local folder holding the bucket's keys: the embedded default when S3 is not set."""

    local_dir: str = Field(
        description="Folder that holds the same keys as the bucket (SCENE_PIPELINE_LOCAL_DIR)."
    )

    def _make_bucket(self) -> Bucket:
        return Bucket(LocalObjectStore(self.local_dir))
