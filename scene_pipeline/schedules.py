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
    SCENE_JOB_NAME,
    SCRIPT_PARTITIONS_NAME,
    TAG_LAUNCHED_BY,
    TAG_PARTITION,
)
from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.core import leases
from scene_pipeline.core.nightly import check_scripts, plan_night
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
        busy = {
            run.tags.get(TAG_PARTITION)
            for run in context.instance.get_runs(
                RunsFilter(job_name=SCENE_JOB_NAME, statuses=IN_PROGRESS)
            )
        }
        script_ids = [
            sid
            for sid in context.instance.get_dynamic_partitions(SCRIPT_PARTITIONS_NAME)
            if sid not in busy and leases.holder(store, sid) is None
        ]
        needs = check_scripts(
            store, script_ids, planning_providers(prompt_writer, image_maker), pipeline.redraw_stale
        )
        for item in needs:
            if item.unreadable:
                context.log.warning(f"script {item.script_id} skipped: {item.unreadable}")
        requests = plan_night(needs, settings.nightly_max_runs, settings.nightly_max_images)
        if not requests:
            return SkipReason(f"none of {len(needs)} script(s) has anything to draw")
        when = (context.scheduled_execution_time or utc_now()).astimezone(ZoneInfo(timezone))
        night = when.strftime("%Y-%m-%d")
        return [
            RunRequest(
                partition_key=r.script_id,
                # One run per script per night, however often the tick is evaluated.
                run_key=f"nightly:{night}:{r.script_id}",
                run_config=scene_selection_config(r.scene_ids),
                tags={TAG_LAUNCHED_BY: "nightly", "scene_pipeline/reason": r.reason[:200]},
            )
            for r in requests
        ]

    return nightly_regeneration_schedule


def scene_selection_config(scene_ids: list[str]) -> dict:
    return {"ops": {"scenes": {"ops": {"plan_script": {"config": {"scene_ids": scene_ids}}}}}}
