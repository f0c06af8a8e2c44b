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


OCTET = "application/octet-stream"


@dataclass(frozen=True)
class Condition:
    """A conditional write (S3's If-None-Match: * and If-Match): create the object only if
    it is `absent`, or replace it only if its ETag is still `etag`."""

    absent: bool = False
    etag: str | None = None

    @classmethod
    def matching(cls, etag: str | None) -> Condition:
        """Replace the object with this ETag; None: create it (it was absent when read)."""
        return cls(absent=etag is None, etag=etag)


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
        self, key: str, data: bytes, content_type: str = OCTET, when: Condition | None = None
    ) -> str:
        """Write the whole object at once (readers see old or new bytes, never a mix), only
        `when` the condition holds. Returns the new object's ETag.

        Raises:
            PreconditionFailed: the condition did not hold; nothing was written.
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
