"""The KLING client's retry budget: the one place that retries transient HTTP errors.

Each call makes at most `max_attempts` requests with exponential back-off and jitter between
them (a server's Retry-After is honoured up to `RETRY_AFTER_CAP_SECONDS`), then raises the
last `KlingTransientError`, marked with the attempts it took. Callers do not loop again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Final, TypeVar

from scene_pipeline.clients.kling_errors import KlingTransientError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The retry budget of one call: at most this many requests, and back-off between them of
# 1, 2, 4, 8, 16 s (each plus up to 50 % jitter; KLING asks for at least 1 s on 1302).
DEFAULT_MAX_ATTEMPTS: Final = 6
DEFAULT_BACKOFF_BASE_SECONDS: Final = 1.0
DEFAULT_BACKOFF_MAX_SECONDS: Final = 30.0
RETRY_AFTER_CAP_SECONDS: Final = 30.0


class RetryBudget:
    """The retry loop of one KLING call, and the back-off between its requests (the
    arguments are `KlingClient`'s of the same names)."""

    def __init__(
        self,
        max_attempts: int,
        backoff_base: float,
        backoff_max: float,
        sleep: Callable[[float], None],
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._rng = random.Random()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        delay = base + self._rng.uniform(0, base / 2)
        if retry_after:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
        return delay

    def run(self, call: Callable[[int], T]) -> T:
        """`call(attempt)` until it returns, fails with a non-retryable error, or has used
        `max_attempts` requests."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return call(attempt)
            except KlingTransientError as err:
                if attempt == self.max_attempts:
                    raise _gave_up(err, attempt) from None
                delay = self._backoff(attempt, err.retry_after)
                logger.debug(
                    "%s; retrying in %.2fs (attempt %d/%d)", err, delay, attempt, self.max_attempts
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _gave_up(err: KlingTransientError, attempts: int) -> KlingTransientError:
    cls = type(err)
    return cls(
        f"{err} (gave up after {attempts} attempts)",
        http_status=err.http_status,
        code=err.code,
        request_id=err.request_id,
        retry_after=err.retry_after,
        ambiguous=err.ambiguous,
    )
