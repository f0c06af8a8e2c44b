"""OpenAI SDK errors mapped onto the pipeline's failure kinds (providers/errors.py), for both
OpenAI providers. The SDK has already retried what it retries (408/409/429/5xx, connection
errors, honouring Retry-After); what reaches here is what it gave up on."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from scene_pipeline.providers.errors import (
    AccountError,
    ProviderError,
    SceneRejectedError,
    TransientProviderError,
)

if TYPE_CHECKING:
    import openai

# Error details quoted from a server are kept short (and scrubbed of secrets).
MAX_DETAIL_CHARS = 300

_KEY_LIKE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


def scrub(text: str, secret: str | None) -> str:
    """Remove the key and anything shaped like an OpenAI key from a server's message."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:MAX_DETAIL_CHARS]


def _detail(err: openai.APIStatusError, secret: str | None) -> str:
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    parts = [f"HTTP {err.status_code}"]
    if err.code:
        parts.append(f"code {err.code}")
    if err.request_id:
        parts.append(f"request {err.request_id}")
    detail = ", ".join(parts)
    if isinstance(message, str) and message.strip():
        detail += f": {scrub(message, secret)}"
    return detail


_POLICY_CODES = {"content_policy_violation", "moderation_blocked", "content_filter"}


def _is_policy_error(err: openai.APIStatusError) -> bool:
    text = f"{err.code or ''} {err.type or ''} {_message_of(err)}".lower()
    return (
        any(code in text for code in _POLICY_CODES)
        or "safety system" in text
        or "content policy" in text
    )


def _message_of(err: openai.APIStatusError) -> str:
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else ""


def map_openai_error(err: openai.OpenAIError, what: str, secret: str | None) -> ProviderError:
    """Classify an SDK error (after the SDK's own retries) for the pipeline.

    The returned error's message says `what` failed and why, quoting at most a short,
    scrubbed part of the server's message; it never contains the key. Raise it `from None`:
    the SDK's exception text quotes the whole response body, which some servers fill with the
    key they were given.
    """
    import openai  # loaded already: `err` is one of its errors

    if isinstance(err, openai.RateLimitError):
        if err.code == "insufficient_quota":
            return AccountError(f"{what}: OpenAI quota exhausted ({_detail(err, secret)})")
        return TransientProviderError(f"{what}: rate limited ({_detail(err, secret)})")
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return AccountError(f"{what}: the API key was not accepted ({_detail(err, secret)})")
    if isinstance(err, openai.NotFoundError):
        # Wrong model name or base URL: every call will fail the same way.
        return AccountError(f"{what}: model or endpoint not found ({_detail(err, secret)})")
    if isinstance(err, openai.InternalServerError):
        return TransientProviderError(f"{what}: server error ({_detail(err, secret)})")
    if isinstance(err, openai.APIStatusError) and err.status_code in (408, 409):
        return TransientProviderError(f"{what}: server busy ({_detail(err, secret)})")
    if isinstance(err, openai.APITimeoutError):
        return TransientProviderError(f"{what}: request timed out")
    if isinstance(err, openai.APIConnectionError):
        cause = type(err.__cause__).__name__ if err.__cause__ else "connection error"
        return TransientProviderError(f"{what}: could not reach the server ({cause})")
    if isinstance(err, openai.ContentFilterFinishReasonError):
        return SceneRejectedError(f"{what}: stopped by the provider's content filter", refused=True)
    if isinstance(err, openai.LengthFinishReasonError):
        return TransientProviderError(f"{what}: the answer was cut off at the token limit")
    if isinstance(err, openai.APIResponseValidationError):
        return TransientProviderError(f"{what}: the server's answer was malformed")
    if isinstance(err, openai.APIStatusError):
        if _is_policy_error(err):
            return SceneRejectedError(
                f"{what}: rejected by the provider's content policy ({_detail(err, secret)})",
                refused=True,
            )
        # Other 4xx: this request cannot succeed as sent (e.g. context too long).
        return SceneRejectedError(f"{what}: request rejected ({_detail(err, secret)})")
    return TransientProviderError(f"{what}: {type(err).__name__}")
