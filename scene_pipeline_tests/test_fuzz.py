"""Fuzzed script input: whatever bytes land in the inbox, the contract answers, never crashes.

Property-based (hypothesis, derandomized so CI sees the same examples every time). Inputs are
the valid documents of examples/ (the three accepted shapes) mutated at the JSON level
(deleted keys, changed types, huge strings, unicode, nested junk, duplicated scenes, odd
numbers) and at the byte level (truncation, random bytes, flipped bytes, other encodings),
plus plain random bytes. They are thrown at `parse_script` and at the intake function the
inbox sensor calls for every object it reads (`scene_pipeline.core.intake.validate_bytes`).

Properties: the only exception is `ScriptRejected`; a rejection has at least one error, and
every error names a JSON path ("$", or `scenes[0].audios[1].text`-style) that leads to the
offending field of the dropped document (its parent exists in the document) and says what is
wrong in a non-empty message; a valid result has ids matching the contract's patterns, unique
scene ids, 1-200 scenes, and survives the JSON round trip through the bucket (the run reads
the stored accepted copy, the sensor writes the rejection report).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scene_pipeline.constants import SCENE_ID_PATTERN, SCRIPT_ID_PATTERN
from scene_pipeline.contract.outputs import RejectionReport, SourceRef
from scene_pipeline.contract.script import Script
from scene_pipeline.contract.script_parsing import ScriptRejected, parse_script
from scene_pipeline.core.intake import validate_bytes
from scene_pipeline.models import AcceptedScript

from .conftest import EXAMPLES

FUZZ = settings(
    max_examples=250,
    deadline=None,  # a noisy 2-core machine; huge strings take a few ms
    derandomize=True,  # the same examples on every run and in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

VALID = {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.json"))}
DOCUMENTS = {name: json.loads(data) for name, data in VALID.items()}
PATH_RE = re.compile(r"^(\$|(\[\d+\]|[^.\[\]]+)(\.[^.\[\]]+|\[\d+\])*)$")
PATH_PART_RE = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")
SOURCE = SourceRef(key="scripts/incoming/fuzz.json", etag='"0"')
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# -- strategies -----------------------------------------------------------------------------------

ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "a/b",
        "../../etc/passwd",
        "a" * 65,
        "x" * 33,
        "-lead",
        "_x",
        "😀",
        "\u202eevil",
        "\x00",
        "NaN",
        "id with space",
        "ÄÖÜ",
        "\ud7ff",
        "1" * 64,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    ODD_STRINGS,
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
HUGE = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["a", "한", "😀", " ", "\n"]),
    st.integers(min_value=1_000, max_value=300_000),
)


def _containers(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list in `value` (the places a mutation can go)."""
    found = []
    if isinstance(value, dict):
        found.append(path)
        for key, item in value.items():
            found += _containers(item, (*path, key))
    elif isinstance(value, list):
        found.append(path)
        for index, item in enumerate(value):
            found += _containers(item, (*path, index))
    return found


def _at(value: Any, path: tuple) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid example with 1-4 JSON-level mutations."""
    document = copy.deepcopy(DOCUMENTS[draw(st.sampled_from(sorted(DOCUMENTS)))])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not isinstance(document, (dict, list)):
            break
        target = _at(document, draw(st.sampled_from(_containers(document))))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = draw(
            st.sampled_from(["delete", "junk", "huge", "odd", "duplicate", "add", "deep", "swap"])
        )
        if not keys and action in ("delete", "junk", "huge", "odd", "duplicate", "swap"):
            action = "add"
        key = draw(st.sampled_from(keys)) if keys else None
        if action == "delete":
            del target[key]
        elif action == "junk":
            target[key] = draw(JUNK)
        elif action == "huge":
            target[key] = draw(HUGE)
        elif action == "odd":
            target[key] = draw(st.one_of(ODD_STRINGS, st.sampled_from([True, -1, 1.5, 10**30])))
        elif action == "duplicate":
            if isinstance(target, list):
                target.append(copy.deepcopy(target[key]))
            else:
                target[key] = [copy.deepcopy(target[key])] * draw(st.integers(1, 250))
        elif action == "add":
            if isinstance(target, list):
                target.append(draw(JUNK))
            else:
                target[draw(st.text(max_size=12))] = draw(JUNK)
        elif action == "deep":
            depth = draw(st.integers(min_value=1, max_value=200))
            nested: Any = draw(SCALARS)
            for _ in range(depth):
                nested = [nested] if draw(st.booleans()) else {"x": nested}
            target[key if key is not None else 0] = nested
        elif action == "swap" and isinstance(target, dict):
            # The same value under a sibling's name (e.g. scenes where a title belongs).
            other = draw(st.sampled_from(keys))
            target[key], target[other] = target[other], target[key]
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        document = draw(st.sampled_from([[document], {"scenes": document}, document, "x", 1]))
    return document


def _encode(document: Any, draw: st.DrawFn) -> bytes:
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8")


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A valid example or a mutated document, then damaged at the byte level."""
    if draw(st.booleans()):
        data = VALID[draw(st.sampled_from(sorted(VALID)))]
    else:
        data = _encode(draw(mutated_documents()), draw)
    action = draw(
        st.sampled_from(["none", "truncate", "flip", "insert", "bom", "utf16", "latin1", "wrap"])
    )
    if action == "truncate":
        data = data[: draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    elif action == "flip" and data:
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif action == "insert":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif action == "bom":
        data = b"\xef\xbb\xbf" + data
    elif action == "utf16":
        data = data.decode("utf-8", "replace").encode("utf-16")
    elif action == "latin1":
        data = data.decode("utf-8", "replace").encode("latin-1", "replace")
    elif action == "wrap":
        data = b"[" * draw(st.integers(1, 50_000)) + data
    return data


ANY_BYTES = st.one_of(mutated_bytes(), st.binary(max_size=2_000), mutated_bytes())

# -- checks -----------------------------------------------------------------------------------


def _parts(path: str) -> list[int | str]:
    return [int(i) if i else name for i, name in PATH_PART_RE.findall(path)]


def _parent_exists(document: Any, path: str) -> bool:
    """True when every container on `path` but the last step exists in `document`."""
    value = document
    for part in _parts(path)[:-1]:
        if isinstance(part, int) and isinstance(value, list) and part < len(value):
            value = value[part]
        elif isinstance(part, str) and isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return False
    return True


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return None


def check_rejection(err: ScriptRejected, data: bytes) -> None:
    assert err.errors, "a rejection without errors"
    document = _decoded(data)
    for error in err.errors:
        assert PATH_RE.match(error.path), error
        assert error.message.strip(), error
        if error.path != "$":
            assert document is not None, error  # a field path needs a parsed document
            assert _parent_exists(document, error.path), (error, str(document)[:300])


def check_script(script: Script) -> None:
    assert re.match(SCRIPT_ID_PATTERN, script.script_id)
    ids = [scene.scene_id for scene in script.scenes]
    assert all(re.match(SCENE_ID_PATTERN, scene_id) for scene_id in ids), ids
    assert len(set(ids)) == len(ids)
    assert 1 <= len(ids) <= 200
    assert all(scene.audios for scene in script.scenes)


# -- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_examples_are_valid(name: str) -> None:
    script, _ = parse_script(VALID[name])
    check_script(script)


@FUZZ
@given(ANY_BYTES)
def test_parse_script_accepts_or_rejects_with_paths(data: bytes) -> None:
    try:
        script, _ = parse_script(data)
    except ScriptRejected as err:
        check_rejection(err, data)
        return
    check_script(script)


@FUZZ
@given(mutated_documents())
def test_mutated_documents_are_accepted_or_rejected_field_by_field(document: Any) -> None:
    data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    try:
        script, _ = parse_script(data)
    except ScriptRejected as err:
        check_rejection(err, data)
        return
    check_script(script)


@FUZZ
@given(ANY_BYTES)
def test_the_sensor_read_path_answers_with_a_script_or_a_report(data: bytes) -> None:
    """`validate_bytes` is what the inbox sensor calls on every object's bytes."""
    result = validate_bytes(data, SOURCE, NOW)
    if isinstance(result, RejectionReport):
        check_rejection(ScriptRejected(result.errors), data)
        assert result.source == SOURCE
        # The sensor writes the report to the bucket as JSON.
        assert RejectionReport.model_validate_json(result.model_dump_json()) == result
        return
    assert isinstance(result, AcceptedScript)
    check_script(result.script)
    assert result.source_last_modified == NOW
    # The run reads the stored accepted copy: it must come back as the same script.
    assert AcceptedScript.model_validate_json(result.model_dump_json()).script == result.script


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 200_000,
        b'{"a":' * 100_000,
        b"\xef\xbb\xbf",
        b"NaN",
        b'{"script_metadata": {"script_id": 1, "title": "t"}, "scenes": [{"scene_id": 1e400}]}',
        b'{"script_metadata": {"script_id": "1", "title": "t"}, "scenes": Infinity}',
        b"\x00" * 64,
        '{"script_metadata": {"script_id": "\ud800", "title": "t"}}'.encode(
            "utf-8", "surrogatepass"
        ),
        b'{"script_metadata": {"script_id": "\\ud800", "title": "t"}, "scenes": []}',
        b"[" + b"{}," * 1000 + b"{}]",
    ],
    ids=[
        "deep-array",
        "deep-object",
        "bom-only",
        "nan",
        "float-overflow",
        "infinity",
        "nul-bytes",
        "raw-surrogate",
        "escaped-surrogate",
        "too-many-requests",
    ],
)
def test_known_nasty_inputs_are_rejected_at_a_path(data: bytes) -> None:
    with pytest.raises(ScriptRejected) as caught:
        parse_script(data)
    check_rejection(caught.value, data)
    assert isinstance(validate_bytes(data, SOURCE, NOW), RejectionReport)
