"""`Bucket`: typed reads and writes of everything the pipeline keeps in the bucket (or local
folder). The only way to the object store above the storage package."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from scene_pipeline.contract.outputs import Manifest, RejectionReport
from scene_pipeline.storage import layout
from scene_pipeline.storage.base import (
    Condition,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
)

M = TypeVar("M", bound=BaseModel)
JSON = "application/json"
# S3 GETs are latency-bound: a few at once keep reads of many small objects short.
READ_WORKERS = 16
# Attempts of a read-modify-write that keeps losing to concurrent writers.
CAS_ATTEMPTS = 8


@dataclass(frozen=True)
class GenerationRef:
    """A generation found by listing: enough to decide reuse without reading the record."""

    subject_id: str
    generation: str
    content_hash: str
    record_key: str
    image_keys: tuple[str, ...]


class Bucket:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def uri(self, key: str) -> str:
        return self._store.uri(key)

    # -- generic ------------------------------------------------------------------------------

    def read_model(self, key: str, model: type[M]) -> M | None:
        """The object at `key` as `model`; None when there is none.

        Raises:
            StorageError: the read failed, or the object is not a valid `model`.
        """
        try:
            data, _ = self._store.get(key)
        except ObjectNotFound:
            return None
        return _parse(key, data, model)

    def read_model_versioned(self, key: str, model: type[M]) -> tuple[M | None, str | None]:
        """(value, ETag) for a later conditional write; (None, None) when absent."""
        try:
            data, etag = self._store.get(key)
        except ObjectNotFound:
            return None, None
        return _parse(key, data, model), etag

    def write_model(self, key: str, value: BaseModel, when: Condition | None = None) -> str:
        return self._store.put(key, value.model_dump_json(indent=1).encode(), JSON, when)

    def update_model(self, key: str, model: type[M], change: Callable[[M | None], M]) -> M:
        """Read-modify-write with a conditional PUT, retried when another writer won."""
        for _ in range(CAS_ATTEMPTS):
            current, etag = self.read_model_versioned(key, model)
            updated = change(current)
            try:
                self.write_model(key, updated, Condition.matching(etag))
                return updated
            except PreconditionFailed:
                continue
        raise StorageError(f"{key} kept changing under {CAS_ATTEMPTS} concurrent updates")

    def read_models(self, keys: Iterable[str], model: type[M]) -> dict[str, M]:
        """Several objects at once; missing ones are left out."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(keys))) as pool:
            values = list(pool.map(lambda k: self.read_model(k, model), keys))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def read_bytes(self, key: str) -> bytes:
        """Raises ObjectNotFound when absent."""
        return self._store.get(key)[0]

    def read_bytes_if_present(self, key: str) -> bytes | None:
        try:
            return self._store.get(key)[0]
        except ObjectNotFound:
            return None

    def read_many_bytes(self, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(keys))) as pool:
            values = list(pool.map(self.read_bytes_if_present, keys))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def write_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._store.put(key, data, content_type)

    def delete(self, key: str) -> None:
        self._store.delete(key)

    def put_if_absent(self, key: str, value: BaseModel) -> bool:
        """Create `key` unless it exists; False when it did."""
        try:
            self.write_model(key, value, Condition(absent=True))
            return True
        except PreconditionFailed:
            return False

    def replace_if_unchanged(self, key: str, value: BaseModel, etag: str) -> bool:
        try:
            self.write_model(key, value, Condition(etag=etag))
            return True
        except PreconditionFailed:
            return False

    # -- listings -----------------------------------------------------------------------------

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._store.list(prefix)

    def read_object(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and the ETag of those bytes (inbox objects)."""
        return self._store.get(key)

    def list_generations(self, script_id: str, kind: str) -> dict[str, list[GenerationRef]]:
        """Generations per scene (kind "scenes") or character ("characters"), oldest first,
        found with one paginated listing. An image without its record was never finished."""
        prefix = layout.subjects_prefix(script_id, kind)
        names: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for info in self._store.list(prefix):
            parsed = layout.parse_generation_key(info.key, prefix)
            if parsed:
                subject_id, generation, suffix = parsed
                names[(subject_id, generation)][suffix] = info.key
        found: dict[str, list[GenerationRef]] = defaultdict(list)
        for (subject_id, generation), files in sorted(names.items()):
            images = tuple(files[s] for s in sorted(files) if s.endswith(".png"))
            if ".json" not in files or not images:
                continue
            found[subject_id].append(
                GenerationRef(
                    subject_id=subject_id,
                    generation=generation,
                    content_hash=generation.split("-")[1],
                    record_key=files[".json"],
                    image_keys=images,
                )
            )
        return found

    # -- small documents ----------------------------------------------------------------------

    def read_manifest(self, script_id: str) -> Manifest | None:
        return self.read_model(layout.manifest_key(script_id), Manifest)

    def write_rejection(self, key: str, report: RejectionReport) -> None:
        self.write_model(key, report)

    def read_account_stop(self, run_id: str, role: str) -> str | None:
        """Why this run stopped calling a provider, if it did."""
        data = self.read_bytes_if_present(layout.account_stop_key(run_id, role))
        if data is None:
            return None
        try:
            return str(json.loads(data)["reason"])
        except (ValueError, KeyError, TypeError):
            return "an account error earlier in this run"

    def write_account_stop(self, run_id: str, role: str, reason: str) -> None:
        self._store.put(
            layout.account_stop_key(run_id, role), json.dumps({"reason": reason}).encode(), JSON
        )


class StoredTaskJournal:
    """A `TaskJournal` kept in the bucket: survives killed processes and new runs.

    `generation`: entries name the generation that made them. With `own_only` (a forced
    redraw), an unfinished task of another generation is not resumed: a new one is paid for,
    as the operator asked.
    """

    def __init__(self, bucket: Bucket, key: str, generation: str, *, own_only: bool) -> None:
        self._bucket = bucket
        self._key = key
        self._generation = generation
        self._own_only = own_only

    def load(self) -> dict[str, str] | None:
        data = self._bucket.read_bytes_if_present(self._key)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            return None
        if not isinstance(value, dict) or value.get("state") == "done":
            return None
        if self._own_only and value.get("generation") != self._generation:
            return None
        return {str(k): str(v) for k, v in value.items()}

    def save(self, entry: dict[str, str]) -> None:
        self._bucket.write_bytes(
            self._key, json.dumps({**entry, "generation": self._generation}).encode(), JSON
        )

    def clear(self) -> None:
        self._bucket.delete(self._key)


def _parse(key: str, data: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as err:
        raise StorageError(
            f"{key} is not a valid {model.__name__}: {err.error_count()} errors"
        ) from None
