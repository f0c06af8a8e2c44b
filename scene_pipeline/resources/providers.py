"""Resources that choose a prompt writer and an image maker; the assets see only these bases."""

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from dagster import ConfigurableResource
from pydantic import Field

from scene_pipeline.constants import DEFAULT_PROMPT_CAP, KLING_PROMPT_LIMIT
from scene_pipeline.providers.base import ImageMaker, PromptWriter, ProviderIdentity
from scene_pipeline.providers.offline import PlaceholderImageMaker, TemplatePromptWriter


class ProviderResource(ConfigurableResource, ABC):
    """A provider's configuration; the fields named in `secret_fields` hold keys."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __repr_args__(self) -> Any:
        # Resolved keys must not show up in reprs (logs, tracebacks, debuggers).
        for name, value in super().__repr_args__():
            yield name, ("**********" if name in self.secret_fields else value)


class PromptWriterResource(ProviderResource):
    """Writes the character sheet and one English image prompt per scene."""

    max_prompt_chars: int = Field(
        default=DEFAULT_PROMPT_CAP,
        ge=100,
        le=KLING_PROMPT_LIMIT,
        description="Cap on an image prompt's length (SCENE_PIPELINE_PROMPT_MAX_CHARS); KLING"
        " accepts at most 2500.",
    )

    @abstractmethod
    def get_writer(self) -> PromptWriter: ...

    @property
    def identity(self) -> ProviderIdentity:
        return self.get_writer().identity


class ImageMakerResource(ProviderResource):
    """Draws one picture per scene prompt."""

    @abstractmethod
    def get_maker(self) -> ImageMaker: ...

    @property
    def identity(self) -> ProviderIdentity:
        return self.get_maker().identity


class OfflinePromptWriterResource(PromptWriterResource):
    """Deterministic template prompts, used when OPENAI_API_KEY is not set."""

    def get_writer(self) -> PromptWriter:
        return TemplatePromptWriter()


class OfflineImageMakerResource(ImageMakerResource):
    """Labelled placeholder PNGs drawn with Pillow, used when no image provider keys are set."""

    long_side: int = Field(default=768, ge=64, le=4096, description="Long side in pixels.")

    def get_maker(self) -> ImageMaker:
        return PlaceholderImageMaker(long_side=self.long_side)
