"""The KLING account's limit as the Dagster pool `kling`, claimed by the drawing code itself
(scene_pipeline/resources/slots.py), on a real SQLite instance: a claim that lost its slot row
to another claimer waits its turn, tasks of several candidates never hold part of what they
need while others do, and the pool's limit is KLING_MAX_CONCURRENCY."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dagster import DagsterInstance
from dagster._utils.concurrency import ConcurrencyClaimStatus, ConcurrencySlotStatus

from scene_pipeline.constants import KLING_POOL
from scene_pipeline.resources.slots import PoolSlots, ensure_pool_limit


def instance_at(tmp_path: Path) -> DagsterInstance:
    (tmp_path / "dagster").mkdir(exist_ok=True)
    return DagsterInstance.local_temp(str(tmp_path / "dagster"))


def holders(instance: DagsterInstance) -> list[str]:
    return [
        s.run_id for s in instance.event_log_storage.get_concurrency_info(KLING_POOL).claimed_slots
    ]


def test_the_pool_limit_follows_the_setting_and_says_what_it_was(tmp_path: Path) -> None:
    with instance_at(tmp_path) as instance:
        assert ensure_pool_limit(instance, 3) is None  # there was none
        assert instance.event_log_storage.get_concurrency_info(KLING_POOL).slot_count == 3
        assert ensure_pool_limit(instance, 3) is None  # unchanged
        assert ensure_pool_limit(instance, 2) == 3  # an operator's (or an old) limit is replaced
        assert instance.event_log_storage.get_concurrency_info(KLING_POOL).slot_count == 2


def test_a_claim_that_lost_its_slot_row_to_another_claimer_waits_its_turn(
    tmp_path: Path,
) -> None:
    """On SQLite two processes can write the same free slot row and both be told CLAIMED:
    the loser must see that the row is not its own and queue again."""
    with instance_at(tmp_path) as instance:
        ensure_pool_limit(instance, 1)
        storage = instance.event_log_storage
        first = PoolSlots(instance, "run-a", "scenes.render_scene[1]")
        second = PoolSlots(instance, "run-b", "scenes.render_scene[2]")
        claim = storage.claim_concurrency_slot
        lied = threading.Event()

        def told_claimed_once(pool: str, run_id: str, step_key: str, priority: int = 0):
            if pool == KLING_POOL and run_id == "run-b" and not lied.is_set():
                lied.set()  # the row write "succeeded", but run-a's write landed on it
                return ConcurrencyClaimStatus(
                    concurrency_key=pool, slot_status=ConcurrencySlotStatus.CLAIMED
                )
            return claim(pool, run_id, step_key, priority)

        storage.claim_concurrency_slot = told_claimed_once
        granted = threading.Event()
        overlapped: list[list[str]] = []

        def second_task() -> None:
            with second.hold(1):
                overlapped.append(holders(instance))
                granted.set()

        with first.hold(1):
            waiter = threading.Thread(target=second_task, daemon=True)
            waiter.start()
            assert lied.wait(5)
            time.sleep(0.5)  # give it every chance to go ahead wrongly
            assert not granted.is_set(), "the second task went ahead while the slot was taken"
        assert granted.wait(10), "the second task never got the freed slot"
        waiter.join(5)
    assert overlapped == [["run-b"]]


def test_tasks_of_several_candidates_do_not_deadlock_on_part_of_the_slots(
    tmp_path: Path,
) -> None:
    """Limit 3, four tasks of 2 candidates each, started at once: each must get both of its
    slots in turn (two tasks holding one slot each and waiting for the rest would wait for
    each other for ever), and each task holds both while it runs."""
    with instance_at(tmp_path) as instance:
        ensure_pool_limit(instance, 3)
        done: list[str] = []
        held: list[int] = []

        def task(n: int) -> None:
            slots = PoolSlots(instance, f"run-{n}", f"scenes.render_scene[{n}]")
            with slots.hold(2):
                held.append(holders(instance).count(f"run-{n}"))
                time.sleep(0.2)
            done.append(f"run-{n}")

        threads = [threading.Thread(target=task, args=(n,), daemon=True) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(done) == [f"run-{n}" for n in range(4)], "a task never got its slots"
        assert held == [2, 2, 2, 2]
        assert holders(instance) == []
