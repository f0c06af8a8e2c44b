"""The life of the paid KLING task behind one image request, resumable and never paid twice.

1. The journal names a task (`task_id`): resume polling it; a killed step never pays twice.
2. The journal says `submitting` (a POST whose answer may be lost): look the external id up
   among the recent tasks before submitting.
3. Otherwise note `submitting`, submit, note `submitted` with the task id, and poll at a
   steady interval until `succeed`/`failed` or the deadline.
4. `failed` for moderation or policy fails the request (refused); any other failure is
   resubmitted at most `max_resubmits` times with a derived external id (`<id>-r1`, ...).

What becomes of a succeeded task (its download) is providers/kling.py's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from scene_pipeline.clients.kling import (
    KlingAccountError,
    KlingClient,
    KlingRequestError,
    KlingTask,
)
from scene_pipeline.clients.kling_errors import sanitise_message
from scene_pipeline.clients.kling_tasks import Endpoint
from scene_pipeline.providers.base import ImageRequest, TaskJournal
from scene_pipeline.providers.errors import SceneRejectedError

logger = logging.getLogger(__name__)

# Words in `task_status_msg` that mean moderation or policy (KLING's wording varies).
MODERATION_HINTS: Final = (
    "moderation",
    "policy",
    "risk control",
    "sensitive",
    "violat",
    "inappropriate",
    "prohibited",
    "unsafe",
)


def is_moderation_message(message: str) -> bool:
    lowered = message.lower()
    return any(hint in lowered for hint in MODERATION_HINTS)


def _entry(state: str, external_id: str, attempt: int, endpoint: Endpoint, **more: str) -> dict:
    return {
        "state": state,
        "external_task_id": external_id,
        "attempt": str(attempt),
        "endpoint": endpoint,
        **more,
    }


class KlingTaskRunner:
    """Brings one image request's task to `succeed` (see the module docstring for the flow);
    the arguments are `KlingImageMaker`'s of the same names."""

    def __init__(
        self,
        client: KlingClient,
        *,
        task_timeout_seconds: float,
        poll_interval_seconds: float,
        max_resubmits: int,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
    ) -> None:
        self._client = client
        self._timeout = task_timeout_seconds
        self._poll_interval = poll_interval_seconds
        self._max_resubmits = max_resubmits
        self._sleep = sleep
        self._monotonic = monotonic

    def finished_task(
        self,
        request: ImageRequest,
        journal: TaskJournal,
        endpoint: Endpoint,
        body: Callable[[str], dict[str, Any]],
    ) -> tuple[KlingTask, int, str]:
        """A task that ended `succeed`, with its attempt number and external id.

        `body(external_id)`: the request body of a submit under that id.
        """
        entry = journal.load() or {}
        if entry.get("endpoint", endpoint) != endpoint:
            entry = {}  # a task of the other endpoint cannot be this request's
        attempt = max(1, int(entry.get("attempt", "1") or 1))
        external_id = entry.get("external_task_id") or request.external_task_id
        task: KlingTask | None = None
        if entry.get("task_id"):
            task = self._read(endpoint, entry["task_id"], journal)
            logger.info("KLING: resuming task %s (%s)", task.task_id, task.task_status)
            if entry.get("state") == "timed_out" and not task.finished:
                # It had its full deadline once already: abandon it and pay for a new one.
                logger.warning("KLING task %s still unfinished; abandoning it", task.task_id)
                attempt, external_id = self._next_attempt(
                    request, journal, attempt, f"task {task.task_id} timed out and still runs"
                )
                task = None
        elif entry.get("state") == "submitting":
            task = self._client.find_by_external_task_id(endpoint, external_id)
            if task is not None:
                logger.info("KLING: found task %s of a submit whose answer was lost", task.task_id)
                journal.save(
                    _entry("submitted", external_id, attempt, endpoint, task_id=task.task_id)
                )
        while True:
            if task is None:
                task = self._submit(request, journal, external_id, attempt, endpoint, body)
            task = self._wait(task, journal, external_id, attempt, endpoint)
            if task.task_status == "succeed":
                return task, attempt, external_id
            reason = sanitise_message(task.task_status_msg) or "no reason given"
            if is_moderation_message(reason):
                journal.clear()  # nothing to resume: a later run starts afresh
                raise SceneRejectedError(
                    f"KLING content moderation rejected the image (task {task.task_id}): {reason}",
                    refused=True,
                )
            attempt, external_id = self._next_attempt(request, journal, attempt, reason)
            task = None

    def _next_attempt(
        self, request: ImageRequest, journal: TaskJournal, attempt: int, reason: str
    ) -> tuple[int, str]:
        if attempt > self._max_resubmits:
            journal.clear()
            raise SceneRejectedError(
                f"KLING task failed {attempt} time(s), giving up for this run: {reason}"
            )
        logger.warning("KLING task failed (%s); resubmitting (attempt %d)", reason, attempt + 1)
        # A fresh id: KLING refuses a used one, and the failed task keeps its own.
        return attempt + 1, f"{request.external_task_id}-r{attempt}"

    def _submit(
        self,
        request: ImageRequest,
        journal: TaskJournal,
        external_id: str,
        attempt: int,
        endpoint: Endpoint,
        body: Callable[[str], dict[str, Any]],
    ) -> KlingTask:
        # Noted before the POST: if its answer is lost, the next attempt looks the id up.
        journal.save(_entry("submitting", external_id, attempt, endpoint))
        try:
            task = self._client.submit(endpoint, body(external_id))
        except (KlingRequestError, KlingAccountError):
            journal.clear()  # refused: no task was made, nothing to resume
            raise
        journal.save(_entry("submitted", external_id, attempt, endpoint, task_id=task.task_id))
        logger.info("KLING: submitted task %s for %s", task.task_id, request.subject)
        return task

    def _read(self, endpoint: Endpoint, task_id: str, journal: TaskJournal) -> KlingTask:
        try:
            return self._client.get_task(endpoint, task_id)
        except KlingRequestError as err:
            # The journal names a task KLING does not know (another account, or expired).
            journal.clear()
            raise SceneRejectedError(
                f"KLING task {task_id} from the task journal cannot be read ({err}); the next"
                " run submits a new task"
            ) from None

    def _wait(
        self,
        task: KlingTask,
        journal: TaskJournal,
        external_id: str,
        attempt: int,
        endpoint: Endpoint,
    ) -> KlingTask:
        deadline = self._monotonic() + self._timeout
        while not task.finished:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                journal.save(
                    _entry("timed_out", external_id, attempt, endpoint, task_id=task.task_id)
                )
                raise SceneRejectedError(
                    f"KLING task {task.task_id} timed out after {self._timeout:g} s (still"
                    f" {task.task_status}); the next run looks at it once more before"
                    " submitting a new one"
                )
            # A steady interval: the task holds account slots, so seeing it finish late costs
            # more than a GET every few seconds (measured in bench/).
            self._sleep(min(self._poll_interval, remaining))
            task = self._read(endpoint, task.task_id, journal)
        return task
