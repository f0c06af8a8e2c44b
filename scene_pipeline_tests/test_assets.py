"""The asset graph materialized on a real Dagster instance: keys, reuse, reruns, failures."""

import re
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from pydantic import Field

from scene_pipeline.contract.outputs import GenerationRecord
from scene_pipeline.providers.base import GeneratedImage, ImageMaker, ImageRequest, TaskJournal
from scene_pipeline.providers.errors import AccountError, SceneRejectedError
from scene_pipeline.providers.offline import PlaceholderImageMaker
from scene_pipeline.resources.providers import ImageMakerResource
from scene_pipeline.resources.storage import LocalStorageResource, StorageResource

from .pipeline_helpers import accept, example, keys, png_size, run_script

GENERATION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{16}-[0-9a-f]{8}$")


class RefusingMaker:
    """Refuses the listed scenes the way a moderation decision does; draws the others."""

    def __init__(self, refused: set[str]) -> None:
        self.inner = PlaceholderImageMaker(long_side=128)
        self.identity = self.inner.identity
        self.refused = refused

    def make_image(self, request: ImageRequest, journal: TaskJournal) -> GeneratedImage:
        if request.scene_id in self.refused:
            raise SceneRejectedError(f"moderation: scene {request.scene_id} refused")
        return self.inner.make_image(request, journal)


class RefusingImageMakerResource(ImageMakerResource):
    refused: list[str] = Field(default_factory=list)

    def get_maker(self) -> ImageMaker:
        return RefusingMaker(set(self.refused))


@pytest.fixture
def instance(tmp_path: Path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        yield instance


@pytest.fixture
def storage(tmp_path: Path) -> StorageResource:
    return LocalStorageResource(local_dir=str(tmp_path / "bucket"))


def test_a_script_gets_one_png_per_scene_and_a_manifest(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    manifest = run_script(instance, storage, script_id)
    bucket = storage.get_bucket()

    assert manifest.status == "complete"
    assert manifest.offline and "OFFLINE" in (manifest.notice or "")
    assert [s.scene_id for s in manifest.scenes] == ["1", "2", "3-key"]
    for scene in manifest.scenes:
        assert scene.status == "succeeded" and scene.offline
        assert scene.image_prompt and "OFFLINE" not in scene.image_prompt
        assert scene.generation and GENERATION.match(scene.generation)
        key = f"results/rooftop-cat/scenes/{scene.scene_id}/{scene.generation}.png"
        assert scene.image_s3url == bucket.store.uri(key)
        width, height = png_size(bucket.store.get(key))
        assert width * 16 == height * 9  # options.aspect_ratio 9:16
        record = GenerationRecord.model_validate_json(bucket.store.get(key[:-4] + ".json"))
        assert record.image_prompt == scene.image_prompt and record.image.offline
    results = keys(bucket, "results/")
    assert results[0] == "results/rooftop-cat/manifest.json"
    assert len(results) == 1 + 2 * 3


def test_dagster_records_every_asset_of_the_partition(instance, storage) -> None:
    script_id = accept(storage, example("rainy_day_requests.json"), instance)
    run_script(instance, storage, script_id)
    for name in ("script_document", "character_sheet", "scene_prompts", "scene_images", "manifest"):
        event = instance.get_latest_materialization_event(AssetKey(name))
        assert event is not None and event.dagster_event.partition == "rainy-day", name
    manifest_event = instance.get_latest_materialization_event(AssetKey("manifest"))
    metadata = manifest_event.asset_materialization.metadata
    assert metadata["status"].value == "complete" and metadata["offline"].value is True
    # Each scene's step shows what an operator needs: prompt, thumbnail, URI, attempts.
    outputs = [
        e.dagster_event.step_output_data.metadata
        for e in instance.all_logs(manifest_event.run_id)
        if e.dagster_event
        and e.dagster_event.is_successful_output
        and e.dagster_event.step_key.startswith("scenes.draw_scene_image")
    ]
    assert len(outputs) == 2
    for step_metadata in outputs:
        assert step_metadata["preview"].value.startswith("![scene ")
        assert step_metadata["image"].value.startswith("file://")
        assert step_metadata["attempts"].value == 1 and step_metadata["image_prompt"].value


def test_an_unchanged_script_costs_nothing_the_second_time(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    first = run_script(instance, storage, script_id)
    before = keys(storage.get_bucket(), "results/")
    second = run_script(instance, storage, script_id)
    assert keys(storage.get_bucket(), "results/") == before
    assert [s.generation for s in second.scenes] == [s.generation for s in first.scenes]
    assert second.updated_at >= first.updated_at


def test_a_changed_scene_alone_is_redrawn(instance, storage) -> None:
    document = example("rooftop_cat.json")
    script_id = accept(storage, document, instance)
    first = {s.scene_id: s for s in run_script(instance, storage, script_id).scenes}
    document["scenes"][1]["audios"][1]["text"] = "오늘은 비가 오네."
    document["scenes"].pop(2)
    accept(storage, document, instance)
    second = {s.scene_id: s for s in run_script(instance, storage, script_id).scenes}
    assert second["1"].generation == first["1"].generation
    assert second["2"].generation != first["2"].generation
    assert second["3-key"].status == "removed"
    # Nothing is deleted: the removed scene's image is still in the bucket.
    assert storage.get_bucket().store.head(
        f"results/rooftop-cat/scenes/3-key/{first['3-key'].generation}.png"
    )


def test_forcing_one_scene_adds_one_generation(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    first = {s.scene_id: s for s in run_script(instance, storage, script_id).scenes}
    second = {
        s.scene_id: s
        for s in run_script(instance, storage, script_id, scene_ids=["3-key"], force=True).scenes
    }
    assert second["3-key"].generation != first["3-key"].generation
    assert {k: v.generation for k, v in second.items() if k != "3-key"} == {
        k: v.generation for k, v in first.items() if k != "3-key"
    }
    assert len(keys(storage.get_bucket(), "results/rooftop-cat/scenes/3-key/")) == 4


def test_a_refused_scene_fails_alone_and_is_redone_later(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    refusing = RefusingImageMakerResource(refused=["2"])
    manifest = run_script(instance, storage, script_id, image_maker=refusing)
    by_id = {s.scene_id: s for s in manifest.scenes}
    assert manifest.status == "partial"
    assert by_id["2"].status == "failed" and "moderation" in (by_id["2"].error or "")
    assert by_id["1"].status == by_id["3-key"].status == "succeeded"

    healed = run_script(instance, storage, script_id)
    healed_by_id = {s.scene_id: s for s in healed.scenes}
    assert healed.status == "complete"
    assert healed_by_id["1"].generation == by_id["1"].generation
    assert healed_by_id["2"].status == "succeeded"


def test_an_unknown_scene_selection_fails_the_run_before_any_work(instance, storage) -> None:
    from dagster import materialize

    from scene_pipeline.assets import all_assets

    from .pipeline_helpers import resources

    script_id = accept(storage, example("rooftop_cat.json"), instance)
    result = materialize(
        all_assets,
        partition_key=script_id,
        instance=instance,
        resources=resources(storage),
        run_config={"ops": {"scenes": {"ops": {"plan_scenes": {"config": {"scene_ids": ["9"]}}}}}},
        raise_on_error=False,
    )
    assert not result.success
    assert storage.get_bucket().read_manifest(script_id) is None
    assert keys(storage.get_bucket(), "results/") == []


def test_the_same_keys_land_in_s3(instance, s3_endpoint, s3_bucket) -> None:
    from dagster_aws.s3 import S3Resource

    from scene_pipeline.resources.storage import S3StorageResource

    storage = S3StorageResource(
        bucket=s3_bucket, s3=S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    )
    script_id = accept(storage, example("bus_stop_request.json"), instance)
    manifest = run_script(instance, storage, script_id)
    scene = manifest.scenes[0]
    assert manifest.status == "complete"
    assert scene.image_s3url == f"s3://{s3_bucket}/results/2024/scenes/1/{scene.generation}.png"
    assert keys(storage.get_bucket(), "results/") == [
        "results/2024/manifest.json",
        f"results/2024/scenes/1/{scene.generation}.json",
        f"results/2024/scenes/1/{scene.generation}.png",
    ]
    png_size(storage.get_bucket().store.get(f"results/2024/scenes/1/{scene.generation}.png"))


class BrokenAccountMaker:
    calls = 0
    identity = PlaceholderImageMaker.identity

    def make_image(self, request: ImageRequest, journal: TaskJournal) -> GeneratedImage:
        BrokenAccountMaker.calls += 1
        raise AccountError("KLING account: resource pack exhausted (1102)")


class BrokenAccountResource(ImageMakerResource):
    def get_maker(self) -> ImageMaker:
        return BrokenAccountMaker()


def test_an_account_error_stops_the_run_from_calling_the_provider_again(instance, storage) -> None:
    script_id = accept(storage, example("rooftop_cat.json"), instance)
    BrokenAccountMaker.calls = 0
    manifest = run_script(instance, storage, script_id, image_maker=BrokenAccountResource())
    assert manifest.status == "failed"
    assert BrokenAccountMaker.calls == 1
    assert all("resource pack exhausted" in (s.error or "") for s in manifest.scenes)
    assert sum("not attempted" in (s.error or "") for s in manifest.scenes) == 2


def test_failed_scenes_fail_the_manifest_check_where_operators_look(instance, storage) -> None:
    from dagster import materialize

    from scene_pipeline.assets import all_assets

    from .pipeline_helpers import resources

    script_id = accept(storage, example("rooftop_cat.json"), instance)
    result = materialize(
        all_assets,
        partition_key=script_id,
        instance=instance,
        resources=resources(storage, RefusingImageMakerResource(refused=["1", "3-key"])),
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["all_scenes_succeeded"].passed is False
    assert "1, 3-key" in checks["all_scenes_succeeded"].description
    assert checks["prompts_within_cap"].passed is True
