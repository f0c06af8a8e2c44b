"""nightly_regeneration_schedule: rerun scripts with failed or stale scenes, a bounded number
per night; complete, up-to-date scripts are never requested (a run of them would cost nothing,
but it would still fill the run queue)."""

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

from scene_pipeline.constants import SCENE_JOB_NAME, SCRIPT_PARTITIONS_NAME
from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.jobs import scene_job
from scene_pipeline.regeneration import ScriptHealth, check_scripts
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource
from scene_pipeline.resources.storage import StorageResource

DEFAULT_NIGHTLY_CRON = "0 3 * * *"
DEFAULT_NIGHTLY_TIMEZONE = "Asia/Seoul"
DEFAULT_NIGHTLY_MAX_RUNS = 50
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def _priority(health: ScriptHealth) -> tuple[int, str]:
    # Failed scenes first (someone is waiting for them), then stale ones.
    return (0 if health.failed or health.never_finished else 1, health.script_id)


def build_nightly_schedule(
    cron: str = DEFAULT_NIGHTLY_CRON,
    timezone: str = DEFAULT_NIGHTLY_TIMEZONE,
    max_runs: int = DEFAULT_NIGHTLY_MAX_RUNS,
) -> ScheduleDefinition:
    @schedule(
        name="nightly_regeneration_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=scene_job,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Every night ({cron}, {timezone}): one run for each script with failed,"
        f" pending or stale scenes, at most {max_runs} per night. Each run redoes only those"
        " scenes; unchanged images are reused.",
    )
    def nightly_regeneration_schedule(
        context: ScheduleEvaluationContext,
        storage: StorageResource,
        prompt_writer: PromptWriterResource,
        image_maker: ImageMakerResource,
    ) -> list[RunRequest] | SkipReason:
        # A script with a run queued or in progress is left alone: a second run would pay for
        # the same scenes (a first run still queued has no manifest yet, so it looks failed).
        busy = {
            run.tags.get("dagster/partition")
            for run in context.instance.get_runs(
                RunsFilter(job_name=SCENE_JOB_NAME, statuses=IN_PROGRESS)
            )
        }
        script_ids = [
            script_id
            for script_id in context.instance.get_dynamic_partitions(SCRIPT_PARTITIONS_NAME)
            if script_id not in busy
        ]
        checked = check_scripts(
            storage.get_bucket(), script_ids, prompt_writer.identity, image_maker.identity
        )
        for health in checked:
            if health.unreadable:
                context.log.warning(f"script {health.script_id} skipped: {health.unreadable}")
        due = sorted((h for h in checked if h.needs_work and not h.unreadable), key=_priority)
        if not due:
            return SkipReason(f"all {len(checked)} script(s) are complete and up to date")
        if len(due) > max_runs:
            context.log.warning(
                f"{len(due)} scripts need work; requesting {max_runs} tonight, the rest later"
            )
        night = (context.scheduled_execution_time or utc_now()).strftime("%Y-%m-%d")
        return [
            RunRequest(
                partition_key=health.script_id,
                # One run per script per night, however often the tick is evaluated.
                run_key=f"nightly:{night}:{health.script_id}",
                tags={
                    "scene_pipeline/trigger": "nightly",
                    "scene_pipeline/reason": health.reason(),
                },
            )
            for health in due[:max_runs]
        ]

    return nightly_regeneration_schedule
