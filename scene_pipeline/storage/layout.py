"""Every key the pipeline reads or writes, in one place (../shared/contract/outputs.md).

Key segments that come from data (script ids, scene ids, partition keys typed into the UI,
character keys) are checked against their patterns before they become part of a key.
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
OPERATOR_PREFIX = f"{PIPELINE_PREFIX}operator/"
LEASES_PREFIX = f"{PIPELINE_PREFIX}leases/"
THUMBNAILS_PREFIX = f"{PIPELINE_PREFIX}thumbnails/"
INBOX_SEEN_KEY = f"{PIPELINE_PREFIX}inbox/seen.json"
# Where operators put portrait files for the UI's `portrait_uploads` config.
UPLOADS_PREFIX = "uploads/"

_SCRIPT_ID_RE = re.compile(SCRIPT_ID_PATTERN)
_SCENE_ID_RE = re.compile(SCENE_ID_PATTERN)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A generation name: UTC timestamp, content hash, run id (see core.planning.generation_name).
_GENERATION_RE = re.compile(r"^\d{8}T\d{6}(\d{3})?Z-[0-9a-z]+-[0-9a-z]+$")

Subject = tuple[str, str]  # ("scenes", scene_id) or ("characters", character_key)


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
    """Hashes, generation names, run ids and character keys."""
    if not is_safe_name(value):
        raise UnsafeKeyError(f"{value[:80]!r} is not a valid key segment")
    return value


def subject_segment(subject: Subject) -> str:
    kind, name = subject
    if kind == "scenes":
        return f"scenes/{scene_segment(name)}"
    if kind == "characters":
        return f"characters/{token_segment(name)}"
    raise UnsafeKeyError(f"unknown subject kind {kind!r}")


# -- results (the contract) -------------------------------------------------------------------


def manifest_key(script_id: str) -> str:
    return f"{RESULTS_PREFIX}{script_segment(script_id)}/manifest.json"


def subjects_prefix(script_id: str, kind: str) -> str:
    """`results/{script}/scenes/` or `results/{script}/characters/`."""
    assert kind in ("scenes", "characters")
    return f"{RESULTS_PREFIX}{script_segment(script_id)}/{kind}/"


def generation_key(script_id: str, subject: Subject, generation: str, suffix: str) -> str:
    """`results/{script}/{scenes|characters}/{id}/{generation}{suffix}`; suffix `.png`,
    `-{k}.png` (candidate k of several) or `.json` (the generation's record)."""
    assert suffix == ".json" or re.fullmatch(r"(-[1-9])?\.png", suffix)
    return (
        f"{RESULTS_PREFIX}{script_segment(script_id)}/{subject_segment(subject)}/"
        f"{token_segment(generation)}{suffix}"
    )


def image_keys(script_id: str, subject: Subject, generation: str, count: int) -> list[str]:
    """One key per candidate: `{generation}.png` alone, `{generation}-{k}.png` for several."""
    if count == 1:
        return [generation_key(script_id, subject, generation, ".png")]
    return [
        generation_key(script_id, subject, generation, f"-{k}.png") for k in range(1, count + 1)
    ]


def parse_generation_key(key: str, prefix: str) -> tuple[str, str, str] | None:
    """`{prefix}{id}/{generation}{suffix}` -> (id, generation, suffix), suffix `.json`/`.png`."""
    rest = key.removeprefix(prefix)
    if rest == key:
        return None
    subject_id, _, name = rest.partition("/")
    stem, dot, extension = name.rpartition(".")
    if not dot or "/" in name or extension not in ("json", "png"):
        return None
    generation, _, candidate = stem.rpartition("-")
    if extension == "png" and candidate.isdigit() and _GENERATION_RE.match(generation):
        return subject_id, generation, f"-{candidate}.png"
    if not _GENERATION_RE.match(stem):
        return None
    return subject_id, stem, "." + extension


# -- the pipeline's own objects --------------------------------------------------------------


def accepted_script_key(script_id: str) -> str:
    """The normalised copy of the latest accepted version of a script."""
    return f"{ACCEPTED_PREFIX}{script_segment(script_id)}.json"


def prompt_key(script_id: str, scene_id: str, prompt_hash: str) -> str:
    return (
        f"{PROMPTS_PREFIX}{script_segment(script_id)}/{scene_segment(scene_id)}/"
        f"{token_segment(prompt_hash)}.json"
    )


def character_sheet_key(script_id: str) -> str:
    """The script's latest character sheet (looks are kept per character)."""
    return f"{CHARACTER_SHEETS_PREFIX}{script_segment(script_id)}.json"


def task_key(script_id: str, subject: Subject, content_hash: str) -> str:
    """The journal of the paid image task in flight for one subject's content."""
    return (
        f"{TASKS_PREFIX}{script_segment(script_id)}/{subject_segment(subject)}/"
        f"{token_segment(content_hash)}.json"
    )


def account_stop_key(run_id: str, provider_role: str) -> str:
    """Set when a provider account failed during a run: the run's other steps stop paying."""
    assert provider_role in ("prompt_writer", "image_maker")
    return f"{RUNS_PREFIX}{token_segment(run_id)}/account-stop-{provider_role}.json"


def operator_key(script_id: str) -> str:
    """Operators' prompt overrides, picks and pinned portraits of one script."""
    return f"{OPERATOR_PREFIX}{script_segment(script_id)}.json"


def lease_key(script_id: str) -> str:
    return f"{LEASES_PREFIX}{script_segment(script_id)}.json"


def thumbnail_key(script_id: str, subject: Subject, image_name: str) -> str:
    """A small JPEG of one stored image (`image_name`: the PNG's file name)."""
    stem = token_segment(image_name.removesuffix(".png"))
    return f"{THUMBNAILS_PREFIX}{script_segment(script_id)}/{subject_segment(subject)}/{stem}.jpg"


def upload_key(key: str) -> str:
    """An operator's upload: a key under `uploads/` made of safe segments."""
    if not key.startswith(UPLOADS_PREFIX):
        raise UnsafeKeyError(f"{key[:80]!r} is not under {UPLOADS_PREFIX}")
    for segment in key.removeprefix(UPLOADS_PREFIX).split("/"):
        token_segment(segment)
    return key


def rejected_key(inbox_key: str, inbox_prefix: str) -> str:
    """`scripts/rejected/{inbox object name}.error.json`; sub-folders of the inbox are kept."""
    name = inbox_key.removeprefix(inbox_prefix) if inbox_prefix else inbox_key
    return f"{REJECTED_PREFIX}{name}.error.json"
