"""What the pipeline keeps for itself and what its steps hand to each other (JSON in the
bucket, never pickled). The backend's contract is in contract/; these are internal."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scene_pipeline.contract.outputs import (
    CharacterEntry,
    PromptProvenance,
    PromptSource,
    SceneEntry,
    SourceRef,
)
from scene_pipeline.contract.script import Character, Scene, Script
from scene_pipeline.contract.script_parsing import ScriptShape
from scene_pipeline.providers.base import CharacterLook


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class AcceptedScript(_Model):
    """A validated, normalised script version and where it came from."""

    script: Script
    source: SourceRef
    shape: ScriptShape
    accepted_at: datetime
    source_last_modified: datetime | None = None


# -- character sheet -------------------------------------------------------------------------


class SheetLook(_Model):
    """One character's look, with what it was written from."""

    name: str
    look: str
    input_hash: str = Field(description="Hash of the character's own data and the writer.")
    fallback: bool = Field(
        default=False, description="From the template because the writer failed: rewritten later."
    )


class CharacterSheet(_Model):
    """Canonical English looks of a script's characters (kept per character across versions)."""

    script_id: str
    looks: list[SheetLook]
    provenance: PromptProvenance | None = None
    status: Literal["written", "reused", "template fallback", "no characters"] = "reused"

    def character_looks(self) -> list[CharacterLook]:
        return [CharacterLook(name=look.name, look=look.look) for look in self.looks]

    @property
    def fallback(self) -> bool:
        return any(look.fallback for look in self.looks)


# -- portraits -------------------------------------------------------------------------------


class Portrait(_Model):
    """A character's reference portrait as scenes use it (drawn or uploaded)."""

    name: str
    character_key: str
    content_hash: str
    generation: str | None = None
    image_key: str | None = None
    uri: str | None = None
    source: Literal["drawn", "uploaded"] = "drawn"
    status: Literal["succeeded", "failed", "pending"] = "succeeded"
    error: str | None = None
    created_at: datetime | None = None

    def entry(self) -> CharacterEntry:
        return CharacterEntry(
            name=self.name,
            character_key=self.character_key,
            portrait_s3url=self.uri,
            source=self.source,
            status=self.status,
            generated_at=self.created_at,
            error=self.error,
            content_hash=self.content_hash,
            generation=self.generation,
        )


class PortraitPlan(_Model):
    """One portrait to draw in this run."""

    script_id: str
    name: str
    character_key: str
    look: str
    style: str | None
    content_hash: str
    generation: str
    external_task_id: str
    forced: bool = False


# -- scenes ----------------------------------------------------------------------------------


class PromptChoice(_Model):
    """A scene's image prompt, known before drawing: written earlier, or an override."""

    image_prompt: str
    negative_prompt: str
    characters_present: list[str]
    source: PromptSource
    provenance: PromptProvenance | None = None


class StoredPrompt(_Model):
    """`pipeline/prompts/{script}/{scene}/{prompt_hash}.json`: a written prompt, reused for the
    same inputs (the same inputs never cost a second call)."""

    script_id: str
    scene_id: str
    prompt_hash: str
    image_prompt: str
    negative_prompt: str
    characters_present: list[str] = Field(default_factory=list)
    provenance: PromptProvenance


class ScenePlan(_Model):
    """One scene this run renders: its prompt (when known) and what it is drawn from."""

    script_id: str
    script_title: str
    scene: Scene
    previous_scene: Scene | None
    next_scene: Scene | None
    characters: list[Character]
    looks: list[CharacterLook]
    style: str | None
    aspect_ratio: str
    source_hash: str
    config_hash: str
    prompt_hash: str
    prompt: PromptChoice | None = None
    references_on: bool
    candidates: int = 1
    forced: bool = False
    planned_at: datetime = Field(description="When the plan was made: part of generation names.")
    root_run_id: str = Field(description="Re-executions share it: generations stay the same.")
    drawn: dict[str, str] = Field(
        default_factory=dict, description="image hash -> record key of this scene's generations"
    )


class SceneOutcome(_Model):
    """What rendering one scene produced: its manifest entry and its prompt, for the UI."""

    entry: SceneEntry
    prompt_status: Literal["written", "reused", "override", "failed", "not written"]
    tokens: int = 0
    thumbnails: list[str] = Field(default_factory=list, description="data URIs, k = 1..n")


class CarriedScenes(_Model):
    """The scenes a run leaves as they are, and why those that are stale are (they were drawn
    under another configuration and wait for an explicit redraw)."""

    entries: list[SceneEntry]
    stale: dict[str, str] = Field(default_factory=dict, description="scene id -> why")
