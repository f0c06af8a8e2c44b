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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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


class AccountStops:
    """The run-wide note that a provider's account failed: later steps stop calling it."""

    def __init__(self, bucket: Bucket, run_id: str) -> None:
        self._bucket = bucket
        self._run_id = run_id

    def reason(self, role: str) -> str | None:
        return self._bucket.read_account_stop(self._run_id, role)

    def stop(self, role: str, reason: str) -> None:
        self._bucket.write_account_stop(self._run_id, role, reason)


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
    except AccountError as err:
        stops.stop(role, f"account error earlier in this run: {err}")
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
