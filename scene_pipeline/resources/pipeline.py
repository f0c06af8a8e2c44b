"""The `pipeline` resource: run-wide settings that are not a provider's (from Settings).

No `from __future__ import annotations` here (Dagster reads the annotations at class creation).
"""

from dagster import ConfigurableResource
from pydantic import Field


class PipelineResource(ConfigurableResource):
    """Defaults of a run and the account limit that every run shares."""

    kling_pool_limit: int = Field(
        default=5,
        ge=1,
        description="Limit of the `kling` pool: the KLING account's parallel tasks"
        " (KLING_MAX_CONCURRENCY). Runs set the instance's pool to it.",
    )
    candidates: int = Field(
        default=1, ge=1, le=4, description="Images per scene (SCENE_PIPELINE_CANDIDATES)."
    )
    redraw_stale: bool = Field(
        default=False,
        description="Redraw scenes that are stale only because the configuration changed"
        " (SCENE_PIPELINE_REDRAW_STALE).",
    )
