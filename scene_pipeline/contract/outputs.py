"""What the pipeline writes back for the backend (../shared/contract/outputs.md), as code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scene_pipeline.contract.script import ContractError

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


class GenerationRecord(_Model):
    """`results/{script_id}/scenes/{scene_id}/{generation}.json`: one drawn image."""

    script_id: str
    scene_id: str
    generation: str
    content_hash: str
    image_prompt: str
    negative_prompt: str
    image_key: str
    image_s3url: str
    prompt: PromptProvenance
    image: ImageProvenance
    created_at: datetime
    forced: bool = False


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
