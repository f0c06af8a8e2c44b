"""What the pipeline writes back for the backend (../shared/contract/outputs.md), as code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scene_pipeline.contract.script_parsing import ContractError

SceneStatus = Literal["succeeded", "failed", "pending", "removed"]
ScriptStatus = Literal["complete", "partial", "failed"]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SourceRef(_Model):
    """The inbox object (or local file) a script version came from."""

    key: str
    etag: str | None = None


class Usage(_Model):
    """Token usage an LLM call reported."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class PromptProvenance(_Model):
    """Who wrote an image prompt, and what it cost."""

    provider: str
    model: str
    writer_version: str
    offline: bool = False
    usage: Usage | None = None
    input_hash: str = Field(description="Hash of every input the writer was given.")
    duration_seconds: float | None = None


class ImageProvenance(_Model):
    """Who drew an image, and what it cost."""

    provider: str
    model: str
    offline: bool = False
    task_id: str | None = None
    external_task_id: str | None = None
    attempts: int = 1
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    final_unit_deduction: str | None = Field(
        default=None, description="KLING's billed units for the task, when it reports them."
    )
    width: int | None = None
    height: int | None = None


PromptSource = Literal["written", "override"]
PortraitSource = Literal["drawn", "uploaded"]


class ImageRecord(_Model):
    """What every stored generation's `.json` record holds: the request and its cost."""

    script_id: str
    generation: str
    content_hash: str = Field(description="Hash of everything the picture was drawn from.")
    image_prompt: str
    negative_prompt: str
    image_key: str = Field(description="Key of candidate 1 (the only one when n = 1).")
    image_s3url: str
    candidates: list[str] = Field(
        default_factory=list, description="URIs of every image of this generation, k = 1.."
    )
    image: ImageProvenance
    created_at: datetime


class GenerationRecord(ImageRecord):
    """`results/{script_id}/scenes/{scene_id}/{generation}.json`: one drawn scene."""

    scene_id: str
    prompt: PromptProvenance | None = None
    prompt_source: PromptSource = "written"
    source_hash: str | None = None
    prompt_hash: str | None = None
    config_hash: str | None = None
    characters: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    forced: bool = False


class PortraitRecord(ImageRecord):
    """`results/{script_id}/characters/{character_key}/{generation}.json`: one portrait."""

    name: str
    character_key: str
    source: PortraitSource
    look_hash: str | None = Field(
        default=None, description="What the portrait shows (its look and style), not who drew it."
    )


class SceneEntry(_Model):
    """One scene of `manifest.json`; the first three fields are the earlier service's response."""

    scene_id: str
    image_prompt: str | None = None
    image_s3url: str | None = None
    status: SceneStatus
    negative_prompt: str | None = None
    provider: str | None = None
    model: str | None = None
    offline: bool = False
    content_hash: str | None = None
    generation: str | None = None
    generated_at: datetime | None = None
    error: str | None = None
    prompt_source: PromptSource | None = None
    characters: list[str] = Field(
        default_factory=list, description="Who is in the picture, most prominent first."
    )
    references: list[str] = Field(
        default_factory=list, description="Portrait URIs sent with the image request, in order."
    )
    candidates: list[str] = Field(default_factory=list)
    picked: int | None = Field(default=None, description="Which candidate (from 1) is shown.")
    refused: bool = Field(
        default=False,
        description="Refused for its content (moderation): not requested again until the"
        " scene's content or its prompt override changes.",
    )
    # What the entry was made from: the planner compares these to decide what is due.
    source_hash: str | None = None
    prompt_hash: str | None = None
    config_hash: str | None = None


class CharacterEntry(_Model):
    """One character's reference portrait in `manifest.json`."""

    name: str
    character_key: str
    portrait_s3url: str | None = None
    source: PortraitSource | None = None
    status: Literal["succeeded", "failed", "pending"]
    generated_at: datetime | None = None
    error: str | None = None
    content_hash: str | None = None
    generation: str | None = None


class ProviderInfo(_Model):
    prompt_writer: str
    image_maker: str
    offline: bool


class Manifest(_Model):
    """`results/{script_id}/manifest.json`, rewritten after every run that touches the script."""

    script_id: str
    title: str
    source: SourceRef | None = None
    status: ScriptStatus
    updated_at: datetime
    providers: ProviderInfo
    offline: bool = Field(
        description="True when any scene's prompt or image came from an offline placeholder."
    )
    notice: str | None = None
    scenes: list[SceneEntry]
    characters: list[CharacterEntry] = Field(default_factory=list)

    @staticmethod
    def status_of(scenes: list[SceneEntry]) -> ScriptStatus:
        live = [s for s in scenes if s.status != "removed"]
        succeeded = sum(1 for s in live if s.status == "succeeded")
        if live and succeeded == len(live):
            return "complete"
        return "partial" if succeeded else "failed"


class RejectionReport(_Model):
    """`scripts/rejected/{inbox object name}.error.json`: why a drop was not accepted."""

    source: SourceRef
    rejected_at: datetime
    errors: list[ContractError]
    message: str = "The script was rejected; nothing was generated. Fix the errors and re-upload."
