"""The KLING image maker: one paid task per scene image, resumable and never paid twice.

Flow of `make_image` (all of it while holding one of the account's task slots, except the
download):

1. The journal names a task (`task_id`): resume polling it; a killed step never pays twice.
2. The journal says `submitting` (a POST whose answer may be lost): look the external id up
   among the recent tasks before submitting.
3. Otherwise note `submitting`, submit, note `submitted` with the task id, and poll with
   back-off until `succeed`/`failed` or the deadline.
4. `failed` for moderation or policy fails the scene; any other failure is resubmitted a
   bounded number of times with a derived external id (`<id>-r1`, `<id>-r2`, ...).
5. `succeed`: download the first image at once (URLs are temporary), check it is an image,
   convert it to PNG when it is not one.

The journal is cleared here only when nothing is left to resume (a terminal failure); on
success the asset clears it after storing the image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from scene_pipeline.clients.kling import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    KlingClient,
    KlingTask,
    sanitise_message,
)
from scene_pipeline.contract.outputs import ImageProvenance
from scene_pipeline.providers.base import (
    GeneratedImage,
    ImageRequest,
    ProviderIdentity,
    TaskJournal,
)
from scene_pipeline.providers.errors import SceneRejectedError, TransientProviderError
from scene_pipeline.providers.png import as_png

logger = logging.getLogger(__name__)

# Bump when a change here changes the pictures for the same prompt (part of the content hash).
MAKER_VERSION: Final = "1"
DEFAULT_TASK_TIMEOUT_SECONDS: Final = 600.0
DEFAULT_POLL_INTERVAL_SECONDS: Final = 2.0
DEFAULT_MAX_RESUBMITS: Final = 2
# Downloads that arrive whole but do not decode are fetched again this many times in total.
DEFAULT_IMAGE_FETCHES: Final = 3
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


class KlingTaskTimeoutError(SceneRejectedError):
    """A KLING task did not finish within `task_timeout_seconds`.

    It fails the scene rather than being transient on purpose: a retried step would poll the
    same hung task for another full deadline (up to three times, holding a `kling` pool slot
    and an account slot), and resubmitting at once would pay for a second task while the
    first may still finish. The journal keeps the task as `timed_out`, so the next run looks at
    it once more (its image is used if it finished meanwhile) before paying for a new one.
    """


class KlingTaskFailedError(SceneRejectedError):
    """A KLING task ended `failed` for moderation, or failed again after every resubmit."""


def is_moderation_message(message: str) -> bool:
    lowered = message.lower()
    return any(hint in lowered for hint in MODERATION_HINTS)


def _entry(
    state: str, external_task_id: str, attempt: int, task_id: str | None = None
) -> dict[str, str]:
    entry = {"state": state, "external_task_id": external_task_id, "attempt": str(attempt)}
    if task_id is not None:
        entry["task_id"] = task_id
    return entry


def _attempt_of(entry: dict[str, str]) -> int:
    try:
        return max(1, int(entry.get("attempt", "1")))
    except ValueError:
        return 1


def _from_ms(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


class KlingImageMaker:
    """`ImageMaker` backed by KLING's text-to-image tasks.

    Args:
        client: The (shared) KLING client.
        model: Sent as `model_name`; one of `KNOWN_MODELS`.
        task_timeout_seconds: Deadline for one task to finish once we poll it.
        poll_interval_seconds: Pause between two polls of a task.
        max_resubmits: New tasks after a task ends `failed` (not for moderation) or hung.
        image_fetches: Downloads of a result image when it arrives but does not decode.
        sleep, monotonic: Injectable for tests.
    """

    def __init__(
        self,
        client: KlingClient,
        *,
        model: str = DEFAULT_MODEL,
        task_timeout_seconds: float = DEFAULT_TASK_TIMEOUT_SECONDS,
        poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_SECONDS,
        max_resubmits: int = DEFAULT_MAX_RESUBMITS,
        image_fetches: int = DEFAULT_IMAGE_FETCHES,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if model not in KNOWN_MODELS:
            # KLING falls back to kling-v1 or refuses unknown names; fail before paying.
            raise ValueError(f"unknown KLING model {model!r}; expected one of {KNOWN_MODELS}")
        self.identity = ProviderIdentity(provider="kling", model=model, version=MAKER_VERSION)
        self._client = client
        self._model = model
        self._timeout = task_timeout_seconds
        self._poll_interval = poll_interval_seconds
        self._max_resubmits = max_resubmits
        self._image_fetches = max(1, image_fetches)
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"KlingImageMaker(model={self._model!r}, client={self._client!r})"

    def make_image(self, request: ImageRequest, journal: TaskJournal) -> GeneratedImage:
        """Draw one picture (see the module docstring for the flow).

        Raises:
            TransientProviderError: rate limits, server or network trouble; the journal keeps
                the task, so the retried step resumes it.
            AccountError: bad keys, no quota, no permission, IP not allowed.
            SceneRejectedError: moderation, invalid request, task failed after every resubmit
                (`KlingTaskFailedError`), or timed out (`KlingTaskTimeoutError`).
        """
        started = self._monotonic()
        with self._client.task_slot():
            task, attempt, external_id = self._finished_task(request, journal)
        png, width, height = self._fetch_image(task, journal)
        now = datetime.now(UTC)
        submitted_at = _from_ms(task.created_at) or now
        finished_at = _from_ms(task.updated_at) or now
        duration = (finished_at - submitted_at).total_seconds()
        logger.info(
            "KLING task %s for scene %s: image %dx%d after %d attempt(s)",
            task.task_id,
            request.scene_id,
            width,
            height,
            attempt,
        )
        return GeneratedImage(
            png=png,
            provenance=ImageProvenance(
                provider=self.identity.provider,
                model=self.identity.model,
                task_id=task.task_id,
                external_task_id=external_id,
                attempts=attempt,
                submitted_at=submitted_at,
                finished_at=finished_at,
                duration_seconds=round(
                    duration if duration >= 0 else self._monotonic() - started, 3
                ),
                final_unit_deduction=task.final_unit_deduction,
                width=width,
                height=height,
            ),
        )

    # -- the task ----------------------------------------------------------------------------

    def _finished_task(
        self, request: ImageRequest, journal: TaskJournal
    ) -> tuple[KlingTask, int, str]:
        """A task that ended `succeed`, with its attempt number and external id."""
        entry = journal.load() or {}
        attempt = _attempt_of(entry)
        external_id = entry.get("external_task_id") or request.external_task_id
        task: KlingTask | None = None
        if entry.get("task_id"):
            task = self._read(entry["task_id"], journal)
            logger.info("KLING: resuming task %s (%s)", task.task_id, task.task_status)
            if entry.get("state") == "timed_out" and not task.finished:
                # It had its full deadline once already: abandon it and pay for a new one.
                logger.warning("KLING task %s still unfinished; abandoning it", task.task_id)
                attempt, external_id = self._next_attempt(
                    request, journal, attempt, f"task {task.task_id} timed out and still runs"
                )
                task = None
        elif entry.get("state") == "submitting":
            task = self._client.find_by_external_task_id(external_id)
            if task is not None:
                logger.info("KLING: found task %s of a submit whose answer was lost", task.task_id)
                journal.save(_entry("submitted", external_id, attempt, task.task_id))
        while True:
            if task is None:
                task = self._submit(request, journal, external_id, attempt)
            task = self._wait(task, journal, external_id, attempt)
            if task.task_status == "succeed":
                return task, attempt, external_id
            reason = sanitise_message(task.task_status_msg) or "no reason given"
            if is_moderation_message(reason):
                journal.clear()  # nothing to resume: a later run starts afresh
                raise KlingTaskFailedError(
                    f"KLING content moderation rejected the image (task {task.task_id}): {reason}"
                )
            attempt, external_id = self._next_attempt(request, journal, attempt, reason)
            task = None

    def _next_attempt(
        self, request: ImageRequest, journal: TaskJournal, attempt: int, reason: str
    ) -> tuple[int, str]:
        if attempt > self._max_resubmits:
            journal.clear()
            raise KlingTaskFailedError(
                f"KLING task failed {attempt} time(s), giving up for this run: {reason}"
            )
        logger.warning("KLING task failed (%s); resubmitting (attempt %d)", reason, attempt + 1)
        # A fresh id: KLING refuses a used one, and the failed task keeps its own.
        return attempt + 1, f"{request.external_task_id}-r{attempt}"

    def _submit(
        self, request: ImageRequest, journal: TaskJournal, external_id: str, attempt: int
    ) -> KlingTask:
        # Noted before the POST: if its answer is lost, the next attempt looks the id up.
        journal.save(_entry("submitting", external_id, attempt))
        try:
            task = self._client.submit(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                aspect_ratio=request.aspect_ratio,
                external_task_id=external_id,
                model_name=self._model,
            )
        except SceneRejectedError:
            journal.clear()  # refused: no task was made, nothing to resume
            raise
        journal.save(_entry("submitted", external_id, attempt, task.task_id))
        logger.info("KLING: submitted task %s for scene %s", task.task_id, request.scene_id)
        return task

    def _read(self, task_id: str, journal: TaskJournal) -> KlingTask:
        try:
            return self._client.get_task(task_id)
        except SceneRejectedError as err:
            # The journal names a task KLING does not know (another account, or expired).
            journal.clear()
            raise SceneRejectedError(
                f"KLING task {task_id} from the task journal cannot be read ({err}); the next"
                " run submits a new task"
            ) from err

    def _wait(
        self, task: KlingTask, journal: TaskJournal, external_id: str, attempt: int
    ) -> KlingTask:
        deadline = self._monotonic() + self._timeout
        while not task.finished:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                journal.save(_entry("timed_out", external_id, attempt, task.task_id))
                raise KlingTaskTimeoutError(
                    f"KLING task {task.task_id} timed out after {self._timeout:g} s (still"
                    f" {task.task_status}); the next run looks at it once more before"
                    " submitting a new one"
                )
            # A steady interval: the task holds one of the account's few slots, so seeing it
            # finish late costs more than a GET every few seconds (measured in bench/).
            self._sleep(min(self._poll_interval, remaining))
            task = self._read(task.task_id, journal)
        return task

    # -- the image ---------------------------------------------------------------------------

    def _fetch_image(self, task: KlingTask, journal: TaskJournal) -> tuple[bytes, int, int]:
        if not task.images:
            journal.clear()
            raise KlingTaskFailedError(f"KLING task {task.task_id} succeeded without an image")
        first = min(task.images, key=lambda image: image.index)
        problem = ""
        for _ in range(self._image_fetches):
            data = self._client.download(first.url)
            try:
                return as_png(data)
            except ValueError as err:
                problem = str(err)
                logger.debug("KLING task %s: downloaded image is %s", task.task_id, problem)
        # Transient: the journal still names the task, so the retried step downloads again.
        raise TransientProviderError(
            f"KLING image of task {task.task_id} is {problem} after {self._image_fetches} downloads"
        )
