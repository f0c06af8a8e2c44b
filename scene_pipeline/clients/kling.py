"""A plain client of KLING's image generation API (httpx + pyjwt; no Dagster).

The facts it honours are in ../shared/reference/kling-api.md:

- Auth is a short-lived HS256 JWT (`iss` = access key, `exp` = now + 1800, `nbf` = now - 5),
  reused until shortly before it expires and regenerated once when KLING answers 401.
- Errors are classified by KLING's `code` (falling back on the HTTP status) into the pipeline's
  three failure kinds (`scene_pipeline.providers.errors`): retryable ones (1302, 1303, 5000-5002,
  HTTP 5xx, network errors, timeouts) are retried here with exponential backoff and jitter, then
  raised as `TransientProviderError`; account ones (bad keys, 1100-1103, 1304) as `AccountError`;
  request ones (1200-1203, 1300-1301) as `SceneRejectedError`.
- Every accepted task is paid, so a POST whose answer was lost is never simply repeated: the
  client first looks for its `external_task_id` among the recent tasks.
- At most `max_concurrency` tasks per account are in flight in this process (`task_slot`).

Secrets: the keys are held as `SecretStr`; the keys, the JWT and image URLs (which may be
signed) never appear in exception messages, log lines or reprs. httpx logs every request URL
at INFO, so this module installs a filter on the `httpx` logger that drops query strings.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from scene_pipeline.constants import DEFAULT_KLING_MAX_CONCURRENCY
from scene_pipeline.providers.errors import (
    AccountError,
    ProviderError,
    SceneRejectedError,
    TransientProviderError,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- defaults (one place; the Dagster resource exposes the ones worth configuring) -------------

DEFAULT_BASE_URL: Final = "https://api-singapore.klingai.com"
DEFAULT_MODEL: Final = "kling-v2-1"
KNOWN_MODELS: Final = ("kling-v1", "kling-v1-5", "kling-v2", "kling-v2-new", "kling-v2-1")
GENERATIONS_PATH: Final = "/v1/images/generations"

TOKEN_LIFETIME_SECONDS: Final = 1800
TOKEN_NOT_BEFORE_SKEW_SECONDS: Final = 5
# A token is replaced this long before it expires, so that none expires while in flight.
TOKEN_REFRESH_MARGIN_SECONDS: Final = 60

DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_MAX_ATTEMPTS: Final = 6
# KLING asks for back-off of at least 1 s on 1302; the jitter is added on top, never below.
DEFAULT_BACKOFF_BASE_SECONDS: Final = 1.0
DEFAULT_BACKOFF_MAX_SECONDS: Final = 30.0
RETRY_AFTER_CAP_SECONDS: Final = 60.0
# How long a caller may wait for one of the account's task slots before giving up (transient).
DEFAULT_SLOT_WAIT_SECONDS: Final = 3600.0
# The lost-POST lookup reads at most pages x page size recent tasks (pageSize may be 1-500).
DEFAULT_LOOKUP_PAGE_SIZE: Final = 100
DEFAULT_LOOKUP_MAX_PAGES: Final = 3
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024

# -- error classification (the table of the reference) ----------------------------------------

AUTH_CODES: Final = frozenset(range(1000, 1005))
ACCOUNT_CODES: Final = {
    1100: "account exception",
    1101: "account overdue",
    1102: "resource pack exhausted or expired",
    1103: "no permission for this resource or model",
    1304: "this IP address is not on the account's allowlist",
}
REJECTED_CODES: Final = {
    1200: "invalid request",
    1201: "invalid parameters",
    1202: "method not found",
    1203: "resource not found",
}
MODERATION_CODES: Final = {1300: "platform policy", 1301: "content moderation"}
RETRYABLE_CODES: Final = {
    1302: "rate limit",
    1303: "more parallel tasks than the account allows",
    5000: "server error",
    5001: "service unavailable",
    5002: "server timeout",
}
# Answers that may have been processed although we did not see it: a POST that got one of
# these may have created (and billed) a task.
_AMBIGUOUS_CODES: Final = frozenset({5000, 5001, 5002})
TERMINAL_STATUSES: Final = frozenset({"succeed", "failed"})


class KlingError(ProviderError):
    """Base of this client's errors; `str(err)` is short and free of secrets.

    Attributes:
        http_status: HTTP status of KLING's answer, if there was one.
        code: KLING's `code` field, if the answer had one.
        request_id: KLING's `request_id`, to quote to their support.
        ambiguous: True when a request may have been processed although its answer was lost.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class KlingTransientError(KlingError, TransientProviderError):
    """Rate limit, concurrency limit, server or network error: retried, then raised."""


class KlingAccountError(KlingError, AccountError):
    """Bad keys, no quota, no permission, IP not allowed: stop submitting for the whole run."""


class KlingRequestRejectedError(KlingError, SceneRejectedError):
    """KLING refused this request (invalid parameters, unknown resource): a bug or bad data."""


class KlingModerationError(KlingRequestRejectedError):
    """KLING's platform policy or content moderation refused the prompt."""


# -- data at the edge ----------------------------------------------------------------------------


class KlingImage(BaseModel):
    """One result image. `url` is temporary and may be signed: it is a secret."""

    model_config = ConfigDict(frozen=True)

    index: int = 0
    url: SecretStr


class KlingTask(BaseModel):
    """A task as KLING reports it (`data` of the create, read and list answers)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    task_status: str
    task_status_msg: str | None = None
    created_at: int | None = Field(default=None, description="ms since the epoch")
    updated_at: int | None = Field(default=None, description="ms since the epoch")
    external_task_id: str | None = None
    final_unit_deduction: str | None = None
    images: tuple[KlingImage, ...] = ()

    @property
    def finished(self) -> bool:
        return self.task_status in TERMINAL_STATUSES


def _task_from_api(data: Any) -> KlingTask:
    """Map KLING's task object onto `KlingTask`; raises ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("task is not an object")
    info = data.get("task_info") if isinstance(data.get("task_info"), dict) else {}
    result = data.get("task_result") if isinstance(data.get("task_result"), dict) else {}
    images = result.get("images") if isinstance(result.get("images"), list) else []
    deduction = data.get("final_unit_deduction")
    try:
        return KlingTask(
            task_id=str(data["task_id"]),
            task_status=str(data.get("task_status", "")),
            task_status_msg=data.get("task_status_msg") or None,
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            external_task_id=info.get("external_task_id"),
            final_unit_deduction=None if deduction in (None, "") else str(deduction),
            images=tuple(
                KlingImage(index=int(i.get("index", 0)), url=SecretStr(str(i["url"])))
                for i in images
                if isinstance(i, dict) and i.get("url")
            ),
        )
    except (KeyError, TypeError, ValidationError) as err:
        raise ValueError(f"unexpected task object ({type(err).__name__})") from None


# -- secrets out of messages and logs ------------------------------------------------------------

_URL_RE = re.compile(r"\bhttps?://\S+", re.IGNORECASE)
_JWT_RE = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def sanitise_message(text: object, limit: int = 300) -> str:
    """A server-provided message made safe to show: no URLs, no tokens, one short line."""
    out = _URL_RE.sub("<url>", str(text or ""))
    out = _JWT_RE.sub("<token>", out)
    out = _CONTROL_RE.sub(" ", out).strip()
    return out if len(out) <= limit else out[: limit - 1] + "…"


class _DropUrlQuery(logging.Filter):
    """httpx logs `HTTP Request: GET <url>` at INFO; image URLs carry their signature in the
    query string, so every URL logged through the `httpx` logger loses its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


def _without_query(arg: object) -> object:
    if isinstance(arg, httpx.URL):
        if arg.query or arg.fragment:
            return f"{arg.copy_with(query=None, fragment=None)}?<redacted>"
        return arg
    if isinstance(arg, str) and "://" in arg and "?" in arg:
        return arg.split("?", 1)[0] + "?<redacted>"
    return arg


_LOG_FILTER_LOCK = threading.Lock()


def _install_log_filter() -> None:
    # Filters on a logger apply to the records created on it; httpx creates its request lines on
    # the `httpx` logger itself. Installing once per process keeps the filter list short.
    with _LOG_FILTER_LOCK:
        httpx_logger = logging.getLogger("httpx")
        if not any(isinstance(f, _DropUrlQuery) for f in httpx_logger.filters):
            httpx_logger.addFilter(_DropUrlQuery())


_install_log_filter()


# -- the account's task slots ----------------------------------------------------------------


class _AccountSlots:
    """A counting semaphore whose limit can change (the latest client configuration wins)."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._in_use = 0

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def acquire(self, timeout: float | None) -> bool:
        with self._cond:
            ok = self._cond.wait_for(lambda: self._in_use < self._limit, timeout=timeout)
            if ok:
                self._in_use += 1
            return ok

    def release(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify()

    @property
    def in_use(self) -> int:
        return self._in_use


# Process-wide: several clients (or resource instances) of one account share the same slots.
_SLOTS: dict[tuple[str, str], _AccountSlots] = {}
_SLOTS_LOCK = threading.Lock()


def _account_slots(base_url: str, access_key: str, limit: int) -> _AccountSlots:
    # Keyed by a hash so that the registry never holds the key itself.
    key = (base_url, hashlib.sha256(access_key.encode()).hexdigest()[:16])
    with _SLOTS_LOCK:
        slots = _SLOTS.get(key)
        if slots is None:
            slots = _SLOTS[key] = _AccountSlots(limit)
        else:
            slots.set_limit(limit)
        return slots


# -- the client ----------------------------------------------------------------------------------


class KlingClient:
    """KLING's image generation API, with auth, retries, idempotent submits and task slots.

    Thread-safe: one instance per process and account is meant to be shared.

    Args:
        access_key: KLING access key (the JWT's `iss`).
        secret_key: KLING secret key (signs the JWT).
        base_url: API host, e.g. https://api-singapore.klingai.com.
        max_concurrency: Tasks of this account in flight at once in this process.
        request_timeout: Seconds for one HTTP request (read/write/pool).
        connect_timeout: Seconds to open a connection.
        max_attempts: Attempts per call on retryable errors before `KlingTransientError`.
        backoff_base: First back-off in seconds; doubles per attempt, plus up to 50 % jitter.
        backoff_max: Cap of one back-off before jitter.
        slot_wait_timeout: Seconds `task_slot` waits for a free slot.
        lookup_page_size: Page size of the lost-POST lookup in the list endpoint.
        lookup_max_pages: Pages of the list endpoint the lookup reads at most.
        http_client: An httpx.Client to use (e.g. with a MockTransport); closed by `close` only
            when this client created it.
        clock: Wall clock in seconds (JWT times); injectable for tests.
        sleep: Sleep function used between retries; injectable for tests.
    """

    def __init__(
        self,
        access_key: str | SecretStr,
        secret_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        max_concurrency: int = DEFAULT_KLING_MAX_CONCURRENCY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS,
        slot_wait_timeout: float = DEFAULT_SLOT_WAIT_SECONDS,
        lookup_page_size: int = DEFAULT_LOOKUP_PAGE_SIZE,
        lookup_max_pages: int = DEFAULT_LOOKUP_MAX_PAGES,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._access_key = (
            access_key if isinstance(access_key, SecretStr) else SecretStr(access_key)
        )
        self._secret_key = (
            secret_key if isinstance(secret_key, SecretStr) else SecretStr(secret_key)
        )
        if not self._access_key.get_secret_value() or not self._secret_key.get_secret_value():
            raise KlingAccountError("KLING access key or secret key is empty")
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        if not 1 <= lookup_page_size <= 500:
            raise ValueError("lookup_page_size must be 1-500 (KLING's pageSize range)")
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._slot_wait_timeout = slot_wait_timeout
        self._lookup_page_size = lookup_page_size
        self._lookup_max_pages = lookup_max_pages
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=httpx.Timeout(request_timeout, connect=min(connect_timeout, request_timeout)),
            # Enough connections for every slot to poll while others download.
            limits=httpx.Limits(max_connections=max(10, 2 * max_concurrency)),
        )
        self._token_lock = threading.Lock()
        self._token_value: str | None = None
        self._token_expires = 0.0
        self._slots = _account_slots(
            self.base_url, self._access_key.get_secret_value(), max_concurrency
        )

    def __repr__(self) -> str:
        return f"KlingClient(base_url={self.base_url!r}, max_concurrency={self.max_concurrency})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- auth ----------------------------------------------------------------------------------

    def _token(self) -> str:
        """The current JWT, made anew when none exists or it expires within the margin."""
        with self._token_lock:
            now = self._clock()
            if (
                self._token_value is None
                or self._token_expires - now < TOKEN_REFRESH_MARGIN_SECONDS
            ):
                issued = int(now)
                expires = issued + TOKEN_LIFETIME_SECONDS
                self._token_value = jwt.encode(
                    {
                        "iss": self._access_key.get_secret_value(),
                        "exp": expires,
                        "nbf": issued - TOKEN_NOT_BEFORE_SKEW_SECONDS,
                    },
                    self._secret_key.get_secret_value(),
                    algorithm="HS256",
                    headers={"typ": "JWT"},
                )
                self._token_expires = float(expires)
            return self._token_value

    def _drop_token(self, rejected: str) -> None:
        # Only the rejected token: another thread may already have made a fresh one.
        with self._token_lock:
            if self._token_value == rejected:
                self._token_value = None

    # -- one request ---------------------------------------------------------------------------

    def _call_once(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API request (two when a 401 makes us regenerate the token); returns `data`.

        Raises:
            KlingTransientError, KlingAccountError, KlingRequestRejectedError: classified
                per the reference's table; nothing is retried here except the 401.
        """
        regenerated = False
        while True:
            token = self._token()
            try:
                response = self._http.request(
                    method,
                    self.base_url + path,
                    json=json_body,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.ConnectError as err:
                # Nothing reached KLING: safe to repeat, even a POST.
                raise KlingTransientError(
                    f"KLING {what}: cannot connect ({type(err).__name__})"
                ) from err
            except httpx.TransportError as err:
                raise KlingTransientError(
                    f"KLING {what}: network error or timeout ({type(err).__name__})",
                    ambiguous=True,
                ) from err

            body = _json_object(response)
            code = body.get("code") if isinstance(body.get("code"), int) else None
            request_id = str(body["request_id"]) if body.get("request_id") else None
            if response.status_code == 200 and code == 0:
                return body.get("data")
            if response.status_code == 401 or code in AUTH_CODES:
                if not regenerated:
                    logger.debug("KLING %s: HTTP 401 (code %s), regenerating the token", what, code)
                    regenerated = True
                    self._drop_token(token)
                    continue
                raise KlingAccountError(
                    f"KLING rejected the keys (HTTP {response.status_code}, code {code}): check"
                    " KLING_ACCESS_KEY and KLING_SECRET_KEY",
                    http_status=response.status_code,
                    code=code,
                    request_id=request_id,
                )
            raise self._classify(response, code, request_id, body.get("message"), what)

    def _classify(
        self,
        response: httpx.Response,
        code: int | None,
        request_id: str | None,
        server_message: object,
        what: str,
    ) -> KlingError:
        status = response.status_code
        detail = self._scrub(sanitise_message(server_message, limit=200))
        suffix = f" [request_id {request_id}]" if request_id else ""
        common: dict[str, Any] = {"http_status": status, "code": code, "request_id": request_id}
        if code in ACCOUNT_CODES:
            return KlingAccountError(
                f"KLING account error (HTTP {status}, code {code}: {ACCOUNT_CODES[code]});"
                f" stop submitting and check the account{suffix}",
                **common,
            )
        if code in MODERATION_CODES:
            return KlingModerationError(
                f"KLING content moderation rejected the prompt (code {code}:"
                f" {MODERATION_CODES[code]}): {detail or 'no detail given'}{suffix}",
                **common,
            )
        if code in REJECTED_CODES:
            return KlingRequestRejectedError(
                f"KLING rejected the {what} request (HTTP {status}, code {code}:"
                f" {REJECTED_CODES[code]}): {detail or 'no detail given'}{suffix}",
                **common,
            )
        # A 2xx without KLING's envelope is a proxy or gateway glitch: worth another try.
        no_envelope = code is None and status < 400
        if code in RETRYABLE_CODES or status >= 500 or status in (408, 429) or no_envelope:
            meaning = RETRYABLE_CODES.get(code or 0, f"HTTP {status}")
            return KlingTransientError(
                f"KLING {what}: {meaning} (HTTP {status}, code {code}){suffix}",
                retry_after=retry_after_seconds(response.headers),
                ambiguous=status >= 500 or code in _AMBIGUOUS_CODES or status < 400,
                **common,
            )
        return KlingRequestRejectedError(
            f"KLING refused the {what} request (HTTP {status}, code {code}):"
            f" {detail or 'no detail given'}{suffix}",
            **common,
        )

    def _scrub(self, text: str) -> str:
        for secret in (self._access_key, self._secret_key):
            value = secret.get_secret_value()
            if value:
                text = text.replace(value, "<redacted>")
        return text

    # -- retries -------------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        delay = base + self._rng.uniform(0, base / 2)
        if retry_after:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
        return delay

    def _retrying(self, call: Callable[[], T]) -> T:
        """`call()` until it returns or fails with a non-retryable error or runs out of tries."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return call()
            except KlingTransientError as err:
                if attempt == self._max_attempts:
                    raise _gave_up(err, attempt) from err
                delay = self._backoff(attempt, err.retry_after)
                logger.debug(
                    "%s; retrying in %.2fs (attempt %d/%d)", err, delay, attempt, self._max_attempts
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- API -----------------------------------------------------------------------------------

    @contextmanager
    def task_slot(self) -> Iterator[None]:
        """Hold one of the account's task slots; hold it from submit until the task finishes.

        Raises:
            KlingTransientError: no slot became free within `slot_wait_timeout` seconds.
        """
        if not self._slots.acquire(self._slot_wait_timeout):
            raise KlingTransientError(
                f"waited {self._slot_wait_timeout:g}s for one of {self.max_concurrency} KLING"
                " task slots"
            )
        try:
            yield
        finally:
            self._slots.release()

    def submit(
        self,
        prompt: str,
        negative_prompt: str | None,
        aspect_ratio: str,
        external_task_id: str,
        model_name: str = DEFAULT_MODEL,
        n: int = 1,
    ) -> KlingTask:
        """Create a text-to-image task, at most once per `external_task_id`.

        A POST whose outcome is unknown (timeout, dropped connection, 5xx) may have created a
        paid task, so before sending it again the client looks the id up in the recent tasks;
        a 1201 answer (which a duplicate id gets) triggers the same lookup.

        Returns:
            The created (or found) task.

        Raises:
            KlingTransientError: still failing after `max_attempts` tries.
            KlingAccountError: keys, quota, permission or allowlist problems.
            KlingModerationError: the prompt was refused by moderation (1300/1301).
            KlingRequestRejectedError: invalid request (1200-1203).
        """
        body: dict[str, Any] = {
            "model_name": model_name,
            "prompt": prompt,
            "aspect_ratio": aspect_ratio,
            "n": n,
            "external_task_id": external_task_id,
        }
        if negative_prompt:
            body["negative_prompt"] = negative_prompt
        maybe_created = False
        for attempt in range(1, self._max_attempts + 1):
            if maybe_created:
                found = self.find_by_external_task_id(external_task_id)
                if found is not None:
                    logger.info("KLING submit: found task %s after a lost answer", found.task_id)
                    return found
            try:
                data = self._call_once("POST", GENERATIONS_PATH, "submit", json_body=body)
                try:
                    return _task_from_api(data)
                except ValueError as err:
                    raise KlingTransientError(f"KLING submit: {err}", ambiguous=True) from None
            except KlingTransientError as err:
                maybe_created = maybe_created or err.ambiguous
                if attempt == self._max_attempts:
                    raise _gave_up(err, attempt) from err
                delay = self._backoff(attempt, err.retry_after)
                logger.debug(
                    "%s; retrying in %.2fs (attempt %d/%d)", err, delay, attempt, self._max_attempts
                )
                self._sleep(delay)
            except KlingModerationError:
                raise
            except KlingRequestRejectedError as err:
                if err.code == 1201:
                    # A duplicate external_task_id gets 1201: the task may exist already (an
                    # earlier answer of ours, or of a killed process, was lost).
                    found = self.find_by_external_task_id(external_task_id)
                    if found is not None:
                        logger.info("KLING submit: task %s already existed", found.task_id)
                        return found
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def get_task(self, task_id: str) -> KlingTask:
        """Read one task (`GET /v1/images/generations/{task_id}`), retrying transient errors.

        Raises:
            KlingRequestRejectedError: the task does not exist for this account (1203).
            KlingTransientError, KlingAccountError: as for `submit`.
        """
        path = f"{GENERATIONS_PATH}/{quote(task_id, safe='')}"

        def call() -> KlingTask:
            data = self._call_once("GET", path, "task status")
            try:
                return _task_from_api(data)
            except ValueError as err:
                raise KlingTransientError(f"KLING task status: {err}") from None

        return self._retrying(call)

    def list_tasks(self, page: int = 1, page_size: int = 30) -> list[KlingTask]:
        """One page of the account's tasks, newest first (`pageNum` 1-1000, `pageSize` 1-500)."""

        def call() -> list[KlingTask]:
            data = self._call_once(
                "GET",
                GENERATIONS_PATH,
                "task list",
                params={"pageNum": page, "pageSize": page_size},
            )
            if not isinstance(data, list):
                raise KlingTransientError("KLING task list: the answer is not a list")
            tasks = []
            for item in data:
                try:
                    tasks.append(_task_from_api(item))
                except ValueError:
                    continue  # one odd entry must not hide the others
            return tasks

        return self._retrying(call)

    def find_by_external_task_id(self, external_task_id: str) -> KlingTask | None:
        """The task created with `external_task_id`, looked up among the recent tasks.

        Returns:
            The task, or None when it is not among the newest
            `lookup_max_pages * lookup_page_size` tasks (then it was, in practice, never made).
        """
        for page in range(1, self._lookup_max_pages + 1):
            tasks = self.list_tasks(page, self._lookup_page_size)
            for task in tasks:
                if task.external_task_id == external_task_id:
                    return task
            if len(tasks) < self._lookup_page_size:
                break
        return None

    def download(self, url: str | SecretStr) -> bytes:
        """Fetch a result image, retrying every failure; the URL is never logged or shown.

        No Authorization header is sent: image URLs point at a storage host, not at the API.

        Raises:
            KlingTransientError: still failing after `max_attempts` tries.
        """
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url

        def call() -> bytes:
            try:
                response = self._http.get(raw, follow_redirects=True)
            except httpx.TransportError as err:
                raise KlingTransientError(
                    f"KLING image download: network error or timeout ({type(err).__name__})"
                ) from None
            if response.status_code != 200:
                raise KlingTransientError(
                    f"KLING image download: HTTP {response.status_code}",
                    http_status=response.status_code,
                    retry_after=retry_after_seconds(response.headers),
                )
            if not response.content or len(response.content) > MAX_IMAGE_BYTES:
                raise KlingTransientError(
                    f"KLING image download: {len(response.content)} bytes is not a usable size"
                )
            return response.content

        return self._retrying(call)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _gave_up(err: KlingTransientError, attempts: int) -> KlingTransientError:
    return KlingTransientError(
        f"{err} (gave up after {attempts} attempts)",
        http_status=err.http_status,
        code=err.code,
        request_id=err.request_id,
        retry_after=err.retry_after,
        ambiguous=err.ambiguous,
    )
