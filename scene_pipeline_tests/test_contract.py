"""The script contract (../shared/contract/script-input.md): shapes, normalisation, every rule."""

import copy
import json
from typing import Any

import pytest

from scene_pipeline.contract.script import script_json_schema
from scene_pipeline.contract.script_parsing import ScriptRejected, parse_script

VALID: dict[str, Any] = {
    "script_metadata": {
        "script_id": "s1",
        "title": "제목",
        "characters": [{"name": "민수", "gender": 0, "description": "안경을 쓴 회사원"}],
    },
    "scenes": [
        {"scene_id": 1, "audios": [{"type": "narration", "character": "narration", "text": "밤."}]},
        {"scene_id": "2", "audios": [{"type": "dialogue", "character": "민수", "text": "안녕"}]},
    ],
}


def errors_of(value: Any) -> list[str]:
    data = value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()
    with pytest.raises(ScriptRejected) as caught:
        parse_script(data)
    return [str(e) for e in caught.value.errors]


def changed(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


def test_the_three_shapes_normalise_to_the_same_script() -> None:
    document, shape = parse_script(json.dumps(VALID).encode())
    assert shape == "script document"
    requests = [
        {"story_metadata": {**VALID["script_metadata"], "story_id": "s1"}, **scene}
        for scene in VALID["scenes"]
    ]
    for request in requests:
        del request["story_metadata"]["script_id"]
    from_array, shape = parse_script(json.dumps(requests).encode())
    assert shape == "per-scene request array"
    assert from_array.model_dump(exclude={"options"}) == document.model_dump(exclude={"options"})

    single, shape = parse_script(json.dumps(requests[0]).encode())
    assert shape == "per-scene request"
    assert [s.scene_id for s in single.scenes] == ["1"]


def test_ids_become_strings_and_defaults_apply() -> None:
    doc = changed("script_metadata.script_id", 4711)
    script, _ = parse_script(json.dumps(doc).encode())
    assert script.script_id == "4711"
    assert [s.scene_id for s in script.scenes] == ["1", "2"]
    assert script.options.aspect_ratio == "9:16"


def test_the_real_sample_is_accepted(sample_path) -> None:
    script, shape = parse_script(sample_path.read_bytes())
    assert (script.script_id, len(script.scenes), shape) == ("1", 15, "per-scene request array")
    assert len(script.script_metadata.characters) == 3


def test_unknown_fields_are_ignored_and_sound_is_an_audio_type() -> None:
    doc = changed("scenes.0.audios", [{"type": "sound", "text": "쾅", "volume": 3}])
    doc["backend_version"] = 7
    script, _ = parse_script(json.dumps(doc).encode())
    assert script.scenes[0].audios[0].type == "sound"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "$: empty file"),
        (b"   \n", "$: empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "$: not UTF-8"),
        (b'{"a": ', "$: not valid JSON"),
        (b"null", "$: expected a JSON object or array, got null"),
        (b"42", "$: expected a JSON object or array"),
        (b'{"x": NaN}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "$:"),
        (b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}', "limit is 5 MiB"),
    ],
    ids=["empty", "blank", "binary", "truncated", "null", "number", "nan", "deep", "too-large"],
)
def test_unreadable_input_is_rejected_with_a_message(data: bytes, expected: str) -> None:
    assert any(expected in e for e in errors_of(data)), errors_of(data)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "script_metadata.script_id",
            "a/b",
            "script_metadata.script_id: 'a/b' is not a valid script id",
        ),
        (
            "script_metadata.script_id",
            "..",
            "script_metadata.script_id: '..' is not a valid script id",
        ),
        ("script_metadata.script_id", "x" * 65, "script_metadata.script_id"),
        ("script_metadata.script_id", KeyError, "script_metadata.script_id"),
        ("script_metadata.title", "", "script_metadata.title"),
        ("script_metadata.title", "t" * 201, "script_metadata.title"),
        ("script_metadata.characters.0.name", "", "script_metadata.characters[0].name"),
        (
            "script_metadata.characters.0.description",
            "d" * 1001,
            "script_metadata.characters[0].description",
        ),
        ("script_metadata.characters.0.gender", 7, "script_metadata.characters[0].gender"),
        (
            "script_metadata.characters",
            [{"name": f"c{i}"} for i in range(51)],
            "script_metadata.characters",
        ),
        (
            "script_metadata.characters",
            [{"name": "a"}, {"name": "a"}],
            "script_metadata.characters[1].name",
        ),
        ("script_metadata.original_story", "s" * 20_001, "script_metadata.original_story"),
        ("scenes", [], "scenes:"),
        ("scenes", [VALID["scenes"][0]] * 201, "scenes:"),
        ("scenes.1.scene_id", 1, "scenes[1].scene_id: duplicate '1'"),
        ("scenes.0.scene_id", "a b", "scenes[0].scene_id"),
        ("scenes.0.scene_id", "x" * 33, "scenes[0].scene_id"),
        ("scenes.0.audios", [], "scenes[0].audios"),
        ("scenes.0.audios.0.type", "music", "scenes[0].audios[0].type: unknown audio type 'music'"),
        ("scenes.0.audios.0.text", "가" * 2001, "scenes[0].audios[0].text"),
        ("scenes.0.audios.0.text", KeyError, "scenes[0].audios[0].text"),
        ("options", {"aspect_ratio": "5:4"}, "options.aspect_ratio"),
    ],
)
def test_each_rule_names_the_json_path(path: str, value: Any, expected: str) -> None:
    errors = errors_of(changed(path, value))
    assert any(e.startswith(expected) for e in errors), errors


def test_array_elements_must_agree_on_the_script_id() -> None:
    requests = [
        {
            "story_metadata": {"story_id": 1, "title": "t"},
            "scene_id": 1,
            "audios": [{"type": "narration", "text": "a"}],
        },
        {
            "story_metadata": {"story_id": 2, "title": "t"},
            "scene_id": 2,
            "audios": [{"type": "narration", "text": "b"}],
        },
    ]
    errors = errors_of(requests)
    assert any(e.startswith("[1].story_metadata.story_id") and "disagrees" in e for e in errors)


def test_several_errors_are_reported_at_once() -> None:
    doc = changed("scenes.0.audios.0.type", "music")
    doc["scenes"][1]["audios"][0]["text"] = "x" * 2001
    assert len(errors_of(doc)) >= 2


def test_schema_describes_the_canonical_document() -> None:
    schema = script_json_schema()
    assert {"script_metadata", "scenes"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"script_metadata", "scenes"}
    text = json.dumps(schema)
    assert "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$" in text
