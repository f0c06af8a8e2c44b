"""A local folder that holds the same keys as the bucket: the embedded default.

ETags are made from a file's size, modification time and inode, not its bytes, so that
listing 10,000 files is a walk and a stat each, never a read; a rewrite is a new file (a new
inode) and so a new ETag. Conditional writes are serialised by an advisory lock on one file
in the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from scene_pipeline.storage.base import (
    OCTET,
    Condition,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)

_TMP_PREFIX = ".tmp-"
_LOCK_NAME = ".lock-conditional-writes"


def _etag(stat: os.stat_result) -> str:
    # Every write installs a new file (write, then rename), so the inode tells versions apart
    # even when a coarse file clock gives two of them the same mtime.
    version = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    digest = hashlib.md5(version.encode(), usedforsecurity=False)
    return f'"{digest.hexdigest()}"'


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
            or parts[-1] in ("", ".", "..")
            or parts[-1].startswith((_TMP_PREFIX, _LOCK_NAME))
        ):
            raise StorageError(f"unsafe storage key {key[:200]!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"unsafe storage key {key[:200]!r}")
        return path

    def get(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                return f.read(), _etag(stat)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as err:
            raise StorageError(f"cannot read {key}: {err.strerror}") from err

    def put(
        self, key: str, data: bytes, content_type: str = OCTET, when: Condition | None = None
    ) -> str:
        del content_type  # a folder has no content types
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if when is None:
                return self._replace(path, data)
            with self._locked():
                current = self._etag_of(path)
                if when.absent and current is not None:
                    raise PreconditionFailed(f"{key} exists")
                if when.etag is not None and current != when.etag:
                    raise PreconditionFailed(f"{key} changed")
                etag = self._replace(path, data)
                if etag == current:
                    # A same-size rewrite within one tick of a coarse file clock: move the
                    # mtime on, so that the next conditional writer sees the change.
                    stat = path.stat()
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
                    etag = _etag(path.stat())
                return etag
        except OSError as err:
            raise StorageError(f"cannot write {key}: {err.strerror}") from err

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise StorageError(f"cannot delete {key}: {err.strerror}") from err

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # The prefix may end inside a name ('results/4' matches 'results/47/...'), as in S3.
        directory = prefix.rpartition("/")[0]
        start = self._path(directory + "/x").parent if directory else self.root
        if not start.is_dir():
            return
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            for name in filenames:
                if name.startswith((_TMP_PREFIX, _LOCK_NAME)):
                    continue
                path = os.path.join(dirpath, name)
                key = Path(path).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append((key, os.stat(path)))
                except FileNotFoundError:
                    continue  # removed between walk and stat
        for key, stat in sorted(found, key=lambda item: item[0]):
            yield ObjectInfo(
                key=key,
                etag=_etag(stat),
                size=stat.st_size,
                last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
            )

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _etag_of(path: Path) -> str | None:
        try:
            return _etag(path.stat())
        except FileNotFoundError:
            return None

    @staticmethod
    def _replace(path: Path, data: bytes) -> str:
        # Write then rename, so that a reader never sees half an object (like one S3 PUT).
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            # mkstemp makes the file private (0600); objects are for the backend to read.
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return _etag(path.stat())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock file for the whole folder: conditional writes are rare and short.
        with open(self.root / _LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
