"""Resources that configure the prompt writer and the image maker; the assets see only the two
bases. Identities come from configuration (no client is built for them), and each provider
object is built once per resource instance, on first use, with its SDK imported then.

Secrets (`secret_fields`) are passed as `dagster.EnvVar`s in definitions.py, so the UI shows
variable names only, and they are masked in reprs.

No `from __future__ import annotations` here: Dagster reads the field annotations at class
creation to build the config schema, and string annotations break that.
"""

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from scene_pipeline.constants import KLING_MAX_REFERENCES, KLING_PROMPT_LIMIT
from scene_pipeline.core.planning_inputs import Providers
from scene_pipeline.providers import identities
from scene_pipeline.providers.base import ImageMaker, PromptWriter, ProviderIdentity


class ProviderResource(ConfigurableResource, ABC):
    """A provider's configuration; the fields named in `secret_fields` hold keys."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __repr_args__(self) -> Any:
        # Resolved keys must not show up in reprs (logs, tracebacks, debuggers).
        for name, value in super().__repr_args__():
            yield name, ("**********" if name in self.secret_fields else value)


# -- prompt writers --------------------------------------------------------------------------


class PromptWriterResource(ProviderResource):
    """Writes the character sheet and one English image prompt per scene."""

    max_prompt_chars: int = Field(
        default=1500,
        ge=100,
        le=KLING_PROMPT_LIMIT,
        description="Cap on an image prompt's length (SCENE_PIPELINE_PROMPT_MAX_CHARS); KLING"
        " accepts at most 2500.",
    )
    _writer: PromptWriter | None = PrivateAttr(default=None)

    @property
    @abstractmethod
    def identity(self) -> ProviderIdentity: ...

    @abstractmethod
    def _build(self) -> PromptWriter: ...

    def get_writer(self) -> PromptWriter:
        if self._writer is None:
            self._writer = self._build()
        return self._writer


class OfflinePromptWriterResource(PromptWriterResource):
    """Deterministic template prompts, used when OPENAI_API_KEY is not set."""

    @property
    def identity(self) -> ProviderIdentity:
        return identities.TEMPLATE_WRITER

    def _build(self) -> PromptWriter:
        from scene_pipeline.providers.offline import TemplatePromptWriter

        return TemplatePromptWriter()


class OpenAIPromptWriterResource(PromptWriterResource):
    """Character sheets and scene prompts written by an OpenAI chat model."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})

    api_key: str = Field(description="OpenAI API key (OPENAI_API_KEY); pass it as an EnvVar.")
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base URL ending in /v1 (OPENAI_BASE_URL);"
        " empty: https://api.openai.com/v1.",
    )
    model: str = Field(default="gpt-4.1-mini", description="Chat model (OPENAI_MODEL).")
    request_timeout_seconds: float = Field(
        default=60.0, gt=0, le=600, description="Timeout of one HTTP attempt."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="The SDK's own retries of rate limits, 5xx and network errors (the one"
        " retry loop of these calls); the step's RetryPolicy handles what remains.",
    )

    @property
    def identity(self) -> ProviderIdentity:
        return identities.openai_writer(self.model)

    def _build(self) -> PromptWriter:
        from scene_pipeline.providers.openai_writer import OpenAIPromptWriter

        return OpenAIPromptWriter(
            api_key=self.api_key,
            base_url=self.base_url or None,
            model=self.model,
            timeout_seconds=self.request_timeout_seconds,
            max_retries=self.max_retries,
        )


# -- image makers ----------------------------------------------------------------------------


class ImageMakerResource(ProviderResource):
    """Draws pictures: reference portraits and one task of n candidates per scene."""

    references: bool = Field(
        default=True,
        description="Pass the portraits of the characters present with each scene's request"
        " (SCENE_PIPELINE_CHARACTER_REFERENCES).",
    )
    _maker: ImageMaker | None = PrivateAttr(default=None)

    @property
    @abstractmethod
    def identity(self) -> ProviderIdentity: ...

    @property
    def max_references(self) -> int:
        return KLING_MAX_REFERENCES if self.references else 0

    @abstractmethod
    def _build(self) -> ImageMaker: ...

    def get_maker(self) -> ImageMaker:
        if self._maker is None:
            self._maker = self._build()
        return self._maker


class OfflineImageMakerResource(ImageMakerResource):
    """Labelled placeholder PNGs drawn with Pillow, used when no image provider keys are set."""

    long_side: int = Field(default=768, ge=64, le=4096, description="Long side in pixels.")

    @property
    def identity(self) -> ProviderIdentity:
        return identities.PLACEHOLDER_MAKER

    def _build(self) -> ImageMaker:
        from scene_pipeline.providers.offline import PlaceholderImageMaker

        return PlaceholderImageMaker(long_side=self.long_side)


class KlingImageMakerResource(ImageMakerResource):
    """Pictures drawn with KLING (KLING_ACCESS_KEY, KLING_SECRET_KEY)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_key", "secret_key"})

    access_key: str = Field(description="KLING access key; pass dg.EnvVar('KLING_ACCESS_KEY').")
    secret_key: str = Field(description="KLING secret key; pass dg.EnvVar('KLING_SECRET_KEY').")
    base_url: str = Field(
        default="https://api-singapore.klingai.com",
        description="API host (KLING_API_BASE_URL): api-singapore (global accounts),"
        " api-beijing (China accounts) or the legacy api.klingai.com.",
    )
    model: str = Field(default="kling-v2-1", description="Text-to-image model (KLING_MODEL).")
    reference_model: str = Field(
        default="kling-v2",
        description="Model of multi-image2image, for scenes with reference portraits"
        " (KLING_REFERENCE_MODEL).",
    )
    task_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A task not finished this long after we start polling it fails its scene"
        " (KLING_TASK_TIMEOUT_SECONDS); the next run looks at it again before paying anew.",
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, description="Pause between two polls of a task."
    )
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Timeout of one HTTP request to KLING."
    )
    max_request_attempts: int = Field(
        default=6, ge=1, le=20, description="Requests per call on retryable errors."
    )
    backoff_base_seconds: float = Field(
        default=1.0, gt=0, description="First back-off; doubles per attempt, with jitter."
    )
    max_resubmits: int = Field(
        default=2, ge=0, le=10, description="New (paid) tasks after a task fails (not moderation)."
    )

    @property
    def identity(self) -> ProviderIdentity:
        return identities.kling(self.model, self.reference_model if self.references else None)

    def _build(self) -> ImageMaker:
        from scene_pipeline.clients.kling import KlingClient
        from scene_pipeline.providers.kling import KlingImageMaker

        client = KlingClient(
            self.access_key,
            self.secret_key,
            base_url=self.base_url,
            request_timeout=self.request_timeout_seconds,
            max_attempts=self.max_request_attempts,
            backoff_base=self.backoff_base_seconds,
        )
        return KlingImageMaker(
            client,
            model=self.model,
            reference_model=self.reference_model if self.references else None,
            task_timeout_seconds=self.task_timeout_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            max_resubmits=self.max_resubmits,
        )


class OpenAIImagesMakerResource(ImageMakerResource):
    """Pictures drawn by an OpenAI-compatible images API (gpt-image-1 or a self-hosted one)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})

    api_key: str = Field(description="Images API key; pass it as an EnvVar.")
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (OPENAI_IMAGES_BASE_URL)."
    )
    model: str = Field(default="gpt-image-1", description="Image model (OPENAI_IMAGES_MODEL).")
    request_timeout_seconds: float = Field(
        default=180.0, gt=0, le=900, description="Timeout of one HTTP attempt."
    )
    max_retries: int = Field(
        default=1, ge=0, le=10, description="The SDK's retries; each after a timeout may be billed."
    )

    @property
    def identity(self) -> ProviderIdentity:
        return identities.openai_images(self.model)

    def _build(self) -> ImageMaker:
        from scene_pipeline.providers.openai_images import OpenAIImagesMaker

        return OpenAIImagesMaker(
            api_key=self.api_key,
            base_url=self.base_url or None,
            model=self.model,
            timeout_seconds=self.request_timeout_seconds,
            max_retries=self.max_retries,
        )


def planning_providers(writer: PromptWriterResource, maker: ImageMakerResource) -> Providers:
    """What the configured providers mean for planning."""
    return Providers(
        writer=writer.identity,
        maker=maker.identity,
        references_on=maker.max_references > 0,
        max_references=maker.max_references,
        prompt_cap=writer.max_prompt_chars,
    )
