"""The object-store interface that every reader and writer of the bucket uses."""

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


class ObjectStore(Protocol):
    """Keys are bucket-relative ('results/4711/manifest.json'); values are whole objects."""

    def get(self, key: str) -> bytes:
        """Raises ObjectNotFound if there is no object at `key`."""
        ...

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Writes the whole object at once: readers see the old or the new bytes, never a mix."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Returns None if there is no object at `key`."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, across all pages."""
        ...

    def uri(self, key: str) -> str:
        """`s3://bucket/key` or `file:///abs/path`: what the manifest shows the backend."""
        ...


def get_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except ObjectNotFound:
        return None
