"""Dagster resources for the OpenAI prompt writer and the OpenAI-compatible image maker.

Pass `api_key` as `dagster.EnvVar("OPENAI_API_KEY")` (or OPENAI_IMAGES_API_KEY): the value is
then read where the resource is used and never appears in the config the UI shows.

No `from __future__ import annotations` here: Dagster reads the field annotations at class
creation to build the config schema, and string annotations break that.
"""

from functools import lru_cache
from typing import ClassVar

from pydantic import Field

from scene_pipeline.providers.base import ImageMaker, PromptWriter
from scene_pipeline.providers.openai_images import (
    DEFAULT_IMAGES_MAX_RETRIES,
    DEFAULT_IMAGES_MODEL,
    DEFAULT_IMAGES_TIMEOUT_SECONDS,
    OpenAIImagesMaker,
)
from scene_pipeline.providers.openai_writer import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_OPENAI_MODEL,
    DEFAULT_TIMEOUT_SECONDS,
    OpenAIPromptWriter,
)
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource

# One SDK client (and its connection pool) per configuration and process: every step of a
# run, and every run of a long-lived process, reuses it instead of opening new connections.
_CACHE_SIZE = 8


@lru_cache(maxsize=_CACHE_SIZE)
def _writer(
    api_key: str, base_url: str | None, model: str, timeout_seconds: float, max_retries: int
) -> OpenAIPromptWriter:
    return OpenAIPromptWriter(
        api_key=api_key,
        base_url=base_url,
        model=model,
        timeout_seconds=timeout_seconds,
        max_retries=max_retries,
    )


@lru_cache(maxsize=_CACHE_SIZE)
def _maker(
    api_key: str, base_url: str | None, model: str, timeout_seconds: float, max_retries: int
) -> OpenAIImagesMaker:
    return OpenAIImagesMaker(
        api_key=api_key,
        base_url=base_url,
        model=model,
        timeout_seconds=timeout_seconds,
        max_retries=max_retries,
    )


class OpenAIPromptWriterResource(PromptWriterResource):
    """Character sheets and scene prompts written by an OpenAI chat model."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})

    api_key: str = Field(description="OpenAI API key (OPENAI_API_KEY); pass it as an EnvVar.")
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base URL ending in /v1 (OPENAI_BASE_URL);"
        " empty: https://api.openai.com/v1.",
    )
    model: str = Field(
        default=DEFAULT_OPENAI_MODEL,
        description="Chat model with structured outputs (OPENAI_MODEL).",
    )
    request_timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_SECONDS, gt=0, le=600, description="Timeout of one HTTP attempt."
    )
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        ge=0,
        le=10,
        description="The client's own retries of rate limits, 5xx and network errors, before"
        " the step's RetryPolicy.",
    )

    def get_writer(self) -> PromptWriter:
        return _writer(
            self.api_key,
            self.base_url or None,
            self.model,
            self.request_timeout_seconds,
            self.max_retries,
        )


class OpenAIImagesMakerResource(ImageMakerResource):
    """Pictures drawn by an OpenAI-compatible images API (gpt-image-1 or a self-hosted one)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})

    api_key: str = Field(
        description="Images API key (OPENAI_IMAGES_API_KEY, else OPENAI_API_KEY); pass it as an"
        " EnvVar."
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible images API base URL ending in /v1"
        " (OPENAI_IMAGES_BASE_URL); empty: https://api.openai.com/v1.",
    )
    model: str = Field(
        default=DEFAULT_IMAGES_MODEL, description="Image model (OPENAI_IMAGES_MODEL)."
    )
    request_timeout_seconds: float = Field(
        default=DEFAULT_IMAGES_TIMEOUT_SECONDS,
        gt=0,
        le=900,
        description="Timeout of one HTTP attempt; pictures take up to a few minutes.",
    )
    max_retries: int = Field(
        default=DEFAULT_IMAGES_MAX_RETRIES,
        ge=0,
        le=10,
        description="The client's own retries; each retry after a timeout may be billed.",
    )

    def get_maker(self) -> ImageMaker:
        return _maker(
            self.api_key,
            self.base_url or None,
            self.model,
            self.request_timeout_seconds,
            self.max_retries,
        )
