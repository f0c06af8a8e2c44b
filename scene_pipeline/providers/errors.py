"""How a provider failure is classified decides what the pipeline does next, the same way in
every asset (see scene_pipeline/core/outcomes.py):

- TransientProviderError: the client already retried within its budget; the step's
  RetryPolicy tries again later, and after its last attempt the scene (or portrait) fails.
- SceneRejectedError: this request cannot succeed as asked; it fails alone, at once.
  `refused` marks a content-moderation refusal: not requested again until the content changes.
- AccountError: the account cannot work; the run stops calling this provider.

Messages are shown to operators and written to manifests: they never contain keys, tokens or
signed URLs.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class; `str(err)` is a short, secret-free message."""


class TransientProviderError(ProviderError):
    """Rate limits, server errors, network errors: worth another try later."""


class SceneRejectedError(ProviderError):
    """This request cannot be done as asked (moderation, refusal, invalid request, a task that
    kept failing or timed out): fail it alone."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class AccountError(ProviderError):
    """The account cannot work (bad keys, quota, permission, IP allowlist): stop submitting."""
