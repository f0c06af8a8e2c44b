"""Every setting the pipeline reads, parsed once from the environment into one typed model.

`Settings.from_env(os.environ)` is called once per process by each entry point (definitions,
CLI) and handed down: no other module reads the environment. A bad value is refused by the
same code everywhere, with one line naming the variable (`ConfigurationError`).

The embedded default is decided here too: without keys the pipeline writes to a local folder,
writes prompts with the offline template writer and draws offline placeholders, and says so
(`describe`). Secrets are held as `SecretStr` (never printed); resources are given `EnvVar`s
named after the variables, so that the Dagster UI shows names, never values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from scene_pipeline.constants import KLING_PROMPT_LIMIT

logger = logging.getLogger("scene_pipeline")

ImageProvider = Literal["kling", "openai-images", "offline"]
KlingModel = Literal["kling-v1", "kling-v1-5", "kling-v2", "kling-v2-new", "kling-v2-1"]
# Models that KLING's multi-image2image endpoint accepts (../shared/reference/kling-api.md).
KlingReferenceModel = Literal["kling-v2", "kling-v2-1"]
# Prefixes the pipeline writes itself: the inbox may not overlap them.
RESERVED_PREFIXES = ("results/", "pipeline/", "scripts/rejected/")


class ConfigurationError(ValueError):
    """An environment setting has a value the pipeline cannot use (one line, names it)."""


def _env(name: str, *more: str) -> Any:
    """An optional setting (None when unset) read from `name` (or the alternatives)."""
    return Field(default=None, validation_alias=AliasChoices(name, *more) if more else name)


def _set(name: str, default: Any, **bounds: Any) -> Any:
    """A setting read from the variable `name`, `default` when unset, within `bounds`."""
    return Field(default=default, validation_alias=name, **bounds)


class Settings(BaseModel):
    """The pipeline's configuration. Field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # -- storage ----------------------------------------------------------------------------
    s3_bucket_name: str | None = _env("S3_BUCKET_NAME")
    aws_region: str | None = _env("AWS_REGION", "AWS_DEFAULT_REGION")
    aws_endpoint_url: str | None = _env("AWS_ENDPOINT_URL")
    local_dir: str = _set("SCENE_PIPELINE_LOCAL_DIR", "./.scene_pipeline/storage")

    # -- prompt writer ----------------------------------------------------------------------
    openai_api_key: SecretStr | None = _env("OPENAI_API_KEY")
    openai_base_url: str | None = _env("OPENAI_BASE_URL")
    openai_model: str = _set("OPENAI_MODEL", "gpt-4.1-mini")
    prompt_max_chars: int = _set(
        "SCENE_PIPELINE_PROMPT_MAX_CHARS", 1500, ge=100, le=KLING_PROMPT_LIMIT
    )

    # -- image maker ------------------------------------------------------------------------
    image_provider: ImageProvider | None = _env("SCENE_PIPELINE_IMAGE_PROVIDER")
    kling_access_key: SecretStr | None = _env("KLING_ACCESS_KEY")
    kling_secret_key: SecretStr | None = _env("KLING_SECRET_KEY")
    kling_api_base_url: str = _set("KLING_API_BASE_URL", "https://api-singapore.klingai.com")
    kling_model: KlingModel = _set("KLING_MODEL", "kling-v2-1")
    kling_reference_model: KlingReferenceModel = _set("KLING_REFERENCE_MODEL", "kling-v2")
    kling_max_concurrency: int = _set("KLING_MAX_CONCURRENCY", 5, ge=1, le=100)
    kling_task_timeout_seconds: float = _set("KLING_TASK_TIMEOUT_SECONDS", 600.0, gt=0, le=3600)
    kling_poll_interval_seconds: float = _set("KLING_POLL_INTERVAL_SECONDS", 2.0, gt=0, le=60)
    openai_images_api_key: SecretStr | None = _env("OPENAI_IMAGES_API_KEY")
    openai_images_base_url: str | None = _env("OPENAI_IMAGES_BASE_URL")
    openai_images_model: str = _set("OPENAI_IMAGES_MODEL", "gpt-image-1")
    character_references: bool = _set("SCENE_PIPELINE_CHARACTER_REFERENCES", True)
    candidates: int = _set("SCENE_PIPELINE_CANDIDATES", 1, ge=1, le=4)

    # -- operations -------------------------------------------------------------------------
    inbox_prefix: str = _set("SCENE_PIPELINE_INBOX_PREFIX", "scripts/incoming/")
    inbox_max_per_tick: int = _set("SCENE_PIPELINE_INBOX_MAX_PER_TICK", 500, ge=1, le=10_000)
    inbox_interval_seconds: int = _set("SCENE_PIPELINE_INBOX_INTERVAL_SECONDS", 30, ge=1, le=86_400)
    inbox_tick_seconds: float = _set("SCENE_PIPELINE_INBOX_TICK_SECONDS", 20.0, gt=0, le=50)
    nightly_cron: str = _set("SCENE_PIPELINE_NIGHTLY_CRON", "0 3 * * *")
    nightly_timezone: str = _set("SCENE_PIPELINE_NIGHTLY_TIMEZONE", "Asia/Seoul")
    nightly_max_runs: int = _set("SCENE_PIPELINE_NIGHTLY_MAX_RUNS", 50, ge=1, le=10_000)
    nightly_max_images: int = _set("SCENE_PIPELINE_NIGHTLY_MAX_IMAGES", 200, ge=0, le=100_000)
    redraw_stale: bool = _set("SCENE_PIPELINE_REDRAW_STALE", False)

    # -- validation -------------------------------------------------------------------------

    @field_validator("inbox_prefix")
    @classmethod
    def _safe_inbox_prefix(cls, prefix: str) -> str:
        segments = prefix.split("/")[:-1]
        if not prefix.endswith("/"):
            raise ValueError('must end with "/"')
        if prefix.startswith("/") or any(s in ("", ".", "..") for s in segments):
            raise ValueError('must be a relative key prefix such as "scripts/incoming/"')
        for reserved in RESERVED_PREFIXES:
            if prefix.startswith(reserved) or reserved.startswith(prefix):
                raise ValueError(
                    f"overlaps {reserved!r}, where the pipeline writes its own objects"
                )
        return prefix

    @field_validator("nightly_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known IANA time zone") from None
        return value

    @field_validator("nightly_cron")
    @classmethod
    def _five_field_cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("must be a cron expression of 5 fields, e.g. '0 3 * * *'")
        return value

    @model_validator(mode="after")
    def _provider_keys(self) -> Settings:
        if self.image_provider == "kling" and not self.has_kling_keys:
            raise ValueError(
                "SCENE_PIPELINE_IMAGE_PROVIDER=kling needs KLING_ACCESS_KEY and KLING_SECRET_KEY"
            )
        if self.image_provider == "openai-images" and self.openai_images_key_name is None:
            raise ValueError(
                "SCENE_PIPELINE_IMAGE_PROVIDER=openai-images needs OPENAI_IMAGES_API_KEY"
                " (or OPENAI_API_KEY)"
            )
        if self.candidates > self.kling_max_concurrency and self.image_maker == "kling":
            raise ValueError(
                f"SCENE_PIPELINE_CANDIDATES={self.candidates} is more than"
                f" KLING_MAX_CONCURRENCY={self.kling_max_concurrency}: a task of n images holds"
                " n of the account's slots"
            )
        return self

    # -- parsing ----------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse the settings from `env`; blank values count as unset.

        Raises:
            ConfigurationError: one line naming the first bad variable and why.
        """
        names = _variable_names()
        values = {k: v.strip() for k, v in env.items() if k in names and v.strip()}
        for flag in _BOOL_VARIABLES:
            if flag in values:
                values[flag] = _parse_bool(flag, values[flag])
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ConfigurationError(_one_line(err, values)) from None

    # -- what the settings mean -------------------------------------------------------------

    @property
    def has_kling_keys(self) -> bool:
        return bool(self.kling_access_key and self.kling_secret_key)

    @property
    def openai_images_key_name(self) -> str | None:
        """The variable that holds the images API key, None when neither is set."""
        if self.openai_images_api_key:
            return "OPENAI_IMAGES_API_KEY"
        return "OPENAI_API_KEY" if self.openai_api_key else None

    @property
    def storage(self) -> Literal["s3", "local"]:
        return "s3" if self.s3_bucket_name else "local"

    @property
    def prompt_writer(self) -> Literal["openai", "offline"]:
        return "openai" if self.openai_api_key else "offline"

    @property
    def image_maker(self) -> ImageProvider:
        if self.image_provider:
            return self.image_provider
        return "kling" if self.has_kling_keys else "offline"

    @property
    def offline(self) -> bool:
        return self.prompt_writer == "offline" or self.image_maker == "offline"

    @property
    def local_root(self) -> Path:
        return Path(self.local_dir).expanduser().resolve()

    def describe(self) -> list[str]:
        """What this configuration will use, one line per part, endpoints without credentials."""
        from scene_pipeline.urls import redacted_url

        if self.storage == "s3":
            storage = (
                f"S3 bucket s3://{self.s3_bucket_name} at"
                f" {redacted_url(self.aws_endpoint_url, 'AWS')}"
            )
        else:
            storage = f"local folder {self.local_root}"
        if self.prompt_writer == "openai":
            prompts = (
                f"OpenAI {self.openai_model} at"
                f" {redacted_url(self.openai_base_url, 'https://api.openai.com/v1')}"
            )
        else:
            prompts = "OFFLINE template writer (OPENAI_API_KEY not set)"
        if self.image_maker == "kling":
            images = (
                f"KLING {self.kling_model} at {redacted_url(self.kling_api_base_url, '?')},"
                f" at most {self.kling_max_concurrency} tasks at once (the '{'kling'}' pool)"
            )
        elif self.image_maker == "openai-images":
            images = (
                f"OpenAI images {self.openai_images_model} at"
                f" {redacted_url(self.openai_images_base_url, 'https://api.openai.com/v1')}"
            )
        else:
            images = "OFFLINE placeholder maker (no KLING keys, no SCENE_PIPELINE_IMAGE_PROVIDER)"
        references = "on" if self.character_references else "off"
        return [
            f"storage: {storage}",
            f"prompts: {prompts}",
            f"images: {images}; character references {references}, {self.candidates}"
            " candidate(s) per scene",
        ]

    def announce(self) -> None:
        """Log the configuration once per process tree, loudly when anything is offline."""
        if _announcements["silenced"]:
            return
        for line in self.describe():
            level = logging.WARNING if "OFFLINE" in line else logging.INFO
            logger.log(level, "scene-pipeline %s", line)
        if self.offline:
            logger.warning(
                "scene-pipeline runs OFFLINE: manifests mark prompts/images as placeholders"
            )


# Processes that already said it (the CLI prints the configuration itself; the forkserver's
# children inherit what their parent said) silence the code location's announcement.
_announcements = {"silenced": False}


def silence_announcements() -> None:
    _announcements["silenced"] = True


_BOOL_VARIABLES = ("SCENE_PIPELINE_CHARACTER_REFERENCES", "SCENE_PIPELINE_REDRAW_STALE")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r}: use on or off")


def _variable_names() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(str(a) for a in alias.choices)
    return names


def variable_names() -> list[str]:
    """Every environment variable the pipeline reads, for documentation checks."""
    return sorted(_variable_names())


def _one_line(err: ValidationError, values: Mapping[str, str]) -> str:
    first = err.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    name = str(loc[0]) if loc else ""
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if name in values:
        shown = "<secret>" if "KEY" in name else repr(values[name])
        return f"{name}={shown}: {message}"
    return message
