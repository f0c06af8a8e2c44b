"""Interfaces of prompt writers and image makers, and the data they exchange."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from scene_pipeline.contract.outputs import ImageProvenance, Usage
from scene_pipeline.contract.script import Character, Scene, Script


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ProviderIdentity(_Model):
    """What a provider's output depends on besides its input: part of every content hash.

    Built from configuration alone (never by constructing a client)."""

    provider: str
    model: str
    version: str
    offline: bool = False

    def label(self) -> str:
        suffix = " (OFFLINE placeholder)" if self.offline else ""
        return f"{self.provider}/{self.model}{suffix}"


class CharacterLook(_Model):
    """A character's canonical English visual description, used instead of the name."""

    name: str
    look: str


class WrittenSheet(_Model):
    looks: list[CharacterLook]
    usage: Usage | None = None
    model: str


class ScenePromptRequest(_Model):
    """Everything a prompt writer may read for one scene. All script text is untrusted data."""

    script_title: str
    scene: Scene
    previous_scene: Scene | None
    next_scene: Scene | None
    characters: list[Character] = Field(description="Characters involved, in script order.")
    looks: list[CharacterLook]
    style: str | None
    aspect_ratio: str
    max_prompt_chars: int


class WrittenPrompt(_Model):
    image_prompt: str
    negative_prompt: str
    characters_present: list[str] = Field(
        default_factory=list,
        description="Names of the involved characters in the picture, most prominent first.",
    )
    usage: Usage | None = None
    model: str


class PromptWriter(Protocol):
    identity: ProviderIdentity

    def write_character_sheet(self, script: Script) -> WrittenSheet:
        """One call per script: a look for every character."""
        ...

    def write_scene_prompt(self, request: ScenePromptRequest) -> WrittenPrompt:
        """One call per scene. Raises ProviderError subclasses (see providers.errors)."""
        ...


class ImageRequest(_Model):
    script_id: str
    kind: Literal["scene", "portrait"] = "scene"
    subject: str = Field(description="What is drawn, for messages: 'scene 3', 'portrait of …'.")
    content_hash: str
    prompt: str
    negative_prompt: str
    aspect_ratio: str
    external_task_id: str
    references: list[bytes] = Field(
        default_factory=list, description="Reference portraits (PNG), most prominent first."
    )
    n: int = Field(default=1, ge=1, le=9, description="Candidates to draw in one task.")


class GeneratedImage(_Model):
    pngs: list[bytes] = Field(description="One PNG per candidate, k = 1..n.")
    provenance: ImageProvenance


class TaskJournal(Protocol):
    """Durable note of a paid task in flight, so that a retried or resumed step polls it
    instead of paying for a second one."""

    def load(self) -> dict[str, str] | None: ...

    def save(self, entry: dict[str, str]) -> None: ...

    def clear(self) -> None: ...


class SlotGate(Protocol):
    """The account's parallel-task slots, shared by every process that draws."""

    def hold(self, count: int) -> AbstractContextManager[None]:
        """Wait for `count` slots and hold them for the `with` block."""
        ...


class NoSlots:
    """A SlotGate for providers without an account limit (offline, synchronous APIs)."""

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        del count
        yield


class ImageMaker(Protocol):
    identity: ProviderIdentity
    #: How many reference portraits one request may carry (0: text only).
    max_references: int

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        """Draw `request.n` pictures. Raises ProviderError subclasses (see providers.errors)."""
        ...
