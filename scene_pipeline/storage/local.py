"""A local folder that holds the same keys as the bucket: the embedded default."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from scene_pipeline.storage.base import ObjectInfo, ObjectNotFound, StorageError

_TMP_PREFIX = ".tmp-"


class LocalObjectStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        # Keys are built from validated ids, but a key is never trusted to stay in the folder.
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\x00" in key
            or any(p in ("", ".", "..") for p in parts[:-1])
            or parts[-1] in (".", "..")
        ):
            raise StorageError(f"unsafe storage key {key[:200]!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"unsafe storage key {key[:200]!r}")
        return path

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as err:
            raise StorageError(f"cannot read {key}: {err.strerror}") from err

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        del content_type  # a folder has no content types
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so that a reader never sees half an object (like one S3 PUT).
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            raise StorageError(f"cannot write {key}: {err.strerror}") from err

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return self._info(key, path)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # The prefix may end inside a name ('results/4' matches 'results/47/...'), as in S3.
        directory = prefix.rpartition("/")[0]
        start = self._path(directory + "/x").parent if directory else self.root
        if not start.is_dir():
            return
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append((key, path))
        for key, path in sorted(found):
            try:
                yield self._info(key, path)
            except FileNotFoundError:
                continue  # removed between walk and stat

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        # S3's ETag of a single-part upload is the quoted MD5 of the bytes; do the same.
        etag = '"' + hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() + '"'
        return ObjectInfo(
            key=key,
            etag=etag,
            size=stat.st_size,
            last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
        )
