"""How a provider failure is classified decides what the pipeline does next.

Messages are shown to operators and written to manifests: they never contain keys, tokens or
signed URLs.
"""

from __future__ import annotations

from collections.abc import Mapping


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


class ProviderError(Exception):
    """Base class; `str(err)` is a short, secret-free message."""


class TransientProviderError(ProviderError):
    """Rate limits, server errors, network errors: worth another try later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SceneRejectedError(ProviderError):
    """This scene cannot be done as asked (moderation, refusal, invalid request): fail it alone."""


class AccountError(ProviderError):
    """The account cannot work (bad keys, quota, permission, IP allowlist): stop submitting."""
