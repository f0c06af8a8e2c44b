"""The one switch between the embedded default and the real services, decided from the
environment in one place and said out loud.

- Storage: S3 when S3_BUCKET_NAME is set, else a local folder (SCENE_PIPELINE_LOCAL_DIR).
- Prompts: OpenAI when OPENAI_API_KEY is set, else the offline template writer.
- Images: SCENE_PIPELINE_IMAGE_PROVIDER (kling, openai-images, offline); by default KLING
  when its keys are set, else the offline placeholder maker.

Secrets are passed to resources as `EnvVar`s, so their values are read where they are used
and never appear in the resource config that the Dagster UI shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from scene_pipeline.constants import (
    DEFAULT_KLING_MAX_CONCURRENCY,
    DEFAULT_LOCAL_DIR,
    DEFAULT_PROMPT_CAP,
)
from scene_pipeline.io_managers import JsonIOManager, ManifestIOManager
from scene_pipeline.providers.kling import (
    DEFAULT_POLL_INTERVAL_SECONDS,
    DEFAULT_TASK_TIMEOUT_SECONDS,
)
from scene_pipeline.resources.kling import KlingImageMakerResource
from scene_pipeline.resources.openai import OpenAIImagesMakerResource, OpenAIPromptWriterResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
    PromptWriterResource,
)
from scene_pipeline.resources.storage import (
    LocalStorageResource,
    S3StorageResource,
    StorageResource,
)
from scene_pipeline.urls import redacted_url

logger = logging.getLogger("scene_pipeline")

ImageProvider = Literal["kling", "openai-images", "offline"]
IMAGE_PROVIDERS: tuple[ImageProvider, ...] = ("kling", "openai-images", "offline")


class ConfigurationError(ValueError):
    """An environment setting has a value the pipeline cannot use."""


@dataclass(frozen=True)
class Mode:
    storage: Literal["s3", "local"]
    prompt_writer: Literal["openai", "offline"]
    image_maker: ImageProvider

    @property
    def offline(self) -> bool:
        return self.prompt_writer == "offline" or self.image_maker == "offline"


def _set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def resolve_mode(env: Mapping[str, str]) -> Mode:
    requested = env.get("SCENE_PIPELINE_IMAGE_PROVIDER", "").strip().lower()
    if requested and requested not in IMAGE_PROVIDERS:
        raise ConfigurationError(
            f"SCENE_PIPELINE_IMAGE_PROVIDER={requested!r} is not one of"
            f" {', '.join(IMAGE_PROVIDERS)}"
        )
    kling_keys = _set(env, "KLING_ACCESS_KEY") and _set(env, "KLING_SECRET_KEY")
    image_maker: ImageProvider = requested or ("kling" if kling_keys else "offline")  # type: ignore[assignment]
    if image_maker == "kling" and not kling_keys:
        raise ConfigurationError(
            "SCENE_PIPELINE_IMAGE_PROVIDER=kling needs KLING_ACCESS_KEY and KLING_SECRET_KEY"
        )
    if image_maker == "openai-images" and not (
        _set(env, "OPENAI_IMAGES_API_KEY") or _set(env, "OPENAI_API_KEY")
    ):
        raise ConfigurationError(
            "SCENE_PIPELINE_IMAGE_PROVIDER=openai-images needs OPENAI_IMAGES_API_KEY"
            " (or OPENAI_API_KEY)"
        )
    return Mode(
        storage="s3" if _set(env, "S3_BUCKET_NAME") else "local",
        prompt_writer="openai" if _set(env, "OPENAI_API_KEY") else "offline",
        image_maker=image_maker,
    )


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    """The integer setting `name`, `default` when unset; ConfigurationError when invalid."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
    return value


def build_storage(env: Mapping[str, str]) -> StorageResource:
    if _set(env, "S3_BUCKET_NAME"):
        return S3StorageResource(
            bucket=env["S3_BUCKET_NAME"].strip(),
            s3=S3Resource(
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
                endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            ),
        )
    local_dir = env.get("SCENE_PIPELINE_LOCAL_DIR") or DEFAULT_LOCAL_DIR
    return LocalStorageResource(local_dir=str(Path(local_dir).expanduser().resolve()))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


def build_prompt_writer(env: Mapping[str, str], mode: Mode) -> PromptWriterResource:
    cap = env_int(env, "SCENE_PIPELINE_PROMPT_MAX_CHARS", DEFAULT_PROMPT_CAP)
    if mode.prompt_writer == "offline":
        return OfflinePromptWriterResource(max_prompt_chars=cap)
    settings: dict[str, Any] = {"max_prompt_chars": cap}
    if base_url := env.get("OPENAI_BASE_URL", "").strip():
        settings["base_url"] = base_url
    if model := env.get("OPENAI_MODEL", "").strip():
        settings["model"] = model
    return OpenAIPromptWriterResource(api_key=EnvVar("OPENAI_API_KEY"), **settings)


def build_image_maker(env: Mapping[str, str], mode: Mode) -> ImageMakerResource:
    if mode.image_maker == "kling":
        settings: dict[str, Any] = {
            "max_concurrency": env_int(env, "KLING_MAX_CONCURRENCY", DEFAULT_KLING_MAX_CONCURRENCY),
            "task_timeout_seconds": _float(
                env, "KLING_TASK_TIMEOUT_SECONDS", DEFAULT_TASK_TIMEOUT_SECONDS
            ),
            "poll_interval_seconds": _float(
                env, "KLING_POLL_INTERVAL_SECONDS", DEFAULT_POLL_INTERVAL_SECONDS
            ),
        }
        if base_url := env.get("KLING_API_BASE_URL", "").strip():
            settings["base_url"] = base_url
        if model := env.get("KLING_MODEL", "").strip():
            settings["model"] = model
        return KlingImageMakerResource(
            access_key=EnvVar("KLING_ACCESS_KEY"),
            secret_key=EnvVar("KLING_SECRET_KEY"),
            **settings,
        )
    if mode.image_maker == "openai-images":
        key_name = (
            "OPENAI_IMAGES_API_KEY" if _set(env, "OPENAI_IMAGES_API_KEY") else "OPENAI_API_KEY"
        )
        settings = {}
        if base_url := env.get("OPENAI_IMAGES_BASE_URL", "").strip():
            settings["base_url"] = base_url
        if model := env.get("OPENAI_IMAGES_MODEL", "").strip():
            settings["model"] = model
        return OpenAIImagesMakerResource(api_key=EnvVar(key_name), **settings)
    return OfflineImageMakerResource()


def image_steps_per_run(env: Mapping[str, str]) -> int:
    """Image steps one run starts at once: the account's parallel-task limit."""
    return max(1, env_int(env, "KLING_MAX_CONCURRENCY", DEFAULT_KLING_MAX_CONCURRENCY))


def nightly_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Cron, timezone and per-night run bound of the nightly regeneration schedule."""
    from scene_pipeline.schedules import (
        DEFAULT_NIGHTLY_CRON,
        DEFAULT_NIGHTLY_MAX_RUNS,
        DEFAULT_NIGHTLY_TIMEZONE,
    )

    return {
        "cron": env.get("SCENE_PIPELINE_NIGHTLY_CRON", "").strip() or DEFAULT_NIGHTLY_CRON,
        "timezone": env.get("SCENE_PIPELINE_NIGHTLY_TIMEZONE", "").strip()
        or DEFAULT_NIGHTLY_TIMEZONE,
        "max_runs": env_int(env, "SCENE_PIPELINE_NIGHTLY_MAX_RUNS", DEFAULT_NIGHTLY_MAX_RUNS),
    }


def build_resources(env: Mapping[str, str]) -> dict[str, Any]:
    """Every resource of the code location, chosen from `env`."""
    mode = resolve_mode(env)
    storage = build_storage(env)
    return {
        "storage": storage,
        "prompt_writer": build_prompt_writer(env, mode),
        "image_maker": build_image_maker(env, mode),
        "io_manager": JsonIOManager(storage=storage),
        "manifest_io_manager": ManifestIOManager(storage=storage),
    }


def describe(env: Mapping[str, str]) -> list[str]:
    """Human-readable lines saying what this environment will use (logged and printed)."""
    mode = resolve_mode(env)
    lines = [f"storage: {build_storage(env).describe()}"]
    writer = build_prompt_writer(env, mode)
    if isinstance(writer, OpenAIPromptWriterResource):
        lines.append(
            f"prompts: OpenAI {writer.model} at {redacted_url(writer.base_url, 'api.openai.com')}"
        )
    else:
        lines.append("prompts: OFFLINE template writer (OPENAI_API_KEY not set)")
    maker = build_image_maker(env, mode)
    if isinstance(maker, KlingImageMakerResource):
        lines.append(
            f"images: KLING {maker.model} at {redacted_url(maker.base_url, '?')}, at most"
            f" {maker.max_concurrency}"
            " tasks at once per process (the kling pool bounds all runs)"
        )
    elif isinstance(maker, OpenAIImagesMakerResource):
        lines.append(
            f"images: OpenAI images {maker.model} at"
            f" {redacted_url(maker.base_url, 'api.openai.com')}"
        )
    else:
        lines.append(
            "images: OFFLINE placeholder maker (no KLING keys, no SCENE_PIPELINE_IMAGE_PROVIDER)"
        )
    return lines


def announce(env: Mapping[str, str]) -> None:
    """Log the mode once, loudly when anything is offline."""
    mode = resolve_mode(env)
    for line in describe(env):
        if "OFFLINE" in line:
            logger.warning("scene-pipeline %s", line)
        else:
            logger.info("scene-pipeline %s", line)
    if mode.offline:
        logger.warning(
            "scene-pipeline runs OFFLINE: manifests will mark prompts/images as placeholders"
        )
