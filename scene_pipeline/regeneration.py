"""Which scripts need another run: failed, pending or stale scenes (used by the nightly
schedule and by `scene-pipeline status`).

Stale means a scene's current content hash (its lines, involved characters, style and the
current providers' identities) differs from the hash its image was made for: after a change
of model or prompt-writer version every scene goes stale, which is why the nightly schedule
is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from scene_pipeline.bucket import Bucket
from scene_pipeline.contract.outputs import Manifest
from scene_pipeline.contract.script import Script
from scene_pipeline.hashing import scene_content_hash
from scene_pipeline.providers.base import ProviderIdentity
from scene_pipeline.storage import StorageError


@dataclass(frozen=True)
class ScriptHealth:
    script_id: str
    failed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    never_finished: bool = False
    unreadable: str | None = None

    @property
    def needs_work(self) -> bool:
        return bool(self.failed or self.stale or self.never_finished)

    def reason(self) -> str:
        parts = []
        if self.never_finished:
            parts.append("no manifest yet")
        if self.failed:
            parts.append(f"{len(self.failed)} failed/pending scene(s)")
        if self.stale:
            parts.append(f"{len(self.stale)} stale scene(s)")
        return ", ".join(parts) or "up to date"


def script_health(
    script: Script,
    manifest: Manifest | None,
    prompt_writer: ProviderIdentity,
    image_maker: ProviderIdentity,
) -> ScriptHealth:
    if manifest is None:
        return ScriptHealth(script_id=script.script_id, never_finished=True)
    entries = {e.scene_id: e for e in manifest.scenes}
    failed: list[str] = []
    stale: list[str] = []
    for scene in script.scenes:
        entry = entries.get(scene.scene_id)
        if entry is None or entry.status in ("failed", "pending"):
            failed.append(scene.scene_id)
        elif entry.content_hash != scene_content_hash(script, scene, prompt_writer, image_maker):
            stale.append(scene.scene_id)
    return ScriptHealth(script_id=script.script_id, failed=failed, stale=stale)


def check_scripts(
    bucket: Bucket,
    script_ids: Iterable[str],
    prompt_writer: ProviderIdentity,
    image_maker: ProviderIdentity,
) -> list[ScriptHealth]:
    """Health of every script, reading its accepted copy and manifest concurrently."""

    def check(script_id: str) -> ScriptHealth:
        try:
            accepted = bucket.read_accepted(script_id)
            if accepted is None:
                return ScriptHealth(script_id=script_id, unreadable="no accepted script")
            manifest = bucket.read_manifest(script_id)
        except (StorageError, ValueError) as err:
            return ScriptHealth(script_id=script_id, unreadable=str(err))
        return script_health(accepted.script, manifest, prompt_writer, image_maker)

    ids = sorted(set(script_ids))
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(ids))) as pool:
        return list(pool.map(check, ids))
