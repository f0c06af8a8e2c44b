"""The nightly schedule requests runs only for scripts with failed, pending or stale scenes."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunRequest, build_schedule_context
from dagster._core.test_utils import create_run_for_test

from scene_pipeline.definitions import defs
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
)
from scene_pipeline.resources.storage import LocalStorageResource
from scene_pipeline.schedules import build_nightly_schedule

from .pipeline_helpers import accept, example, run_script
from .test_assets import RefusingImageMakerResource


class NewModelImageMakerResource(OfflineImageMakerResource):
    """The same drawings, but a different model name: every earlier image is now stale."""

    def get_maker(self):
        maker = super().get_maker()
        maker.identity = maker.identity.model_copy(update={"model": "placeholder-v2"})
        return maker


@pytest.fixture
def instance(tmp_path: Path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        yield instance


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorageResource:
    return LocalStorageResource(local_dir=str(tmp_path / "bucket"))


def evaluate(instance, storage, image_maker: ImageMakerResource | None = None, max_runs: int = 50):
    schedule = build_nightly_schedule(max_runs=max_runs)
    with build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=datetime(2026, 11, 25, 18, 0, tzinfo=UTC),
        resources={
            "storage": storage,
            "prompt_writer": OfflinePromptWriterResource(),
            "image_maker": image_maker or OfflineImageMakerResource(long_side=128),
        },
    ) as context:
        return schedule.evaluate_tick(context)


def requested(result) -> dict[str, RunRequest]:
    return {r.partition_key: r for r in result.run_requests or []}


def test_complete_scripts_are_never_requested(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    run_script(instance, storage, script_id)
    result = evaluate(instance, storage)
    assert not result.run_requests
    assert "complete and up to date" in (result.skip_message or "")


def test_failed_scripts_and_scripts_never_run_are_requested(instance, storage) -> None:
    failed_id = accept(storage, example("rooftop_cat.json"), instance)
    run_script(instance, storage, failed_id, image_maker=RefusingImageMakerResource(refused=["2"]))
    fine_id = accept(storage, example("bus_stop_request.json"), instance)
    run_script(instance, storage, fine_id)
    never_id = accept(storage, example("rainy_day_requests.json"), instance)

    runs = requested(evaluate(instance, storage))
    assert set(runs) == {failed_id, never_id}
    assert runs[failed_id].run_key == "nightly:2026-11-25:rooftop-cat"
    assert "1 failed" in runs[failed_id].tags["scene_pipeline/reason"]
    # Deterministic: the same night gives the same run keys.
    assert {r.run_key for r in requested(evaluate(instance, storage)).values()} == {
        r.run_key for r in runs.values()
    }

    # A script whose run is queued or in progress is not requested again.
    create_run_for_test(
        instance,
        job_name="scene_job",
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": never_id},
    )
    assert set(requested(evaluate(instance, storage))) == {failed_id}


def test_a_model_change_makes_scripts_stale_and_the_night_is_bounded(instance, storage) -> None:
    for name in ("rooftop_cat.json", "bus_stop_request.json", "rainy_day_requests.json"):
        run_script(instance, storage, accept(storage, example(name), instance))
    assert not evaluate(instance, storage).run_requests

    runs = requested(evaluate(instance, storage, NewModelImageMakerResource(long_side=128)))
    assert set(runs) == {"rooftop-cat", "2024", "rainy-day"}
    assert "stale" in runs["2024"].tags["scene_pipeline/reason"]

    bounded = evaluate(instance, storage, NewModelImageMakerResource(long_side=128), max_runs=2)
    assert len(bounded.run_requests) == 2


def test_the_real_definitions_run_the_schedule_at_three_in_seoul() -> None:
    schedule = defs.resolve_schedule_def("nightly_regeneration_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "Asia/Seoul"
    assert schedule.job_name == "scene_job"
