"""`nightly_regeneration_schedule`: runs the scripts that have something to draw, failed
scenes first, within a budget of runs and of paid images per night (core/nightly.py).
Complete, up-to-date scripts are never requested; scripts with a run in progress or held by
another holder (a CLI run) are left alone."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from scene_pipeline.constants import (
    SCRIPT_PARTITIONS_NAME,
    TAG_LAUNCHED_BY,
    TAG_PARTITION,
)
from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.core import leases
from scene_pipeline.core.nightly import NightlyRequest, check_scripts, plan_night
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.pipeline import PipelineResource
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    PromptWriterResource,
    planning_providers,
)
from scene_pipeline.settings import Settings

IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def build_nightly_schedule(settings: Settings, job: Any) -> ScheduleDefinition:
    timezone = settings.nightly_timezone

    @schedule(
        name="nightly_regeneration_schedule",
        cron_schedule=settings.nightly_cron,
        execution_timezone=timezone,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Every night ({settings.nightly_cron}, {timezone}): one run per script with"
        f" failed, pending or changed scenes, failed first; at most {settings.nightly_max_runs}"
        f" runs and {settings.nightly_max_images} paid images per night.",
    )
    def nightly_regeneration_schedule(
        context: ScheduleEvaluationContext,
        bucket: BucketResource,
        prompt_writer: PromptWriterResource,
        image_maker: ImageMakerResource,
        pipeline: PipelineResource,
    ) -> list[RunRequest] | SkipReason:
        store = bucket.get_bucket()
        scripts = context.instance.get_dynamic_partitions(SCRIPT_PARTITIONS_NAME)
        busy = busy_scripts(context.instance, store, scripts)
        needs = check_scripts(
            store,
            [sid for sid in scripts if sid not in busy],
            planning_providers(prompt_writer, image_maker),
            pipeline.redraw_stale,
        )
        for item in needs:
            if item.unreadable:
                context.log.warning(f"script {item.script_id} skipped: {item.unreadable}")
        requests = plan_night(needs, settings.nightly_max_runs, settings.nightly_max_images)
        if not requests:
            due = sum(1 for n in needs if n.images and not n.unreadable)
            if not due:
                return SkipReason(
                    f"none of {len(needs)} script(s) has anything to draw ({len(busy)} more busy)"
                )
            return SkipReason(
                f"{due} script(s) have something to draw, none within tonight's budget of"
                f" {settings.nightly_max_images} image(s) ({len(busy)} more busy)"
            )
        when = (context.scheduled_execution_time or utc_now()).astimezone(ZoneInfo(timezone))
        return [run_request(r, when.strftime("%Y-%m-%d")) for r in requests]

    return nightly_regeneration_schedule


def scene_selection_config(scene_ids: list[str]) -> dict:
    return {"ops": {"scenes": {"ops": {"plan_script": {"config": {"scene_ids": scene_ids}}}}}}


def busy_scripts(instance: Any, bucket: Any, script_ids: list[str]) -> set[str]:
    """Scripts with a run queued or going (any job: scene_job, a UI materialization, a
    backfill) or held by another holder (a CLI run): another run would pay for the same
    scenes (a run still queued has no manifest yet, so its script looks failed)."""
    running = {
        run.tags.get(TAG_PARTITION) for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS))
    }
    return {sid for sid in script_ids if sid in running or leases.holder(bucket, sid)}


def run_request(request: NightlyRequest, night: str) -> RunRequest:
    return RunRequest(
        partition_key=request.script_id,
        # One run per script per night, however often the tick is evaluated.
        run_key=f"nightly:{night}:{request.script_id}",
        run_config=scene_selection_config(request.scene_ids),
        tags={TAG_LAUNCHED_BY: "nightly", "scene_pipeline/reason": request.reason[:200]},
    )
