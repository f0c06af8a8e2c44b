"""What a failure means, the same in every asset (sheet, portraits, scenes):

| error                     | not the last attempt        | last attempt                   |
|---------------------------|-----------------------------|--------------------------------|
| TransientProviderError    | raise: RetryPolicy retries  | the item fails ("gave up ...") |
| StorageError              | raise: RetryPolicy retries  | the item fails                 |
| SceneRejectedError        | the item fails at once; `refused` ones wait for a content change |
| AccountError              | the item fails; the run stops calling that provider (account stop) |
| anything else (our bug)   | raise: the step fails, the run is red; never a quiet failed item |

The client under each provider has already retried transient HTTP errors within its own
budget; the step's RetryPolicy is the second and last owner (no other layer loops).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from scene_pipeline.providers.base import SlotGate
from scene_pipeline.providers.errors import (
    AccountError,
    SceneRejectedError,
    TransientProviderError,
)
from scene_pipeline.storage import Bucket, StorageError

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """Where a step is in its RetryPolicy (Dagster's `context.retry_number`)."""

    run_id: str
    retry_number: int
    max_retries: int

    @property
    def last(self) -> bool:
        return self.retry_number >= self.max_retries

    @property
    def count(self) -> int:
        return self.retry_number + 1


@dataclass(frozen=True)
class Failed:
    """An item that failed for good in this run."""

    message: str
    refused: bool = False
    attempted: bool = True  # False: the account had failed before this item's call


class AccountStops:
    """The run-wide note that a provider's account failed: later steps stop calling it."""

    def __init__(self, bucket: Bucket, run_id: str) -> None:
        self._bucket = bucket
        self._run_id = run_id

    def reason(self, role: str) -> str | None:
        return self._bucket.read_account_stop(self._run_id, role)

    def stop(self, role: str, err: AccountError) -> None:
        self._bucket.write_account_stop(
            self._run_id, role, f"account error earlier in this run: {err}"
        )


class AccountStopped(Exception):
    """Raised instead of a call to a provider whose account failed earlier in the run."""


class StoppingSlots:
    """The account's slots, with the account stop looked at once more after the wait for
    them: a step that waited while another step met an account error does not submit."""

    def __init__(self, slots: SlotGate, stops: AccountStops, role: str) -> None:
        self._slots, self._stops, self._role = slots, stops, role

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        with self._slots.hold(count):
            stopped = self._stops.reason(self._role)
            if stopped:
                raise AccountStopped(stopped)
            try:
                yield
            except AccountError as err:
                # Noted before the slot is freed: the step that takes it sees the stop.
                self._stops.stop(self._role, err)
                raise


def guarded(
    work: Callable[[], T],
    attempt: Attempt,
    stops: AccountStops,
    role: str,
) -> T | Failed:
    """Run `work` under the policy above; `role` names the provider an account error stops
    ("prompt_writer" or "image_maker")."""
    try:
        return work()
    except AccountStopped as err:
        return Failed(str(err), attempted=False)
    except AccountError as err:
        stops.stop(role, err)
        return Failed(str(err))
    except SceneRejectedError as err:
        return Failed(str(err), refused=err.refused)
    except TransientProviderError as err:
        if not attempt.last:
            raise
        return Failed(f"gave up after {attempt.count} attempts: {err}")
    except StorageError as err:
        if not attempt.last:
            raise
        # Storage messages name the key and the error code, never credentials.
        return Failed(f"storage error after {attempt.count} attempts: {err}")
