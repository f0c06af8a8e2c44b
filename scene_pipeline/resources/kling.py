"""The KLING image maker as a Dagster resource.

No `from __future__ import annotations` here: Dagster reads the field annotations at class
creation to build the config schema, and string annotations break that.

Build it in `definitions.py` with the keys as `dg.EnvVar`, so that the UI and the run config
show the variable names only:

    KlingImageMakerResource(
        access_key=dg.EnvVar("KLING_ACCESS_KEY"),
        secret_key=dg.EnvVar("KLING_SECRET_KEY"),
        base_url=...,  # KLING_API_BASE_URL, when set
    )
"""

import hashlib
import threading
from typing import Any, ClassVar

from pydantic import Field

from scene_pipeline.clients.kling import (
    DEFAULT_BACKOFF_BASE_SECONDS,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MODEL,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    KNOWN_MODELS,
    KlingClient,
)
from scene_pipeline.constants import DEFAULT_KLING_MAX_CONCURRENCY
from scene_pipeline.providers.kling import (
    DEFAULT_MAX_RESUBMITS,
    DEFAULT_POLL_INTERVAL_SECONDS,
    DEFAULT_TASK_TIMEOUT_SECONDS,
    KlingImageMaker,
)
from scene_pipeline.resources.providers import ImageMakerResource

# One client per process and configuration: it keeps its JWT and its connection pool across
# the many steps (and resource instances) of a run. The key holds a hash, never the keys.
_CLIENTS: dict[tuple[Any, ...], KlingClient] = {}
_CLIENTS_LOCK = threading.Lock()


class KlingImageMakerResource(ImageMakerResource):
    """Draws scene pictures with KLING's text-to-image API (KLING_ACCESS_KEY, KLING_SECRET_KEY)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_key", "secret_key"})

    access_key: str = Field(
        description="KLING access key. Pass dg.EnvVar('KLING_ACCESS_KEY'), never a literal,"
        " so that the UI shows only the variable's name."
    )
    secret_key: str = Field(
        description="KLING secret key that signs the JWT. Pass dg.EnvVar('KLING_SECRET_KEY')."
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="API host (KLING_API_BASE_URL): api-singapore (global accounts),"
        " api-beijing (China accounts) or the legacy api.klingai.com.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        description=f"Model, sent as `model_name` (KLING_MODEL); one of {', '.join(KNOWN_MODELS)}.",
    )
    max_concurrency: int = Field(
        default=DEFAULT_KLING_MAX_CONCURRENCY,
        ge=1,
        le=100,
        description="Tasks in flight at once per account in one process (KLING_MAX_CONCURRENCY);"
        " at most the resource pack's parallel task limit.",
    )
    task_timeout_seconds: float = Field(
        default=DEFAULT_TASK_TIMEOUT_SECONDS,
        gt=0,
        description="A task not finished this long after we start polling it fails its scene"
        " (KLING_TASK_TIMEOUT_SECONDS); the next run looks at it again before paying anew.",
    )
    poll_interval_seconds: float = Field(
        default=DEFAULT_POLL_INTERVAL_SECONDS,
        gt=0,
        description="Pause between two polls of a task (KLING_POLL_INTERVAL_SECONDS).",
    )
    request_timeout_seconds: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        gt=0,
        description="Timeout of one HTTP request to KLING (connect at most 10 s).",
    )
    max_resubmits: int = Field(
        default=DEFAULT_MAX_RESUBMITS,
        ge=0,
        le=10,
        description="New tasks after a task fails for a reason other than moderation.",
    )
    backoff_base_seconds: float = Field(
        default=DEFAULT_BACKOFF_BASE_SECONDS,
        gt=0,
        description="First back-off after a retryable error; doubles per attempt, with jitter."
        " KLING asks for at least 1 s.",
    )
    max_request_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=20,
        description="Attempts of one request on retryable errors before the step is retried.",
    )

    def get_client(self) -> KlingClient:
        """The process-wide client of this configuration."""
        secrets = hashlib.sha256(f"{self.access_key}\0{self.secret_key}".encode()).hexdigest()
        key = (
            self.base_url,
            secrets,
            self.max_concurrency,
            self.request_timeout_seconds,
            self.backoff_base_seconds,
            self.max_request_attempts,
        )
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = KlingClient(
                    self.access_key,
                    self.secret_key,
                    base_url=self.base_url,
                    max_concurrency=self.max_concurrency,
                    request_timeout=self.request_timeout_seconds,
                    backoff_base=self.backoff_base_seconds,
                    max_attempts=self.max_request_attempts,
                )
            return client

    def get_maker(self) -> KlingImageMaker:
        return KlingImageMaker(
            self.get_client(),
            model=self.model,
            task_timeout_seconds=self.task_timeout_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            max_resubmits=self.max_resubmits,
        )
