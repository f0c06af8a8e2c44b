"""One object-store seam with two real backends: S3 and a local folder holding the same keys."""

from scene_pipeline.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    get_or_none,
)
from scene_pipeline.storage.local import LocalObjectStore
from scene_pipeline.storage.s3 import S3ObjectStore

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3ObjectStore",
    "StorageError",
    "get_or_none",
]
