"""Literal constants shared across the package. Nothing here reads the environment: every
setting (and its default) is a field of `scene_pipeline.settings.Settings`."""

from typing import Final

# Names shown in the Dagster UI.
ASSET_GROUP: Final = "scenes"
SCRIPT_PARTITIONS_NAME: Final = "scripts"
SCENE_JOB_NAME: Final = "scene_job"
# The Dagster pool whose slots stand for the KLING account's parallel tasks.
KLING_POOL: Final = "kling"

# Run tags.
TAG_LAUNCHED_BY: Final = "scene_pipeline/launched_by"  # "cli", "sensor", "nightly"
TAG_LEASE: Final = "scene_pipeline/lease"  # the lease token a CLI run holds for its script
TAG_PARTITION: Final = "dagster/partition"

# Contract limits (../shared/contract/script-input.md).
MAX_SCRIPT_BYTES: Final = 5 * 1024 * 1024
SCRIPT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SCENE_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,32}$"
KLING_ASPECT_RATIOS: Final = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
DEFAULT_ASPECT_RATIO: Final = "9:16"
NARRATOR: Final = "narration"

# KLING accepts prompts up to 2500 characters.
KLING_PROMPT_LIMIT: Final = 2500
# KLING's multi-image endpoint takes at most this many subject images.
KLING_MAX_REFERENCES: Final = 4

# The earlier service's negative prompt (../shared/reference/openai.md).
BASE_NEGATIVE_PROMPT: Final = "low quality, bad anatomy, blurry, pixelated, disfigured"
