"""Typed reads and writes of everything the pipeline keeps in the bucket (or local folder)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from scene_pipeline.contract.outputs import GenerationRecord, Manifest, RejectionReport
from scene_pipeline.models import AcceptedScript, CharacterSheet, ScenePrompt
from scene_pipeline.storage import ObjectNotFound, ObjectStore, StorageError, get_or_none, layout

M = TypeVar("M", bound=BaseModel)
JSON = "application/json"


@dataclass(frozen=True)
class GenerationRef:
    """A generation found by listing: enough to decide reuse without reading the record."""

    scene_id: str
    generation: str
    content_hash: str
    record_key: str
    has_image: bool


class Bucket:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- generic ------------------------------------------------------------------------------

    def _read(self, key: str, model: type[M]) -> M | None:
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            return None
        try:
            return model.model_validate_json(data)
        except ValidationError as err:
            raise StorageError(
                f"{key} is not a valid {model.__name__}: {err.error_count()} errors"
            ) from None

    def _write(self, key: str, value: BaseModel) -> None:
        self.store.put(key, value.model_dump_json(indent=2).encode(), JSON)

    # -- scripts ------------------------------------------------------------------------------

    def read_accepted(self, script_id: str) -> AcceptedScript | None:
        return self._read(layout.accepted_script_key(script_id), AcceptedScript)

    def write_accepted(self, accepted: AcceptedScript) -> None:
        self._write(layout.accepted_script_key(accepted.script.script_id), accepted)

    def write_rejection(self, key: str, report: RejectionReport) -> None:
        self._write(key, report)

    # -- caches of paid calls -----------------------------------------------------------------

    def read_character_sheet(self, script_id: str, input_hash: str) -> CharacterSheet | None:
        return self._read(layout.character_sheet_key(script_id, input_hash), CharacterSheet)

    def write_character_sheet(self, sheet: CharacterSheet) -> None:
        self._write(layout.character_sheet_key(sheet.script_id, sheet.input_hash), sheet)

    def read_prompt(self, script_id: str, scene_id: str, content_hash: str) -> ScenePrompt | None:
        return self._read(layout.prompt_key(script_id, scene_id, content_hash), ScenePrompt)

    def write_prompt(self, prompt: ScenePrompt) -> None:
        plan = prompt.plan
        self._write(
            layout.prompt_key(plan.script_id, plan.scene.scene_id, plan.content_hash), prompt
        )

    # -- run-wide stop after an account error ----------------------------------------------

    def read_account_stop(self, run_id: str) -> str | None:
        """Why this run stopped calling a provider, if it did."""
        data = get_or_none(self.store, layout.account_stop_key(run_id))
        if data is None:
            return None
        try:
            return str(json.loads(data)["reason"])
        except (ValueError, KeyError, TypeError):
            return "an account error earlier in this run"

    def write_account_stop(self, run_id: str, reason: str) -> None:
        self.store.put(
            layout.account_stop_key(run_id), json.dumps({"reason": reason}).encode(), JSON
        )

    # -- results ------------------------------------------------------------------------------

    def read_manifest(self, script_id: str) -> Manifest | None:
        return self._read(layout.manifest_key(script_id), Manifest)

    def write_manifest(self, manifest: Manifest) -> str:
        """One PUT of the whole manifest; returns its URI."""
        key = layout.manifest_key(manifest.script_id)
        self._write(key, manifest)
        return self.store.uri(key)

    def list_generations(
        self, script_id: str, scene_id: str | None = None
    ) -> dict[str, list[GenerationRef]]:
        """Generations per scene, oldest first, found with one paginated listing."""
        prefix = layout.scenes_prefix(script_id)
        if scene_id is not None:
            prefix += layout.scene_segment(scene_id) + "/"
        names: dict[tuple[str, str], set[str]] = defaultdict(set)
        for info in self.store.list(prefix):
            parsed = layout.parse_generation_key(info.key, script_id)
            if parsed:
                scene, generation, suffix = parsed
                names[(scene, generation)].add(suffix)
        found: dict[str, list[GenerationRef]] = defaultdict(list)
        for (scene, generation), suffixes in sorted(names.items()):
            if ".json" not in suffixes:
                continue  # an image without its record was never finished: not a generation
            content_hash = generation.split("-")[1] if generation.count("-") >= 1 else ""
            found[scene].append(
                GenerationRef(
                    scene_id=scene,
                    generation=generation,
                    content_hash=content_hash,
                    record_key=layout.generation_key(script_id, scene, generation, ".json"),
                    has_image=".png" in suffixes,
                )
            )
        return found

    def read_records(self, keys: Iterable[str]) -> list[GenerationRecord]:
        """Read several generation records concurrently (S3 GETs are latency-bound)."""
        keys = list(keys)
        if not keys:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            records = list(pool.map(lambda k: self._read(k, GenerationRecord), keys))
        return [r for r in records if r is not None]

    def write_generation(self, record: GenerationRecord, png: bytes) -> None:
        """The PNG first, then its record: a record always names an image that exists."""
        self.store.put(record.image_key, png, "image/png")
        self._write(
            layout.generation_key(record.script_id, record.scene_id, record.generation, ".json"),
            record,
        )

    def image_uri(self, script_id: str, scene_id: str, generation: str) -> tuple[str, str]:
        key = layout.generation_key(script_id, scene_id, generation, ".png")
        return key, self.store.uri(key)


class StoredTaskJournal:
    """A `TaskJournal` kept in the bucket: survives killed processes and new runs."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.key = key

    def load(self) -> dict[str, str] | None:
        try:
            value = json.loads(self.store.get(self.key))
        except (ObjectNotFound, ValueError):
            return None
        return value if isinstance(value, dict) and value.get("state") != "done" else None

    def save(self, entry: dict[str, str]) -> None:
        self.store.put(self.key, json.dumps(entry).encode(), JSON)

    def clear(self) -> None:
        # Object stores have no cheap delete semantics we rely on; mark the entry as done.
        self.save({"state": "done"})
