"""The KLING image maker: one paid task per image request, resumable and never paid twice.

Flow of `make_image` (the account's slots are held from submit until the task has finished;
the download happens after):

1. Bring the request's task to `succeed`: resume the one the task journal names, submit at
   most once per external id, poll, resubmit after a failure (providers/kling_lifecycle.py).
2. Download every image at once (URLs are temporary). A 403/404 means the URL expired: the
   task is read again for fresh URLs; a succeeded task is never paid again.

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
from scene_pipeline.providers.kling_lifecycle import KlingTaskRunner
from scene_pipeline.providers.png import as_png

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESUBMITS: Final = 2


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
        self._monotonic = monotonic
        self._tasks = KlingTaskRunner(
            client,
            task_timeout_seconds=task_timeout_seconds,
            poll_interval_seconds=poll_interval_seconds,
            max_resubmits=max_resubmits,
            sleep=sleep,
            monotonic=monotonic,
        )

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
            task, attempt, external_id = self._tasks.finished_task(
                request, journal, endpoint, lambda eid: self._body(request, eid, endpoint)
            )
        with provider_errors():
            pngs, width, height = self._fetch_images(task, request.n, endpoint)
        provenance = self._provenance(
            task,
            attempt,
            external_id,
            self._reference_model if with_references else self._model,
            (width, height),
            started,
        )
        logger.info(
            "KLING task %s for %s: %d image(s) %dx%d after %d attempt(s)",
            task.task_id,
            request.subject,
            len(pngs),
            width,
            height,
            attempt,
        )
        return GeneratedImage(pngs=pngs, provenance=provenance)

    def _provenance(
        self,
        task: KlingTask,
        attempt: int,
        external_id: str,
        model: str | None,
        size: tuple[int, int],
        started: float,
    ) -> ImageProvenance:
        """Where the pictures came from, timed by KLING's own clock when the task says."""
        now = datetime.now(UTC)
        submitted_at = _from_ms(task.created_at) or now
        finished_at = _from_ms(task.updated_at) or now
        duration = (finished_at - submitted_at).total_seconds()
        return ImageProvenance(
            provider=self.identity.provider,
            model=model,
            task_id=task.task_id,
            external_task_id=external_id,
            attempts=attempt,
            submitted_at=submitted_at,
            finished_at=finished_at,
            duration_seconds=round(duration if duration >= 0 else self._monotonic() - started, 3),
            final_unit_deduction=task.final_unit_deduction,
            width=size[0],
            height=size[1],
        )

    # -- the request -------------------------------------------------------------------------

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


__all__ = ["KlingImageMaker", "ProviderError"]
