"""`script_inbox_sensor`: every new object in the inbox becomes an accepted script version and,
when it has anything to draw, a run. The decisions are in core/inbox.py; this turns them into
Dagster's SensorResult: partitions to add, the `script_document` materializations, and one
run request per script version with `run_key = "{key}:{etag}"` (never two runs for one
object). An accepted version that is already drawn (an identical re-drop) gets no run.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from scene_pipeline.assets.script import accepted_event
from scene_pipeline.constants import TAG_LAUNCHED_BY
from scene_pipeline.core.assessment import run_due
from scene_pipeline.core.inbox import TickOutcome, evaluate_inbox, run_key_for
from scene_pipeline.partitions import script_partitions
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.pipeline import PipelineResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    PromptWriterResource,
    planning_providers,
)
from scene_pipeline.settings import Settings

TAG_INBOX_KEY = "scene_pipeline/inbox_key"
TAG_INBOX_ETAG = "scene_pipeline/inbox_etag"


def build_script_inbox_sensor(settings: Settings, job: Any) -> SensorDefinition:
    @sensor(
        name="script_inbox_sensor",
        job=job,
        minimum_interval_seconds=settings.inbox_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Accepts new script objects under {settings.inbox_prefix} (at most"
            f" {settings.inbox_max_per_tick} or {settings.inbox_tick_seconds:g} s per tick): a"
            " scene_job run per new version with something to draw, a report under"
            " scripts/rejected/ for an invalid one."
        ),
    )
    def script_inbox_sensor(
        context: SensorEvaluationContext,
        bucket: BucketResource,
        prompt_writer: PromptWriterResource,
        image_maker: ImageMakerResource,
        pipeline: PipelineResource,
    ) -> SensorResult:
        """Accept new inbox objects and request one run per new script version."""
        store = bucket.get_bucket()
        providers = planning_providers(prompt_writer, image_maker)
        outcome = evaluate_inbox(
            store,
            settings.inbox_prefix,
            context.cursor,
            context.log,
            max_per_tick=settings.inbox_max_per_tick,
            budget_seconds=settings.inbox_tick_seconds,
            needs_run=lambda accepted: run_due(store, accepted, providers, pipeline.redraw_stale),
        )
        if outcome.skip_message is not None:
            return SensorResult(skip_reason=outcome.skip_message, cursor=outcome.cursor)
        context.log.info(outcome.summary)
        for unchanged in (a for a in outcome.accepted if not a.run_needed):
            context.log.info(f"script {unchanged.accepted.script.script_id}: {unchanged.why}")
        return sensor_result(outcome)

    return script_inbox_sensor


def sensor_result(outcome: TickOutcome) -> SensorResult:
    script_ids = list(dict.fromkeys(a.accepted.script.script_id for a in outcome.accepted))
    runs = [
        RunRequest(
            partition_key=a.accepted.script.script_id,
            run_key=run_key_for(a.key, a.etag),
            tags={
                TAG_LAUNCHED_BY: "sensor",
                TAG_INBOX_KEY: a.key,
                TAG_INBOX_ETAG: a.etag.strip('"'),
            },
        )
        for a in outcome.accepted
        if a.run_needed
    ]
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=(
            [script_partitions.build_add_request(script_ids)] if script_ids else []
        ),
        asset_events=[accepted_event(a.accepted) for a in outcome.accepted],
        cursor=outcome.cursor,
        skip_reason=None if runs else outcome.summary,
    )
