"""The script documents the backend drops, as code (../shared/contract/script-input.md).

Three input shapes are accepted and normalised to one `Script`: the canonical script document,
an array of per-scene requests (the earlier HTTP service's body), and a single per-scene
request. Every rule of the contract is checked here, and every error names the JSON path of
the field in the file as it was dropped, so that the backend team can fix the producer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from scene_pipeline.constants import (
    DEFAULT_ASPECT_RATIO,
    KLING_ASPECT_RATIOS,
    MAX_SCRIPT_BYTES,
    NARRATOR,
    SCENE_ID_PATTERN,
    SCRIPT_ID_PATTERN,
)

_SCRIPT_ID_RE = re.compile(SCRIPT_ID_PATTERN)
_SCENE_ID_RE = re.compile(SCENE_ID_PATTERN)


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


def _id_to_str(value: Any) -> Any:
    # Producers send ids as numbers or strings; bool is an int in Python but never an id.
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string or an integer, not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", float: "a number with a fraction"}.get(
        type(value), type(value).__name__
    )


def _pattern_check(regex: re.Pattern[str], what: str, rule: str) -> Any:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value[:80]!r} is not a valid {what}: use {rule}")
        return value

    return check


def _id_type(regex: re.Pattern[str], what: str, rule: str, description: str) -> Any:
    """An id that producers send as a string or an integer, normalised to a checked string."""
    return Annotated[
        str,
        BeforeValidator(_id_to_str),
        Strict(),
        AfterValidator(_pattern_check(regex, what, rule)),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": regex.pattern},
                    {"type": "integer", "minimum": 0},
                ],
                "description": description,
            }
        ),
    ]


ScriptId = _id_type(
    _SCRIPT_ID_RE,
    "script id",
    "1-64 letters, digits, '_' or '-', starting with a letter or digit",
    "Normalised to a string; becomes a partition key and part of S3 keys.",
)
SceneId = _id_type(
    _SCENE_ID_RE,
    "scene id",
    "1-32 letters, digits, '_' or '-'",
    "Normalised to a string; unique within the script.",
)
AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
assert set(AspectRatio.__args__) == set(KLING_ASPECT_RATIOS)  # type: ignore[attr-defined]


class _Model(BaseModel):
    # Unknown fields are ignored: the backend may add fields without breaking the pipeline.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Character(_Model):
    name: str = Field(min_length=1, max_length=100)
    gender: Annotated[int, Strict(), Field(ge=0, le=1)] | None = Field(
        default=None, description="0 = male, 1 = female"
    )
    description: str = Field(default="", max_length=1000, description="Appearance notes.")


class AudioLine(_Model):
    type: Literal["narration", "dialogue", "sound"]
    character: str | None = Field(
        default=None, description="For dialogue: a character name ('narration' for the narrator)."
    )
    text: str = Field(max_length=2000)
    emotion: str | None = None

    @model_validator(mode="after")
    def _dialogue_has_speaker(self) -> AudioLine:
        if self.type == "dialogue" and not (self.character or "").strip():
            raise ValueError("a dialogue line needs a character")
        return self

    @property
    def speaker(self) -> str | None:
        """The character who speaks the line, or None for narration and sounds."""
        if self.type != "dialogue" or self.character in (None, NARRATOR):
            return None
        return self.character


class Scene(_Model):
    scene_id: SceneId
    audios: list[AudioLine] = Field(min_length=1, max_length=100)


class ScriptOptions(_Model):
    style: str | None = Field(
        default=None,
        max_length=100,
        description="Visual style; known: disney, pixar, illustrate, ghibli.",
    )
    aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO


class ScriptMetadata(_Model):
    script_id: ScriptId = Field(validation_alias=AliasChoices("script_id", "story_id"))
    title: str = Field(min_length=1, max_length=200)
    characters: list[Character] = Field(default_factory=list, max_length=50)
    original_story: str | None = Field(default=None, max_length=20_000)

    @model_validator(mode="after")
    def _unique_character_names(self) -> ScriptMetadata:
        _raise_on_duplicates([c.name for c in self.characters], "characters", "name")
        return self


class Script(_Model):
    """The canonical script document, and the normalised form of every accepted shape."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        title="ScriptDocument",
        json_schema_extra={
            "$comment": "Aliases accepted on input: story_metadata = script_metadata, "
            "story_id = script_id. Unknown fields are ignored. At most 5 MiB per object."
        },
    )

    script_metadata: ScriptMetadata = Field(
        validation_alias=AliasChoices("script_metadata", "story_metadata")
    )
    scenes: list[Scene] = Field(min_length=1, max_length=200)
    options: ScriptOptions = Field(default_factory=ScriptOptions)

    @model_validator(mode="after")
    def _unique_scene_ids(self) -> Script:
        _raise_on_duplicates([s.scene_id for s in self.scenes], "scenes", "scene_id")
        return self

    @property
    def script_id(self) -> str:
        return self.script_metadata.script_id

    @property
    def title(self) -> str:
        return self.script_metadata.title

    def scene(self, scene_id: str) -> Scene:
        for scene in self.scenes:
            if scene.scene_id == scene_id:
                return scene
        raise KeyError(scene_id)


class SceneRequest(_Model):
    """One element of the earlier service's per-scene request body."""

    script_metadata: ScriptMetadata = Field(
        validation_alias=AliasChoices("script_metadata", "story_metadata")
    )
    scene_id: SceneId
    audios: list[AudioLine] = Field(min_length=1, max_length=100)
    options: ScriptOptions | None = None


class _DuplicateError(ValueError):
    pass


def _raise_on_duplicates(values: list[str], list_name: str, field: str) -> None:
    first_index: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first_index:
            raise _DuplicateError(
                f"{list_name}[{index}].{field}: duplicate {value!r}"
                f" (also {list_name}[{first_index[value]}].{field})"
            )
        first_index[value] = index


# --- decoding -------------------------------------------------------------------------------


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
        if isinstance(ctx_error, _DuplicateError):
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
                path="$", message=f"expected a JSON object or array, got {_json_kind(value)}"
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
    requests: list[SceneRequest] = []
    errors: list[ContractError] = []
    for index, item in enumerate(items):
        prefix: tuple[int | str, ...] = (index,) if in_array else ()
        try:
            if not isinstance(item, dict):
                errors.append(
                    ContractError(
                        path=json_path(prefix),
                        message=f"expected a scene object, got {_json_kind(item)}",
                    )
                )
                continue
            requests.append(SceneRequest.model_validate(item))
        except ValidationError as err:
            errors.extend(_errors_from_validation(err, prefix))
    if errors:
        raise ScriptRejected(errors)

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
    if errors:
        raise ScriptRejected(errors)

    return Script(
        script_metadata=first,
        scenes=[Scene(scene_id=r.scene_id, audios=r.audios) for r in requests],
        options=requests[0].options or ScriptOptions(),
    )


def script_json_schema() -> dict[str, Any]:
    """JSON Schema of the canonical script document, for the backend to validate against."""
    schema = Script.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
