"""The KLING account's parallel-task limit across every run and process: the Dagster pool
`kling`, claimed by the drawing code itself rather than per step.

Why not `@op(pool="kling")`: a pool slot is one per step, held for the whole step. A scene's
step first writes its prompt (seconds of OpenAI latency during which KLING would sit idle) and
a task of n candidates holds n of the account's slots. So the step claims exactly n slots of
the same pool, only around the paid task, through the instance's own concurrency storage:
the slots are Dagster's (Deployment > Concurrency shows who holds them, a run that ends frees
its slots as it would for op pools), the accounting is exact, and the next scene's step is
already started and waiting when a slot frees.

The pool's limit is KLING_MAX_CONCURRENCY (`ensure_pool_limit`): one setting drives both.

A step that needs several slots claims them one by one while holding the gate pool
`kling_claims` (limit 1): two steps that each hold part of what they need and wait for the
rest would otherwise wait for each other for ever.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from scene_pipeline.constants import KLING_POOL

CLAIM_GATE_POOL = "kling_claims"

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1


def ensure_pool_limit(instance: Any, limit: int) -> int | None:
    """Make the `kling` pool's limit `limit` (and the claim gate's 1); returns the previous
    limit when it differed."""
    storage = instance.event_log_storage
    if _limit_of(storage, CLAIM_GATE_POOL) != 1:
        storage.set_concurrency_slots(CLAIM_GATE_POOL, 1)
    current = _limit_of(storage, KLING_POOL)
    if current == limit:
        return None
    storage.set_concurrency_slots(KLING_POOL, limit)
    return current


def _limit_of(storage: Any, pool: str) -> int | None:
    if pool not in storage.get_concurrency_keys():
        return None
    return storage.get_concurrency_info(pool).slot_count


class PoolSlots:
    """A `SlotGate` on the instance's `kling` pool, for one step of one run.

    Args:
        instance: the DagsterInstance.
        run_id, step_key: who holds the slots (shown in the UI).
        priority: higher first among waiting claims (then oldest first).

    Several threads of one step may hold slots at once (the plan step draws portraits in
    parallel): every `hold` claims under keys of its own.
    """

    def __init__(
        self,
        instance: Any,
        run_id: str,
        step_key: str,
        *,
        priority: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._storage = instance.event_log_storage
        self._run_id = run_id
        self._step_key = step_key
        self._priority = priority
        self._sleep = sleep

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        holder = f"{self._step_key}#{uuid.uuid4().hex[:8]}"
        gate = f"{holder}#gate"
        keys = [f"{holder}#slot{i}" for i in range(1, count + 1)]
        try:
            self._claim(CLAIM_GATE_POOL, gate)
            try:
                for key in keys:
                    self._claim(KLING_POOL, key)
            finally:
                self._storage.free_concurrency_slot_for_step(self._run_id, gate)
            yield
        finally:
            # Frees claimed slots and removes claims still waiting in the queue.
            for key in keys:
                self._storage.free_concurrency_slot_for_step(self._run_id, key)

    def _claim(self, pool: str, key: str) -> None:
        """Claim one slot of `pool` for `key`, waiting in the pool's queue.

        Two gaps of the SQL storage's claim are closed here: on SQLite two processes can
        write the same free slot row (there are no row locks), so a claim is confirmed by
        reading the pool back; and a slot freed while a claim is being queued is handed to
        nobody, so a waiting claim hands free slots to the queue itself."""
        waited = 0.0
        while True:
            status = self._storage.claim_concurrency_slot(pool, self._run_id, key, self._priority)
            if status.is_claimed:
                if self._holds(pool, key):
                    if waited:
                        logger.info("%s slot claimed after %.1f s", pool, waited)
                    return
                # Another claimer took the same row: leave the queue and join it again.
                self._storage.free_concurrency_slot_for_step(self._run_id, key)
                continue
            if not status.is_assigned and self._storage.has_unassigned_slots(pool):
                self._storage.assign_pending_steps([pool])
                continue
            self._sleep(POLL_SECONDS)
            waited += POLL_SECONDS

    def _holds(self, pool: str, key: str) -> bool:
        info = self._storage.get_concurrency_info(pool)
        return any(s.run_id == self._run_id and s.step_key == key for s in info.claimed_slots)
