"""The OpenAI SDK client that both OpenAI providers use (chat for prompts, images for pictures).

The SDK is imported here, on first use: a process that never talks to OpenAI (offline mode,
KLING only) does not pay for importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from openai import OpenAI

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT_SECONDS = 10.0


def openai_client(
    api_key: str,
    base_url: str | None,
    timeout_seconds: float,
    max_retries: int,
    http_client: httpx.Client | None = None,
) -> OpenAI:
    """An SDK client. The base URL is passed explicitly (the SDK would otherwise read
    OPENAI_BASE_URL itself, behind the settings' back). `max_retries` is the SDK's own retry
    budget (408/409/429/5xx and connection errors, with back-off and Retry-After): the one
    retry loop of these calls."""
    from openai import OpenAI

    return OpenAI(
        api_key=api_key,
        base_url=base_url or DEFAULT_BASE_URL,
        timeout=httpx.Timeout(
            timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds)
        ),
        max_retries=max_retries,
        http_client=http_client,
    )


class LazyOpenAI:
    """An SDK client built on first use. Importing the SDK costs about a second: a step
    that reuses every prompt (a forced redraw, a re-run of the sheet) never pays it."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None,
        timeout_seconds: float,
        max_retries: int,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url or DEFAULT_BASE_URL
        self._build = lambda: openai_client(
            api_key, base_url, timeout_seconds, max_retries, http_client
        )
        self._client: OpenAI | None = None

    def get(self) -> OpenAI:
        if self._client is None:
            self._client = self._build()
        return self._client
