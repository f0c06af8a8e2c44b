"""Dropped bytes -> one `Script` (../shared/contract/script-input.md), or the reasons why not.

Three input shapes are accepted and normalised to one `Script` (contract/script.py): the
canonical script document, an array of per-scene requests (the earlier HTTP service's body),
and a single per-scene request. Every error names the JSON path of the field in the file as it
was dropped, so that the backend team can fix the producer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from scene_pipeline.constants import MAX_SCRIPT_BYTES
from scene_pipeline.contract.script import (
    DuplicateError,
    Scene,
    SceneRequest,
    Script,
    ScriptOptions,
    json_kind,
)


class ContractError(BaseModel):
    """One broken rule: where (JSON path) and what."""

    model_config = ConfigDict(frozen=True)

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ScriptRejected(Exception):
    """The dropped bytes are not a valid script; `errors` says why, field by field."""

    def __init__(self, errors: Sequence[ContractError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


def json_path(loc: Sequence[int | str]) -> str:
    """`("scenes", 3, "audios", 0, "text")` -> `scenes[3].audios[0].text`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "$"


def _errors_from_validation(
    err: ValidationError, prefix: Sequence[int | str] = ()
) -> list[ContractError]:
    errors: list[ContractError] = []
    for item in err.errors(include_url=False):
        loc = [*prefix, *item["loc"]]
        message = item["msg"]
        ctx_error = (item.get("ctx") or {}).get("error")
        if isinstance(ctx_error, DuplicateError):
            # The message carries a path relative to the model that raised it.
            relative, _, message = str(ctx_error).partition(": ")
            errors.append(ContractError(path=_join(json_path(loc), relative), message=message))
            continue
        message = message.removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "field required"
        elif item["type"] == "literal_error" and loc and loc[-1] == "type":
            message = f"unknown audio type {item.get('input')!r}: use narration, dialogue or sound"
        errors.append(ContractError(path=json_path(loc), message=message[:300]))
    return errors


def _join(base: str, relative: str) -> str:
    if base == "$":
        return relative
    return f"{base}.{relative}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(data: bytes) -> Any:
    """Bytes -> JSON value, or ScriptRejected for too large, empty, not UTF-8 or not JSON."""
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptRejected(
            [ContractError(path="$", message=f"object is {len(data)} bytes; the limit is 5 MiB")]
        )
    if not data.strip():
        raise ScriptRejected([ContractError(path="$", message="empty file")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScriptRejected(
            [
                ContractError(
                    path="$", message=f"not UTF-8 text (invalid byte at offset {err.start})"
                )
            ]
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ScriptRejected(
            [
                ContractError(
                    path="$",
                    message=f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                )
            ]
        ) from None
    except ValueError as err:  # NaN/Infinity constants
        raise ScriptRejected([ContractError(path="$", message=str(err))]) from None
    except RecursionError:
        raise ScriptRejected([ContractError(path="$", message="JSON nested too deeply")]) from None


ScriptShape = Literal["script document", "per-scene request array", "per-scene request"]


def parse_script(data: bytes) -> tuple[Script, ScriptShape]:
    """Validate dropped bytes and normalise them to one `Script`.

    Raises:
        ScriptRejected: with one error per broken rule, each naming its JSON path.
    """
    value = decode_json(data)
    return normalise(value)


def normalise(value: Any) -> tuple[Script, ScriptShape]:
    """A decoded JSON value in any accepted shape -> `Script` (or ScriptRejected)."""
    try:
        if isinstance(value, list):
            return _from_requests(value), "per-scene request array"
        if isinstance(value, dict):
            if "scenes" not in value and ("scene_id" in value or "audios" in value):
                return _from_requests([value], in_array=False), "per-scene request"
            return Script.model_validate(value), "script document"
    except ValidationError as err:
        raise ScriptRejected(_errors_from_validation(err)) from None
    except RecursionError:
        raise ScriptRejected([ContractError(path="$", message="JSON nested too deeply")]) from None
    raise ScriptRejected(
        [
            ContractError(
                path="$", message=f"expected a JSON object or array, got {json_kind(value)}"
            )
        ]
    )


def _from_requests(items: list[Any], in_array: bool = True) -> Script:
    if not items:
        raise ScriptRejected([ContractError(path="$", message="empty array: no scenes")])
    if len(items) > 200:
        raise ScriptRejected(
            [ContractError(path="$", message=f"{len(items)} scenes; at most 200 are allowed")]
        )
    requests = _validated_requests(items, in_array)
    errors = _disagreements(items, requests, in_array)
    if errors:
        raise ScriptRejected(errors)
    return Script(
        script_metadata=requests[0].script_metadata,
        scenes=[Scene(scene_id=r.scene_id, audios=r.audios) for r in requests],
        options=requests[0].options or ScriptOptions(),
    )


def _validated_requests(items: list[Any], in_array: bool) -> list[SceneRequest]:
    """Each element as a `SceneRequest`, or ScriptRejected with the errors of all of them."""
    requests: list[SceneRequest] = []
    errors: list[ContractError] = []
    for index, item in enumerate(items):
        prefix: tuple[int | str, ...] = (index,) if in_array else ()
        try:
            if not isinstance(item, dict):
                errors.append(
                    ContractError(
                        path=json_path(prefix),
                        message=f"expected a scene object, got {json_kind(item)}",
                    )
                )
                continue
            requests.append(SceneRequest.model_validate(item))
        except ValidationError as err:
            errors.extend(_errors_from_validation(err, prefix))
    if errors:
        raise ScriptRejected(errors)
    return requests


def _disagreements(
    items: list[Any], requests: list[SceneRequest], in_array: bool
) -> list[ContractError]:
    """What stops valid elements from being one script: other script ids, repeated scenes."""
    errors: list[ContractError] = []
    first = requests[0].script_metadata
    for index, request in enumerate(requests[1:], start=1):
        if request.script_metadata.script_id != first.script_id:
            key = "story_metadata" if "story_metadata" in items[index] else "script_metadata"
            id_key = "story_id" if "story_id" in items[index].get(key, {}) else "script_id"
            errors.append(
                ContractError(
                    path=f"[{index}].{key}.{id_key}",
                    message=f"script id {request.script_metadata.script_id!r} disagrees with"
                    f" {first.script_id!r} of [0]: all elements must belong to one script",
                )
            )
    seen: dict[str, int] = {}
    for index, request in enumerate(requests):
        if request.scene_id in seen:
            errors.append(
                ContractError(
                    path=json_path(((index,) if in_array else ()) + ("scene_id",)),
                    message=f"duplicate {request.scene_id!r} (also [{seen[request.scene_id]}])",
                )
            )
        seen.setdefault(request.scene_id, index)
    return errors
