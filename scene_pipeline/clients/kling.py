"""A plain client of KLING's image API (httpx + pyjwt; no Dagster, no pipeline types).

The facts it honours are in ../shared/reference/kling-api.md:

- One request is authenticated with a short-lived JWT and its errors are classified by
  KLING's `code` (`clients/kling_connection.py`).
- Each call makes at most `max_attempts` requests with back-off between them, then raises
  `KlingTransientError` (`clients/kling_retry.py`, the only retry loop). Callers do not loop
  again.
- Every accepted task is paid, so a POST whose answer was lost is never simply repeated: the
  client first looks for its `external_task_id` among the recent tasks (single requests,
  inside the same attempt budget).

Secrets: the keys are held as `SecretStr`; keys, JWTs and image URLs (which may be signed)
never appear in exception messages, log lines or reprs.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from scene_pipeline.clients.kling_auth import KlingToken
from scene_pipeline.clients.kling_connection import KlingConnection
from scene_pipeline.clients.kling_errors import (
    KlingAccountError,
    KlingDownloadError,
    KlingError,
    KlingModerationError,
    KlingRequestError,
    KlingTransientError,
    retry_after_seconds,
)
from scene_pipeline.clients.kling_retry import (
    DEFAULT_BACKOFF_BASE_SECONDS,
    DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    RetryBudget,
)
from scene_pipeline.clients.kling_tasks import ENDPOINT_PATHS, Endpoint, KlingTask, task_from_api
from scene_pipeline.clients.redaction import install_httpx_url_filter

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api-singapore.klingai.com"
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
# The lost-POST lookup reads at most pages x page size recent tasks (pageSize may be 1-500).
LOOKUP_PAGE_SIZE: Final = 100
LOOKUP_MAX_PAGES: Final = 3
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024

install_httpx_url_filter()


class KlingClient:
    """KLING's image API: auth, classified errors, one bounded retry loop, idempotent submits.

    Thread-safe. Args:
        access_key, secret_key: the account's keys (the JWT's `iss` and its signing key).
        base_url: API host, e.g. https://api-singapore.klingai.com.
        request_timeout, connect_timeout: seconds for one HTTP request / to connect.
        max_attempts: requests per call on retryable errors before `KlingTransientError`.
        backoff_base, backoff_max: first back-off (doubling per attempt) and its cap.
        http_client: an httpx.Client to use (e.g. with a MockTransport); closed by `close`
            only when this client created it.
        clock, sleep: injectable for tests (JWT times, back-off waits).
    """

    def __init__(
        self,
        access_key: str | SecretStr,
        secret_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._retry = RetryBudget(max_attempts, backoff_base, backoff_max, sleep)
        token = KlingToken(access_key, secret_key, clock)
        self.base_url = base_url.rstrip("/")
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=httpx.Timeout(request_timeout, connect=min(connect_timeout, request_timeout))
        )
        self._api = KlingConnection(token, self.base_url, self._http)

    def __repr__(self) -> str:
        return f"KlingClient(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------------

    def submit(self, endpoint: Endpoint, body: dict[str, Any]) -> KlingTask:
        """Create a task at `endpoint`, at most once per `body["external_task_id"]`.

        A POST whose outcome is unknown (timeout, dropped connection, 5xx) may have created a
        paid task, so before sending it again the client looks the id up in the recent tasks;
        a 1201 answer (which a duplicate id gets) triggers the same lookup.

        Raises:
            KlingTransientError: still failing after `max_attempts` requests.
            KlingAccountError: keys, quota, permission or allowlist problems.
            KlingModerationError: the prompt was refused by moderation (1300/1301).
            KlingRequestError: invalid request (1200-1203).
        """
        external_task_id = str(body["external_task_id"])
        path = ENDPOINT_PATHS[endpoint]
        maybe_created = False

        def attempt_submit(_attempt: int) -> KlingTask:
            nonlocal maybe_created
            if maybe_created:
                found = self._find_once(endpoint, external_task_id)
                if found is not None:
                    logger.info("KLING submit: found task %s after a lost answer", found.task_id)
                    return found
            try:
                data = self._api.call("POST", path, "submit", json_body=body)
            except KlingTransientError as err:
                maybe_created = maybe_created or err.ambiguous
                raise
            except KlingModerationError:
                raise
            except KlingRequestError as err:
                if err.code == 1201:
                    # A duplicate external_task_id gets 1201: the task may exist already (an
                    # earlier answer of ours, or of a killed process, was lost).
                    found = self._find_once(endpoint, external_task_id)
                    if found is not None:
                        logger.info("KLING submit: task %s already existed", found.task_id)
                        return found
                raise
            try:
                return task_from_api(data)
            except ValueError as err:
                maybe_created = True
                raise KlingTransientError(f"KLING submit: {err}", ambiguous=True) from None

        return self._retry.run(attempt_submit)

    def get_task(self, endpoint: Endpoint, task_id: str) -> KlingTask:
        """Read one task (`GET {endpoint}/{task_id}`).

        Raises:
            KlingRequestError: the task does not exist for this account (1203).
            KlingTransientError, KlingAccountError: as for `submit`.
        """
        path = f"{ENDPOINT_PATHS[endpoint]}/{quote(task_id, safe='')}"

        def call(_attempt: int) -> KlingTask:
            data = self._api.call("GET", path, "task status")
            try:
                return task_from_api(data)
            except ValueError as err:
                raise KlingTransientError(f"KLING task status: {err}") from None

        return self._retry.run(call)

    def find_by_external_task_id(
        self, endpoint: Endpoint, external_task_id: str
    ) -> KlingTask | None:
        """The task created with `external_task_id`, looked up among the recent tasks.

        Returns:
            The task, or None when it is not among the newest `LOOKUP_MAX_PAGES x
            LOOKUP_PAGE_SIZE` tasks (then it was, in practice, never made).
        """
        return self._retry.run(lambda _attempt: self._find_once(endpoint, external_task_id))

    def _find_once(self, endpoint: Endpoint, external_task_id: str) -> KlingTask | None:
        for page in range(1, LOOKUP_MAX_PAGES + 1):
            data = self._api.call(
                "GET",
                ENDPOINT_PATHS[endpoint],
                "task list",
                params={"pageNum": page, "pageSize": LOOKUP_PAGE_SIZE},
            )
            if not isinstance(data, list):
                raise KlingTransientError("KLING task list: the answer is not a list")
            for item in data:
                try:
                    task = task_from_api(item)
                except ValueError:
                    continue  # one odd entry must not hide the others
                if task.external_task_id == external_task_id:
                    return task
            if len(data) < LOOKUP_PAGE_SIZE:
                break
        return None

    def download(self, url: str | SecretStr) -> bytes:
        """Fetch a result image; the URL is never logged or shown. No Authorization header:
        image URLs point at a storage host, not at the API.

        Raises:
            KlingDownloadError: still failing after `max_attempts` requests; a 403/404 is
                raised at once (`url_expired`): the caller fetches the task for a fresh URL.
        """
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url

        def call(_attempt: int) -> bytes:
            try:
                response = self._http.get(raw, follow_redirects=True)
            except httpx.TransportError as err:
                raise KlingDownloadError(
                    f"KLING image download: network error or timeout ({type(err).__name__})"
                ) from None
            if response.status_code in (403, 404):
                raise _Expired(response.status_code)
            if response.status_code != 200:
                raise KlingDownloadError(
                    f"KLING image download: HTTP {response.status_code}",
                    http_status=response.status_code,
                    retry_after=retry_after_seconds(response.headers),
                )
            if not response.content or len(response.content) > MAX_IMAGE_BYTES:
                raise KlingDownloadError(
                    f"KLING image download: {len(response.content)} bytes is not a usable size"
                )
            return response.content

        try:
            return self._retry.run(call)
        except _Expired as err:
            raise KlingDownloadError(
                f"KLING image download: HTTP {err.status} (the temporary image URL has expired"
                " or is not valid any more)",
                http_status=err.status,
            ) from None


def encode_image(png: bytes) -> str:
    """An image for a request body: base64 without a `data:` prefix, as KLING asks."""
    return base64.b64encode(png).decode("ascii")


class _Expired(KlingError):
    """A 403/404 download: not retried by the loop (the URL will not come back)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}", http_status=status)
        self.status = status


__all__ = [
    "KlingAccountError",
    "KlingClient",
    "KlingDownloadError",
    "KlingError",
    "KlingModerationError",
    "KlingRequestError",
    "KlingTask",
    "KlingTransientError",
    "encode_image",
]
