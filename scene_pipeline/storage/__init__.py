"""Where the pipeline's objects live: one object-store seam with two real backends (S3 and a
local folder holding the same keys), the key layout, and `Bucket`, the typed way to them."""

from scene_pipeline.storage.base import (
    Condition,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
)
from scene_pipeline.storage.bucket import Bucket, GenerationRef, StoredTaskJournal
from scene_pipeline.storage.layout import UnsafeKeyError

__all__ = [
    "Bucket",
    "Condition",
    "GenerationRef",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "StorageError",
    "StoredTaskJournal",
    "UnsafeKeyError",
]
