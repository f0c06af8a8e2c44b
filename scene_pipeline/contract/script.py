"""The script documents the backend drops, as code (../shared/contract/script-input.md).

This is the model: the canonical script document, which is also the normalised form of every
accepted input shape, and the per-scene request of the earlier HTTP service. Every field rule
of the contract is declared here; contract/script_parsing.py decodes dropped bytes, accepts
the three input shapes and turns validation errors into JSON paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    model_validator,
)

from scene_pipeline.constants import (
    DEFAULT_ASPECT_RATIO,
    KLING_ASPECT_RATIOS,
    NARRATOR,
    SCENE_ID_PATTERN,
    SCRIPT_ID_PATTERN,
)

_SCRIPT_ID_RE = re.compile(SCRIPT_ID_PATTERN)
_SCENE_ID_RE = re.compile(SCENE_ID_PATTERN)


def _id_to_str(value: Any) -> Any:
    # Producers send ids as numbers or strings; bool is an int in Python but never an id.
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string or an integer, not {json_kind(value)}")
    return value


def json_kind(value: Any) -> str:
    """How a rejection names the JSON type of a value it did not expect."""
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


class DuplicateError(ValueError):
    """A repeated name or id in a list; its message starts with the path of the repeat,
    relative to the model that raised it, so that parsing can report the full JSON path."""


def _raise_on_duplicates(values: list[str], list_name: str, field: str) -> None:
    first_index: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first_index:
            raise DuplicateError(
                f"{list_name}[{index}].{field}: duplicate {value!r}"
                f" (also {list_name}[{first_index[value]}].{field})"
            )
        first_index[value] = index


def script_json_schema() -> dict[str, Any]:
    """JSON Schema of the canonical script document, for the backend to validate against."""
    schema = Script.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
