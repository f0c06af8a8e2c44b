"""How a provider failure is classified decides what the pipeline does next.

Messages are shown to operators and written to manifests: they never contain keys, tokens or
signed URLs.
"""

from __future__ import annotations


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
