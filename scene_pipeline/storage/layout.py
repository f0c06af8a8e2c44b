"""Every key the pipeline reads or writes, in one place (../shared/contract/outputs.md).

Key segments that come from data (script ids, scene ids, partition keys typed into the UI)
are checked against the contract's patterns before they become part of a key.
"""

from __future__ import annotations

import re

from scene_pipeline.constants import SCENE_ID_PATTERN, SCRIPT_ID_PATTERN

RESULTS_PREFIX = "results/"
REJECTED_PREFIX = "scripts/rejected/"
# The pipeline's own objects: never under the inbox, which belongs to the backend.
PIPELINE_PREFIX = "pipeline/"
ACCEPTED_PREFIX = f"{PIPELINE_PREFIX}scripts/"
PROMPTS_PREFIX = f"{PIPELINE_PREFIX}prompts/"
CHARACTER_SHEETS_PREFIX = f"{PIPELINE_PREFIX}character-sheets/"
TASKS_PREFIX = f"{PIPELINE_PREFIX}tasks/"
IO_PREFIX = f"{PIPELINE_PREFIX}dagster/"
RUNS_PREFIX = f"{PIPELINE_PREFIX}runs/"

_SCRIPT_ID_RE = re.compile(SCRIPT_ID_PATTERN)
_SCENE_ID_RE = re.compile(SCENE_ID_PATTERN)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class UnsafeKeyError(ValueError):
    """A value that would become part of a storage key does not match its pattern."""


def script_segment(script_id: str) -> str:
    if not _SCRIPT_ID_RE.match(script_id):
        raise UnsafeKeyError(f"{script_id[:80]!r} is not a valid script id")
    return script_id


def scene_segment(scene_id: str) -> str:
    if not _SCENE_ID_RE.match(scene_id):
        raise UnsafeKeyError(f"{scene_id[:80]!r} is not a valid scene id")
    return scene_id


def is_safe_name(value: str) -> bool:
    """Short, no slashes, no dot at the start, no '..': safe as one segment of a key."""
    return bool(_TOKEN_RE.match(value)) and ".." not in value


def token_segment(value: str) -> str:
    """Hashes, generation names and run ids."""
    if not is_safe_name(value):
        raise UnsafeKeyError(f"{value[:80]!r} is not a valid key segment")
    return value


def manifest_key(script_id: str) -> str:
    return f"{RESULTS_PREFIX}{script_segment(script_id)}/manifest.json"


def scenes_prefix(script_id: str) -> str:
    return f"{RESULTS_PREFIX}{script_segment(script_id)}/scenes/"


def generation_key(script_id: str, scene_id: str, generation: str, suffix: str) -> str:
    """`results/{script}/scenes/{scene}/{generation}.png|.json`."""
    assert suffix in (".png", ".json")
    return (
        f"{scenes_prefix(script_id)}{scene_segment(scene_id)}/{token_segment(generation)}{suffix}"
    )


def parse_generation_key(key: str, script_id: str) -> tuple[str, str, str] | None:
    """`results/{script}/scenes/{scene}/{generation}.json` -> (scene, generation, suffix)."""
    rest = key.removeprefix(scenes_prefix(script_id))
    if rest == key:
        return None
    scene_id, _, name = rest.partition("/")
    stem, dot, suffix = name.rpartition(".")
    if not dot or "/" in name:
        return None
    return scene_id, stem, "." + suffix


def accepted_script_key(script_id: str) -> str:
    """The normalised copy of the latest accepted version of a script."""
    return f"{ACCEPTED_PREFIX}{script_segment(script_id)}.json"


def prompt_key(script_id: str, scene_id: str, content_hash: str) -> str:
    return (
        f"{PROMPTS_PREFIX}{script_segment(script_id)}/{scene_segment(scene_id)}/"
        f"{token_segment(content_hash)}.json"
    )


def character_sheet_key(script_id: str, input_hash: str) -> str:
    return f"{CHARACTER_SHEETS_PREFIX}{script_segment(script_id)}/{token_segment(input_hash)}.json"


def account_stop_key(run_id: str) -> str:
    """Set when a provider account failed during a run: the run's other steps stop paying."""
    return f"{RUNS_PREFIX}{token_segment(run_id)}/account-stop.json"


def task_key(script_id: str, scene_id: str, content_hash: str) -> str:
    """The journal of the paid image task in flight for one scene's content."""
    return (
        f"{TASKS_PREFIX}{script_segment(script_id)}/{scene_segment(scene_id)}/"
        f"{token_segment(content_hash)}.json"
    )


def rejected_key(inbox_key: str, inbox_prefix: str) -> str:
    """`scripts/rejected/{inbox object name}.error.json`; sub-folders of the inbox are kept."""
    name = inbox_key.removeprefix(inbox_prefix) if inbox_prefix else inbox_key
    return f"{REJECTED_PREFIX}{name}.error.json"
