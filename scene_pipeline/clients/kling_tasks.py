"""KLING's task objects at the edge: raw JSON mapped onto typed, frozen models, and the two
task endpoints (text-to-image and multi-image references) with their own paths."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

Endpoint = Literal["generations", "multi-image2image"]
ENDPOINT_PATHS: Final[dict[str, str]] = {
    "generations": "/v1/images/generations",
    "multi-image2image": "/v1/images/multi-image2image",
}
TERMINAL_STATUSES: Final = frozenset({"succeed", "failed"})


class KlingImage(BaseModel):
    """One result image. `url` is temporary and may be signed: it is a secret."""

    model_config = ConfigDict(frozen=True)

    index: int = 0
    url: SecretStr


class KlingTask(BaseModel):
    """A task as KLING reports it (`data` of the create, read and list answers)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    task_status: str
    task_status_msg: str | None = None
    created_at: int | None = Field(default=None, description="ms since the epoch")
    updated_at: int | None = Field(default=None, description="ms since the epoch")
    external_task_id: str | None = None
    final_unit_deduction: str | None = None
    images: tuple[KlingImage, ...] = ()

    @property
    def finished(self) -> bool:
        return self.task_status in TERMINAL_STATUSES


def task_from_api(data: Any) -> KlingTask:
    """Map KLING's task object onto `KlingTask`; raises ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("task is not an object")
    info = data.get("task_info") if isinstance(data.get("task_info"), dict) else {}
    result = data.get("task_result") if isinstance(data.get("task_result"), dict) else {}
    images = result.get("images") if isinstance(result.get("images"), list) else []
    deduction = data.get("final_unit_deduction")
    try:
        return KlingTask(
            task_id=str(data["task_id"]),
            task_status=str(data.get("task_status", "")),
            task_status_msg=data.get("task_status_msg") or None,
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            external_task_id=info.get("external_task_id"),
            final_unit_deduction=None if deduction in (None, "") else str(deduction),
            images=tuple(
                KlingImage(index=int(i.get("index", 0)), url=SecretStr(str(i["url"])))
                for i in images
                if isinstance(i, dict) and i.get("url")
            ),
        )
    except (KeyError, TypeError, ValidationError) as err:
        raise ValueError(f"unexpected task object ({type(err).__name__})") from None
