"""What the pipeline's steps hand to each other (stored as JSON by the IO managers)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from scene_pipeline.contract.outputs import PromptProvenance, SourceRef
from scene_pipeline.contract.script import Character, Scene, Script, ScriptShape
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


class CharacterSheet(_Model):
    """Canonical English looks of a script's characters, written once per script version."""

    script_id: str
    input_hash: str
    looks: list[CharacterLook]
    provenance: PromptProvenance


class ScenePlan(_Model):
    """One scene that needs a new prompt and image in this run."""

    script_id: str
    script_title: str
    scene: Scene
    previous_scene: Scene | None
    next_scene: Scene | None
    characters: list[Character]
    style: str | None
    aspect_ratio: str
    content_hash: str
    generation: str
    external_task_id: str
    forced: bool


class ScenePrompt(_Model):
    """The prompt step's answer for one scene: a prompt, or why there is none."""

    plan: ScenePlan
    image_prompt: str | None = None
    negative_prompt: str | None = None
    provenance: PromptProvenance | None = None
    reused: bool = False
    error: str | None = None


class PromptEntry(_Model):
    """One row of the `scene_prompts` asset."""

    scene_id: str
    content_hash: str | None
    status: Literal["written", "reused", "failed", "not in this run"]
    image_prompt: str | None = None
    negative_prompt: str | None = None
    provider: str | None = None
    model: str | None = None
    error: str | None = None
