"""Which scripts the nightly schedule runs, within a budget of paid images.

A script is due when a run would draw something: failed or pending scenes, changed content,
a corrected look, a replaced portrait. Scenes refused by moderation wait for a content
change; scenes stale only because the configuration changed wait for an operator (or for
SCENE_PIPELINE_REDRAW_STALE). Scripts with failed scenes come first. The night's budget
(SCENE_PIPELINE_NIGHTLY_MAX_IMAGES) counts every image a run would draw, portraits included;
a script with more to draw than the budget has left gets a run for that many of its scenes
(failed ones first), the rest waits for the next night.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from scene_pipeline.contract.outputs import SceneEntry, utc_now
from scene_pipeline.core.assessment import Assessment, NotAccepted, assess, load_view
from scene_pipeline.core.planning import Selection
from scene_pipeline.core.planning_inputs import Providers
from scene_pipeline.storage import Bucket, StorageError


@dataclass(frozen=True)
class ScriptNeeds:
    script_id: str
    failed: list[str] = field(default_factory=list)  # due scenes that failed or are pending
    other: list[str] = field(default_factory=list)  # due for another reason (content changed)
    portraits: int = 0
    stale: int = 0
    refused: int = 0
    unreadable: str | None = None

    @property
    def images(self) -> int:
        return self.portraits + len(self.failed) + len(self.other)

    def reason(self) -> str:
        parts = []
        if self.failed:
            parts.append(f"{len(self.failed)} failed/pending scene(s)")
        if self.other:
            parts.append(f"{len(self.other)} changed scene(s)")
        if self.portraits:
            parts.append(f"{self.portraits} portrait(s)")
        return ", ".join(parts) or "nothing to draw"


@dataclass(frozen=True)
class NightlyRequest:
    script_id: str
    scene_ids: list[str]  # empty: every due scene
    images: int
    reason: str


def needs_of(script_id: str, found: Assessment, previous: dict[str, SceneEntry]) -> ScriptNeeds:
    failed, other = [], []
    for plan in found.scenes.to_render:
        sid = plan.scene.scene_id
        last = previous.get(sid)
        (failed if last is None or last.status in ("failed", "pending") else other).append(sid)
    return ScriptNeeds(
        script_id=script_id,
        failed=failed,
        other=other,
        portraits=len(found.portraits.to_draw),
        stale=len(found.scenes.stale),
        refused=len(found.scenes.refused),
    )


def check_scripts(
    bucket: Bucket, script_ids: Iterable[str], providers: Providers, refresh_stale: bool
) -> list[ScriptNeeds]:
    """What each script needs, reading its state concurrently."""

    def check(script_id: str) -> ScriptNeeds:
        try:
            view = load_view(bucket, script_id)
            found = assess(
                bucket,
                view,
                providers,
                Selection(refresh_stale=refresh_stale),
                run_id="nightly",
                now=utc_now(),
            )
        except (StorageError, NotAccepted, ValueError) as err:
            return ScriptNeeds(script_id=script_id, unreadable=str(err))
        previous = {e.scene_id: e for e in view.manifest.scenes} if view.manifest else {}
        return needs_of(script_id, found, previous)

    ids = sorted(set(script_ids))
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        return list(pool.map(check, ids))


def plan_night(needs: list[ScriptNeeds], max_runs: int, max_images: int) -> list[NightlyRequest]:
    """Failed first, within the runs and images budgets."""
    due = sorted(
        (n for n in needs if n.images and not n.unreadable),
        key=lambda n: (not n.failed, n.script_id),
    )
    requests: list[NightlyRequest] = []
    left = max_images
    for item in due:
        if len(requests) >= max_runs or left <= 0:
            break
        if item.images <= left:
            requests.append(NightlyRequest(item.script_id, [], item.images, item.reason()))
            left -= item.images
            continue
        scenes_left = left - item.portraits
        if scenes_left <= 0:
            continue  # not even its portraits fit: next night
        chosen = [*item.failed, *item.other][:scenes_left]
        requests.append(
            NightlyRequest(
                item.script_id,
                chosen,
                item.portraits + len(chosen),
                f"{item.reason()}; {len(chosen)} scene(s) tonight (image budget)",
            )
        )
        left -= item.portraits + len(chosen)
    return requests
