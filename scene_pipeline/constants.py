"""Literal constants shared across the package. Nothing here reads the environment."""

from typing import Final

# Names shown in the Dagster UI.
ASSET_GROUP: Final = "scenes"
SCRIPT_PARTITIONS_NAME: Final = "scripts"
SCENE_JOB_NAME: Final = "scene_job"
KLING_POOL: Final = "kling"
# Run tag saying what started a run: "cli", "sensor" (the UI and schedules add their own).
TAG_LAUNCHED_BY: Final = "scene_pipeline/launched_by"
# Op tag of the image steps: the executor limits them per run (jobs.build_scene_executor).
IMAGE_STEP_TAG: Final = "scene_pipeline/step"

# Contract limits (../shared/contract/script-input.md).
MAX_SCRIPT_BYTES: Final = 5 * 1024 * 1024
SCRIPT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SCENE_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,32}$"
KLING_ASPECT_RATIOS: Final = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
DEFAULT_ASPECT_RATIO: Final = "9:16"
NARRATOR: Final = "narration"

# KLING accepts prompts up to 2500 characters; we keep a margin by default.
KLING_PROMPT_LIMIT: Final = 2500
DEFAULT_PROMPT_CAP: Final = 1500

# The earlier service's negative prompt (../shared/reference/openai.md).
BASE_NEGATIVE_PROMPT: Final = "low quality, bad anatomy, blurry, pixelated, disfigured"

# Defaults of the environment settings (see README, "Configuration").
DEFAULT_LOCAL_DIR: Final = "./.scene_pipeline/storage"
DEFAULT_INBOX_PREFIX: Final = "scripts/incoming/"
DEFAULT_KLING_MAX_CONCURRENCY: Final = 5

# Per-step retries: transient provider errors are retried by Dagster's RetryPolicy; after the
# last retry the scene is recorded as failed so that the manifest still materializes.
PROMPT_STEP_MAX_RETRIES: Final = 3
IMAGE_STEP_MAX_RETRIES: Final = 3
RETRY_DELAY_SECONDS: Final = 2.0
