"""The nightly schedule on a real Dagster instance, over scripts made by real (in-process)
runs: it requests only scripts with something to draw, failed ones first, within a budget of
runs and of paid images, and leaves alone scripts that are busy, refused or merely stale."""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
)
from dagster._core.test_utils import create_run_for_test
from pydantic import Field

from scene_pipeline.constants import SCRIPT_PARTITIONS_NAME
from scene_pipeline.core import leases
from scene_pipeline.jobs import build_scene_job
from scene_pipeline.providers.base import (
    GeneratedImage,
    ImageMaker,
    ImageRequest,
    ProviderIdentity,
    SlotGate,
    TaskJournal,
)
from scene_pipeline.providers.errors import SceneRejectedError
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.providers import ImageMakerResource, OfflineImageMakerResource
from scene_pipeline.schedules import build_nightly_schedule
from scene_pipeline.settings import ConfigurationError, Settings
from scene_pipeline.wiring import build_resources

from .pipeline_helpers import (
    NIGHT,
    SCHEDULE_RESOURCES,
    accept,
    example,
    nightly_tick,
    run_script,
)

REASON = "scene_pipeline/reason"


class FailingMaker:
    """Draws placeholders, but fails the listed scenes: refused by moderation (`refused`) or
    rejected for another reason (a task that kept failing)."""

    def __init__(self, inner: ImageMaker, scenes: set[str], refused: bool) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.max_references = inner.max_references
        self.subjects = {f"scene {s}" for s in scenes}
        self.refused = refused

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        if request.subject in self.subjects:
            raise SceneRejectedError(f"{request.subject} was not drawn", refused=self.refused)
        return self.inner.make_image(request, journal, slots)


class FailingImageMakerResource(OfflineImageMakerResource):
    """The offline maker (same identity: nothing is stale) failing some scenes."""

    failing_scenes: list[str] = Field(default_factory=list)
    refused: bool = False

    def _build(self) -> ImageMaker:
        return FailingMaker(super()._build(), set(self.failing_scenes), self.refused)


class NewModelImageMakerResource(OfflineImageMakerResource):
    """The same drawings under another model name: every earlier image is now stale."""

    @property
    def identity(self) -> ProviderIdentity:
        return super().identity.model_copy(update={"model": "placeholder-v2"})


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"SCENE_PIPELINE_LOCAL_DIR": str(tmp_path / "bucket")}


@pytest.fixture
def bucket(env: dict[str, str]) -> BucketResource:
    return build_resources(Settings.from_env(env))["bucket"]


def evaluate(
    instance: DagsterInstance,
    env: dict[str, str],
    settings: dict[str, str] | None = None,
    *,
    image_maker: ImageMakerResource | None = None,
    when: datetime = NIGHT,
) -> Any:
    """One tick of the schedule built from the environment, as definitions.py builds it."""
    parsed = Settings.from_env({**env, **(settings or {})})
    resources = build_resources(parsed)
    if image_maker is not None:
        resources["image_maker"] = image_maker
    return nightly_tick(instance, parsed, resources, when)


def requested(result: Any) -> dict[str, RunRequest]:
    runs = {r.partition_key: r for r in result.run_requests or []}
    assert len(runs) == len(result.run_requests or [])
    return runs


def order(result: Any) -> list[str]:
    return [r.partition_key for r in result.run_requests or []]


def selected_scenes(run: RunRequest) -> list[str]:
    """The run's scene selection (empty: every scene that needs work)."""
    return run.run_config["ops"]["scenes"]["ops"]["plan_script"]["config"]["scene_ids"]


def plan_options(run: RunRequest) -> dict[str, Any]:
    return run.run_config["ops"]["scenes"]["ops"]["plan_script"]["config"]


def with_line(document: dict, scene: int, line: int, text: str) -> dict:
    document["scenes"][scene]["audios"][line]["text"] = text
    return document


# -- what is requested --------------------------------------------------------------------------


def test_complete_scripts_are_never_requested(instance, env, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    run_script(instance, bucket, script_id)
    result = evaluate(instance, env)
    assert not result.run_requests
    assert "none of 1 script(s) has anything to draw" in (result.skip_message or "")


def test_failed_scripts_and_scripts_never_run_are_requested(instance, env, bucket) -> None:
    failed_id = accept(bucket, example("rooftop_cat.json"), instance)
    manifest = run_script(
        instance, bucket, failed_id, image_maker=FailingImageMakerResource(failing_scenes=["2"])
    )
    assert [s.status for s in manifest.scenes] == ["succeeded", "failed", "succeeded"]
    fine_id = accept(bucket, example("bus_stop_request.json"), instance)
    run_script(instance, bucket, fine_id)
    never_id = accept(bucket, example("rainy_day_requests.json"), instance)

    first = evaluate(instance, env)
    runs = requested(first)
    assert set(runs) == {failed_id, never_id}
    assert runs[failed_id].run_key == "nightly:2026-11-26:rooftop-cat"
    assert runs[failed_id].tags[REASON] == "1 failed/pending scene(s)"
    assert runs[failed_id].tags["scene_pipeline/launched_by"] == "nightly"
    assert selected_scenes(runs[failed_id]) == []  # within budget: every due scene
    assert runs[never_id].tags[REASON] == "2 failed/pending scene(s), 2 portrait(s)"
    # Deterministic: the same night gives the same run keys.
    assert {r.run_key for r in evaluate(instance, env).run_requests} == {
        r.run_key for r in first.run_requests
    }

    # The requested run draws the failed scene; the script is then left alone.
    redone = run_script(instance, bucket, failed_id, **plan_options(runs[failed_id]))
    assert [s.status for s in redone.scenes] == ["succeeded"] * 3
    assert set(requested(evaluate(instance, env))) == {never_id}


def test_a_script_that_cannot_be_read_is_skipped_and_the_others_are_requested(
    instance, env, bucket
) -> None:
    instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, ["ghost"])  # no accepted copy
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    assert set(requested(evaluate(instance, env))) == {script_id}


def test_a_script_with_a_run_in_progress_or_a_held_lease_is_skipped(instance, env, bucket) -> None:
    running = accept(bucket, example("rooftop_cat.json"), instance)
    held = accept(bucket, example("bus_stop_request.json"), instance)
    free = accept(bucket, example("rainy_day_requests.json"), instance)
    create_run_for_test(
        instance,
        job_name="scene_job",
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": running},
    )
    # A finished run does not hold its script.
    create_run_for_test(
        instance,
        job_name="scene_job",
        status=DagsterRunStatus.FAILURE,
        tags={"dagster/partition": free},
    )
    token = leases.new_token()
    lease = leases.acquire(bucket.get_bucket(), held, token, "scene-pipeline pid 4711 on host-a")
    assert isinstance(lease, leases.Lease)

    assert set(requested(evaluate(instance, env))) == {free}

    leases.release(bucket.get_bucket(), held, token)
    assert set(requested(evaluate(instance, env))) == {held, free}


# -- order and budgets --------------------------------------------------------------------------


def test_failed_scripts_come_first_when_the_run_cap_cuts_the_list(instance, env, bucket) -> None:
    # "2024" sorts first and has a changed scene; "rooftop-cat" has a failed one.
    bus = example("bus_stop_request.json")
    changed_id = accept(bucket, bus, instance)
    run_script(instance, bucket, changed_id)
    bus["audios"][1]["text"] = "오늘도 막차네."
    accept(bucket, bus, instance)
    failed_id = accept(bucket, example("rooftop_cat.json"), instance)
    run_script(
        instance, bucket, failed_id, image_maker=FailingImageMakerResource(failing_scenes=["2"])
    )

    full = evaluate(instance, env)
    assert order(full) == [failed_id, changed_id]
    assert requested(full)[changed_id].tags[REASON] == "1 changed scene(s)"

    capped = evaluate(instance, env, {"SCENE_PIPELINE_NIGHTLY_MAX_RUNS": "1"})
    assert order(capped) == [failed_id]


def test_the_image_budget_cuts_a_script_to_its_failed_scenes_first(instance, env, bucket) -> None:
    document = example("rooftop_cat.json")
    script_id = accept(bucket, document, instance)
    run_script(
        instance,
        bucket,
        script_id,
        image_maker=FailingImageMakerResource(failing_scenes=["1", "3-key"]),
    )
    accept(bucket, with_line(document, 1, 1, "오늘은 생선을 가져왔구나?"), instance)
    # Due: scenes 1 and 3-key (failed) and 2 (changed): 3 images; the night allows 2.
    budget = {"SCENE_PIPELINE_NIGHTLY_MAX_IMAGES": "2"}

    tonight = requested(evaluate(instance, env, budget))[script_id]
    assert selected_scenes(tonight) == ["1", "3-key"]
    assert "2 scene(s) tonight (image budget)" in tonight.tags[REASON]
    manifest = run_script(instance, bucket, script_id, **plan_options(tonight))
    statuses = {s.scene_id: s.status for s in manifest.scenes}
    assert statuses["1"] == statuses["3-key"] == "succeeded"

    # The rest waits for the next night, where it fits.
    tomorrow = requested(evaluate(instance, env, budget, when=NIGHT + timedelta(days=1)))
    assert tomorrow[script_id].run_key == "nightly:2026-11-27:rooftop-cat"
    assert selected_scenes(tomorrow[script_id]) == []
    assert tomorrow[script_id].tags[REASON] == "1 changed scene(s)"

    assert not evaluate(instance, env, {"SCENE_PIPELINE_NIGHTLY_MAX_IMAGES": "0"}).run_requests


# -- what is left alone ---------------------------------------------------------------------------


def test_refused_scenes_are_not_requested_again_until_their_content_changes(
    instance, env, bucket
) -> None:
    document = example("rooftop_cat.json")
    script_id = accept(bucket, document, instance)
    manifest = run_script(
        instance,
        bucket,
        script_id,
        image_maker=FailingImageMakerResource(failing_scenes=["2"], refused=True),
    )
    refused = manifest.scenes[1]
    assert refused.status == "failed" and refused.refused
    assert not evaluate(instance, env).run_requests

    # Another scene changes: that one is due, the refused one still waits.
    accept(bucket, with_line(document, 0, 0, "지우는 조용히 옥상 문을 열었다."), instance)
    assert requested(evaluate(instance, env))[script_id].tags[REASON] == "1 changed scene(s)"

    # The refused scene's own content changes: it is tried again.
    accept(bucket, with_line(document, 1, 1, "오늘은 생선을 가져왔구나?"), instance)
    assert requested(evaluate(instance, env))[script_id].tags[REASON] == (
        "1 failed/pending scene(s), 1 changed scene(s)"
    )


@pytest.mark.parametrize(
    "references",
    [
        pytest.param(False, id="references-off"),
        pytest.param(True, id="references-on"),
    ],
)
def test_scripts_stale_only_because_the_providers_changed_wait_unless_opted_in(
    instance, env, bucket, references: bool
) -> None:
    env = {**env, "SCENE_PIPELINE_CHARACTER_REFERENCES": "on" if references else "off"}
    for name in ("rooftop_cat.json", "bus_stop_request.json", "rainy_day_requests.json"):
        script_id = accept(bucket, example(name), instance)
        run_script(
            instance,
            bucket,
            script_id,
            image_maker=OfflineImageMakerResource(long_side=480, references=references),
        )
    assert not evaluate(instance, env).run_requests

    new_model = NewModelImageMakerResource(long_side=480, references=references)
    stale = evaluate(instance, env, image_maker=new_model)
    assert not stale.run_requests, [r.tags[REASON] for r in stale.run_requests]

    redraw = {"SCENE_PIPELINE_REDRAW_STALE": "on"}
    runs = requested(evaluate(instance, env, redraw, image_maker=new_model))
    assert set(runs) == {"rooftop-cat", "2024", "rainy-day"}
    assert "3 changed scene(s)" in runs["rooftop-cat"].tags[REASON]

    bounded = evaluate(
        instance, env, {**redraw, "SCENE_PIPELINE_NIGHTLY_MAX_RUNS": "2"}, image_maker=new_model
    )
    assert len(bounded.run_requests) == 2


# -- time ------------------------------------------------------------------------------------------


def test_the_run_key_has_the_date_of_the_schedules_timezone(instance, env, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    # 03:00 on the 26th in Seoul, while it is still the 25th in UTC.
    assert requested(evaluate(instance, env))[script_id].run_key == (
        "nightly:2026-11-26:rooftop-cat"
    )
    in_utc = evaluate(instance, env, {"SCENE_PIPELINE_NIGHTLY_TIMEZONE": "UTC"})
    assert requested(in_utc)[script_id].run_key == "nightly:2026-11-25:rooftop-cat"


def test_the_definitions_run_the_schedule_at_three_in_seoul() -> None:
    from scene_pipeline.definitions import defs

    schedule = defs.resolve_schedule_def("nightly_regeneration_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "Asia/Seoul"
    assert schedule.job_name == "scene_job"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert set(SCHEDULE_RESOURCES) <= set(schedule.required_resource_keys)

    custom = build_nightly_schedule(
        Settings.from_env(
            {
                "SCENE_PIPELINE_NIGHTLY_CRON": "30 1 * * 1-5",
                "SCENE_PIPELINE_NIGHTLY_TIMEZONE": "Europe/Berlin",
                "SCENE_PIPELINE_NIGHTLY_MAX_IMAGES": "40",
            }
        ),
        build_scene_job(5),
    )
    assert custom.cron_schedule == "30 1 * * 1-5"
    assert custom.execution_timezone == "Europe/Berlin"
    assert "40 paid images" in (custom.description or "")
    for name, value in [
        ("SCENE_PIPELINE_NIGHTLY_TIMEZONE", "Mars/Olympus"),
        ("SCENE_PIPELINE_NIGHTLY_CRON", "every night"),
        ("SCENE_PIPELINE_NIGHTLY_MAX_IMAGES", "-1"),
    ]:
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({name: value})
