"""The object-store seam: whole objects by key, in an S3 bucket or a local folder.

Only `Bucket` (storage/bucket.py) and the backends use this interface; everything above the
storage package reads and writes through `Bucket`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime


class StorageError(Exception):
    """A read or write failed for a reason other than a missing object."""


class ObjectNotFound(StorageError):
    """No object at that key."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (create) or changed (replace)."""


class ObjectStore(Protocol):
    """Keys are bucket-relative ('results/4711/manifest.json'); values are whole objects."""

    def get(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the ETag of exactly those bytes.

        Raises:
            ObjectNotFound: no object at `key`.
        """
        ...

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write the whole object at once (readers see old or new bytes, never a mix).

        `if_none_match`: only create; `if_match`: only replace the object with that ETag.

        Returns:
            The new object's ETag.

        Raises:
            PreconditionFailed: a condition did not hold; nothing was written.
        """
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, across all pages."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...

    def uri(self, key: str) -> str:
        """`s3://bucket/key` or `file:///abs/path`: what the manifest shows the backend."""
        ...
