"""The KLING image maker: one paid task per image request, resumable and never paid twice.

Flow of `make_image` (the account's slots are held from submit until the task has finished;
the download happens after):

1. The journal names a task (`task_id`): resume polling it; a killed step never pays twice.
2. The journal says `submitting` (a POST whose answer may be lost): look the external id up
   among the recent tasks before submitting.
3. Otherwise note `submitting`, submit, note `submitted` with the task id, and poll at a
   steady interval until `succeed`/`failed` or the deadline.
4. `failed` for moderation or policy fails the request (refused); any other failure is
   resubmitted at most `max_resubmits` times with a derived external id (`<id>-r1`, ...).
5. `succeed`: download every image at once (URLs are temporary). A 403/404 means the URL
   expired: the task is read again for fresh URLs; a succeeded task is never paid again.

Scenes with reference portraits use `multi-image2image` (the portraits as `subject_image_list`,
in order) and are polled at that endpoint's own path; others use text-to-image.

The KLING client's errors are mapped here onto the pipeline's (providers/errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from scene_pipeline.clients.kling import (
    KlingAccountError,
    KlingClient,
    KlingDownloadError,
    KlingError,
    KlingModerationError,
    KlingRequestError,
    KlingTask,
    KlingTransientError,
    encode_image,
)
from scene_pipeline.clients.kling_errors import sanitise_message
from scene_pipeline.clients.kling_tasks import Endpoint
from scene_pipeline.constants import KLING_MAX_REFERENCES
from scene_pipeline.contract.outputs import ImageProvenance
from scene_pipeline.providers import identities
from scene_pipeline.providers.base import (
    GeneratedImage,
    ImageRequest,
    SlotGate,
    TaskJournal,
)
from scene_pipeline.providers.errors import (
    AccountError,
    ProviderError,
    SceneRejectedError,
    TransientProviderError,
)
from scene_pipeline.providers.png import as_png

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESUBMITS: Final = 2
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


@contextmanager
def provider_errors() -> Iterator[None]:
    """KLING client errors as the pipeline's failure kinds."""
    try:
        yield
    except KlingAccountError as err:
        raise AccountError(str(err)) from None
    except KlingModerationError as err:
        raise SceneRejectedError(str(err), refused=True) from None
    except KlingRequestError as err:
        raise SceneRejectedError(str(err)) from None
    except KlingTransientError as err:
        raise TransientProviderError(str(err)) from None
    except KlingError as err:  # pragma: no cover - every KlingError is one of the above
        raise TransientProviderError(str(err)) from None


def _entry(state: str, external_id: str, attempt: int, endpoint: Endpoint, **more: str) -> dict:
    return {
        "state": state,
        "external_task_id": external_id,
        "attempt": str(attempt),
        "endpoint": endpoint,
        **more,
    }


def _from_ms(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


class KlingImageMaker:
    """`ImageMaker` backed by KLING's image tasks.

    Args:
        client: the KLING client (one per step process).
        model: text-to-image model, sent as `model_name`.
        reference_model: model of `multi-image2image`; None draws every scene from text only.
        task_timeout_seconds: deadline for one task to finish once we poll it.
        poll_interval_seconds: pause between two polls of a task.
        max_resubmits: new tasks after a task ends `failed` (not for moderation).
        sleep, monotonic: injectable for tests.
    """

    def __init__(
        self,
        client: KlingClient,
        *,
        model: str,
        reference_model: str | None,
        task_timeout_seconds: float,
        poll_interval_seconds: float,
        max_resubmits: int = DEFAULT_MAX_RESUBMITS,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identities.kling(model, reference_model)
        self.max_references = KLING_MAX_REFERENCES if reference_model else 0
        self._client = client
        self._model = model
        self._reference_model = reference_model
        self._timeout = task_timeout_seconds
        self._poll_interval = poll_interval_seconds
        self._max_resubmits = max_resubmits
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"KlingImageMaker(model={self._model!r}, client={self._client!r})"

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        """Draw `request.n` pictures (see the module docstring for the flow).

        Raises:
            TransientProviderError: rate limits, server or network trouble; the journal keeps
                the task, so the retried step resumes it.
            AccountError: bad keys, no quota, no permission, IP not allowed.
            SceneRejectedError: moderation (`refused`), invalid request, a task that failed
                after every resubmit, or timed out.
        """
        started = self._monotonic()
        # Without a reference model the maker draws from text only, whatever it is given.
        with_references = bool(request.references) and self._reference_model is not None
        endpoint: Endpoint = "multi-image2image" if with_references else "generations"
        # The gate sees the pipeline's error kinds (an account error ends the hold).
        with slots.hold(request.n), provider_errors():
            task, attempt, external_id = self._finished_task(request, journal, endpoint)
        with provider_errors():
            pngs, width, height = self._fetch_images(task, request.n, endpoint)
        now = datetime.now(UTC)
        submitted_at = _from_ms(task.created_at) or now
        finished_at = _from_ms(task.updated_at) or now
        duration = (finished_at - submitted_at).total_seconds()
        logger.info(
            "KLING task %s for %s: %d image(s) %dx%d after %d attempt(s)",
            task.task_id,
            request.subject,
            len(pngs),
            width,
            height,
            attempt,
        )
        return GeneratedImage(
            pngs=pngs,
            provenance=ImageProvenance(
                provider=self.identity.provider,
                model=self._reference_model if with_references else self._model,
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
        self, request: ImageRequest, journal: TaskJournal, endpoint: Endpoint
    ) -> tuple[KlingTask, int, str]:
        """A task that ended `succeed`, with its attempt number and external id."""
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
                task = self._submit(request, journal, external_id, attempt, endpoint)
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

    def _body(self, request: ImageRequest, external_id: str, endpoint: Endpoint) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "aspect_ratio": request.aspect_ratio,
            "n": request.n,
            "external_task_id": external_id,
        }
        if endpoint == "multi-image2image":
            body["model_name"] = self._reference_model
            body["subject_image_list"] = [
                {"subject_image": encode_image(png)}
                for png in request.references[: self.max_references]
            ]
        else:
            body["model_name"] = self._model
            if request.negative_prompt:
                body["negative_prompt"] = request.negative_prompt
        return body

    def _submit(
        self,
        request: ImageRequest,
        journal: TaskJournal,
        external_id: str,
        attempt: int,
        endpoint: Endpoint,
    ) -> KlingTask:
        # Noted before the POST: if its answer is lost, the next attempt looks the id up.
        journal.save(_entry("submitting", external_id, attempt, endpoint))
        try:
            task = self._client.submit(endpoint, self._body(request, external_id, endpoint))
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

    # -- the images --------------------------------------------------------------------------

    def _fetch_images(
        self, task: KlingTask, count: int, endpoint: Endpoint
    ) -> tuple[list[bytes], int, int]:
        """Every image of a succeeded task as PNG. Never submits: a succeeded task is paid."""
        for refetched in (False, True):
            images = sorted(task.images, key=lambda image: image.index)[:count]
            if len(images) < count:
                raise TransientProviderError(
                    f"KLING task {task.task_id} succeeded with {len(task.images)} of {count} images"
                )
            try:
                pngs = [self._png(task, image.url) for image in images]
            except KlingDownloadError as err:
                if not err.url_expired or refetched:
                    raise
                logger.warning(
                    "KLING task %s: image URL expired; reading the task again", task.task_id
                )
                task = self._client.get_task(endpoint, task.task_id)
                continue
            _, width, height = as_png(pngs[0])
            return pngs, width, height
        raise AssertionError("unreachable")  # pragma: no cover

    def _png(self, task: KlingTask, url: Any) -> bytes:
        data = self._client.download(url)
        try:
            return as_png(data)[0]
        except ValueError as err:
            # Transient: the journal still names the task, so the retried step downloads again.
            raise TransientProviderError(f"KLING image of task {task.task_id} is {err}") from None


__all__ = ["KlingImageMaker", "ProviderError", "is_moderation_message"]
