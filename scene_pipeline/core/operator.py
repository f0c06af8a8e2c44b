"""What operators decided about a script: prompt overrides, picks among candidates, pinned
portraits and portrait redraws. Kept at `pipeline/operator/{script_id}.json`, updated with
conditional writes so that two operators (or an operator and a run) never lose each other's
changes. Runs read it; later runs, re-drops and the nightly schedule keep honouring it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.storage import Bucket
from scene_pipeline.storage.layout import operator_key


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Stamp(_Model):
    """Who changed something, and when (from run tags, the CLI's user or `--note`)."""

    at: datetime
    by: str = ""
    note: str = ""


class PromptOverride(_Model):
    prompt: str
    stamp: Stamp


class Pick(_Model):
    """Candidate `picked` (from 1) of the scene's generation `generation`."""

    generation: str
    picked: int = Field(ge=1)
    stamp: Stamp


class PinnedPortrait(_Model):
    """An uploaded portrait, pinned: never redrawn automatically."""

    name: str
    generation: str
    content_hash: str
    image_key: str
    stamp: Stamp


class OperatorState(_Model):
    overrides: dict[str, PromptOverride] = Field(default_factory=dict)
    picks: dict[str, Pick] = Field(default_factory=dict)
    pinned_portraits: dict[str, PinnedPortrait] = Field(
        default_factory=dict, description="character_key -> pinned portrait"
    )
    portrait_redraws: dict[str, Stamp] = Field(
        default_factory=dict,
        description="character_key -> request to draw a new portrait at the next run",
    )


def read_state(bucket: Bucket, script_id: str) -> OperatorState:
    return bucket.read_model(operator_key(script_id), OperatorState) or OperatorState()


def update_state(
    bucket: Bucket, script_id: str, change: Callable[[OperatorState], OperatorState]
) -> OperatorState:
    """Apply `change` to the current state, safely against concurrent writers."""
    return bucket.update_model(
        operator_key(script_id), OperatorState, lambda current: change(current or OperatorState())
    )


def stamp(by: str = "", note: str = "") -> Stamp:
    return Stamp(at=utc_now(), by=by[:200], note=note[:500])


def with_override(
    state: OperatorState, scene_id: str, override: PromptOverride | None
) -> OperatorState:
    overrides = dict(state.overrides)
    if override is None:
        overrides.pop(scene_id, None)
    else:
        overrides[scene_id] = override
    return state.model_copy(update={"overrides": overrides})


def with_pick(state: OperatorState, scene_id: str, pick: Pick) -> OperatorState:
    return state.model_copy(update={"picks": {**state.picks, scene_id: pick}})


def with_pinned_portrait(state: OperatorState, key: str, pinned: PinnedPortrait) -> OperatorState:
    redraws = {k: v for k, v in state.portrait_redraws.items() if k != key}
    return state.model_copy(
        update={
            "pinned_portraits": {**state.pinned_portraits, key: pinned},
            "portrait_redraws": redraws,
        }
    )


def with_portrait_redraw(state: OperatorState, key: str, when: Stamp) -> OperatorState:
    pinned = {k: v for k, v in state.pinned_portraits.items() if k != key}
    return state.model_copy(
        update={
            "pinned_portraits": pinned,
            "portrait_redraws": {**state.portrait_redraws, key: when},
        }
    )


def without_portrait_redraws(state: OperatorState, done: set[str]) -> OperatorState:
    return state.model_copy(
        update={
            "portrait_redraws": {k: v for k, v in state.portrait_redraws.items() if k not in done}
        }
    )
