"""The KLING client's own errors, and how an answer maps onto them (../shared/reference/
kling-api.md, "Errors"). Nothing here knows about the pipeline: `providers/kling.py` maps these
onto the pipeline's failure kinds.

Messages are short and secret-free: server text is scrubbed of URLs and tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

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
AMBIGUOUS_CODES: Final = frozenset({5000, 5001, 5002})


class KlingError(Exception):
    """Base of this client's errors; `str(err)` is short and free of secrets.

    Attributes:
        http_status: HTTP status of KLING's answer, if there was one.
        code: KLING's `code` field, if the answer had one.
        request_id: KLING's `request_id`, to quote to their support.
        retry_after: seconds the server asked us to wait, if it said.
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


class KlingTransientError(KlingError):
    """Rate limit, concurrency limit, server or network error: worth retrying."""


class KlingDownloadError(KlingTransientError):
    """A result image could not be fetched; a 403/404 means its temporary URL expired."""

    @property
    def url_expired(self) -> bool:
        return self.http_status in (403, 404)


class KlingAccountError(KlingError):
    """Bad keys, no quota, no permission, IP not allowed: nothing will work for a while."""


class KlingRequestError(KlingError):
    """KLING refused this request (invalid parameters, unknown resource): a bug or bad data."""


class KlingModerationError(KlingRequestError):
    """KLING's platform policy or content moderation refused the prompt."""


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a rate-limited answer asks for (`retry-after-ms` or `retry-after` seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP date: rare for APIs; the caller's own back-off applies
        if value >= 0:
            return value
    return None


_URL_RE = re.compile(r"\bhttps?://\S+", re.IGNORECASE)
_JWT_RE = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def sanitise_message(text: object, limit: int = 300) -> str:
    """A server-provided message made safe to show: no URLs, no tokens, one short line."""
    out = _URL_RE.sub("<url>", str(text or ""))
    out = _JWT_RE.sub("<token>", out)
    out = _CONTROL_RE.sub(" ", out).strip()
    return out if len(out) <= limit else out[: limit - 1] + "…"


def classify(
    status: int,
    code: int | None,
    request_id: str | None,
    detail: str,
    what: str,
    retry_after: float | None,
) -> KlingError:
    """The error for an answer that is not `200 / code 0` (auth is handled by the caller)."""
    suffix = f" [request_id {request_id}]" if request_id else ""
    common: dict[str, object] = {"http_status": status, "code": code, "request_id": request_id}
    if code in ACCOUNT_CODES:
        return KlingAccountError(
            f"KLING account error (HTTP {status}, code {code}: {ACCOUNT_CODES[code]});"
            f" stop submitting and check the account{suffix}",
            **common,  # type: ignore[arg-type]
        )
    if code in MODERATION_CODES:
        return KlingModerationError(
            f"KLING content moderation rejected the prompt (code {code}:"
            f" {MODERATION_CODES[code]}): {detail or 'no detail given'}{suffix}",
            **common,  # type: ignore[arg-type]
        )
    if code in REJECTED_CODES:
        return KlingRequestError(
            f"KLING rejected the {what} request (HTTP {status}, code {code}:"
            f" {REJECTED_CODES[code]}): {detail or 'no detail given'}{suffix}",
            **common,  # type: ignore[arg-type]
        )
    # A 2xx without KLING's envelope is a proxy or gateway glitch: worth another try.
    no_envelope = code is None and status < 400
    if code in RETRYABLE_CODES or status >= 500 or status in (408, 429) or no_envelope:
        meaning = RETRYABLE_CODES.get(code or 0, f"HTTP {status}")
        return KlingTransientError(
            f"KLING {what}: {meaning} (HTTP {status}, code {code}){suffix}",
            retry_after=retry_after,
            ambiguous=status >= 500 or code in AMBIGUOUS_CODES or status < 400,
            **common,  # type: ignore[arg-type]
        )
    return KlingRequestError(
        f"KLING refused the {what} request (HTTP {status}, code {code}):"
        f" {detail or 'no detail given'}{suffix}",
        **common,  # type: ignore[arg-type]
    )
