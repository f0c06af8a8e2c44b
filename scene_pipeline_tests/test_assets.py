"""The asset graph materialized on a real Dagster instance: keys, reuse, reruns, failures,
candidates, picks, prompt overrides, and what operators see in the UI.

No `from __future__ import annotations`: the resources below are Dagster config classes."""

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize
from PIL import Image, ImageStat
from pydantic import Field

from scene_pipeline.assets import all_assets
from scene_pipeline.contract.outputs import GenerationRecord, PortraitRecord
from scene_pipeline.core import checks, leases
from scene_pipeline.providers.base import (
    GeneratedImage,
    ImageMaker,
    ImageRequest,
    SlotGate,
    TaskJournal,
)
from scene_pipeline.providers.errors import AccountError, SceneRejectedError
from scene_pipeline.providers.offline import PlaceholderImageMaker
from scene_pipeline.resources.bucket import BucketResource, LocalBucketResource
from scene_pipeline.resources.providers import ImageMakerResource, OfflineImageMakerResource
from scene_pipeline.resources.slots import ensure_pool_limit

from .pipeline_helpers import accept, example, keys, plan_config, png_size, resources, run_script

GENERATION = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{16}-[0-9a-f]{8}$")
GRAPH_ASSETS = [a for a in all_assets if hasattr(a, "node_def")]


# -- image makers that misbehave in chosen ways ------------------------------------------------


class RefusingMaker:
    """Refuses the listed scenes the way a provider does (`refused`: a moderation decision,
    else a request the provider cannot do); draws everything else, portraits included."""

    def __init__(self, refused: set[str], moderation: bool) -> None:
        self.inner = PlaceholderImageMaker(long_side=480)
        self.identity = self.inner.identity
        self.max_references = self.inner.max_references
        self.refused = refused
        self.moderation = moderation

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        if request.subject.removeprefix("scene ") in self.refused:
            why = "moderation" if self.moderation else "invalid request"
            raise SceneRejectedError(f"{why}: {request.subject} refused", refused=self.moderation)
        return self.inner.make_image(request, journal, slots)


class RefusingImageMakerResource(ImageMakerResource):
    refused: list[str] = Field(default_factory=list)
    moderation: bool = True

    @property
    def identity(self):  # type: ignore[no-untyped-def]
        return PlaceholderImageMaker.identity

    def _build(self) -> ImageMaker:
        return RefusingMaker(set(self.refused), self.moderation)


class BrokenAccountMaker:
    calls = 0
    identity = PlaceholderImageMaker.identity
    max_references = 0

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        BrokenAccountMaker.calls += 1
        raise AccountError("KLING account: resource pack exhausted (1102)")


class BrokenAccountResource(ImageMakerResource):
    references: bool = False

    @property
    def identity(self):  # type: ignore[no-untyped-def]
        return BrokenAccountMaker.identity

    def _build(self) -> ImageMaker:
        return BrokenAccountMaker()


class BuggyMaker:
    """A bug of ours (not a provider's error): it must not pass for a failed scene."""

    identity = PlaceholderImageMaker.identity
    max_references = 0

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        raise RuntimeError("list index out of range in our own code")


class BuggyMakerResource(ImageMakerResource):
    references: bool = False

    @property
    def identity(self):  # type: ignore[no-untyped-def]
        return BuggyMaker.identity

    def _build(self) -> ImageMaker:
        return BuggyMaker()


class CountingMaker(PlaceholderImageMaker):
    """The offline maker, counting the images it is asked for."""

    requests: list[ImageRequest] = []

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        CountingMaker.requests.append(request)
        return super().make_image(request, journal, slots)


class CountingMakerResource(OfflineImageMakerResource):
    def _build(self) -> ImageMaker:
        return CountingMaker(long_side=self.long_side)


class PortraitRefusingMaker(PlaceholderImageMaker):
    """The offline maker, refusing the portrait of one character (a request the provider
    cannot do); draws everything else and records every request it is asked."""

    requests: list[ImageRequest] = []

    def __init__(self, character: str, long_side: int) -> None:
        super().__init__(long_side=long_side)
        self.character = character

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        PortraitRefusingMaker.requests.append(request)
        if request.kind == "portrait" and self.character in request.subject:
            raise SceneRejectedError(f"invalid request: {request.subject} refused")
        return super().make_image(request, journal, slots)


class PortraitRefusingResource(OfflineImageMakerResource):
    character: str

    def _build(self) -> ImageMaker:
        return PortraitRefusingMaker(self.character, long_side=self.long_side)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def instance(tmp_path: Path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        yield instance


@pytest.fixture
def bucket(tmp_path: Path) -> BucketResource:
    return LocalBucketResource(local_dir=str(tmp_path / "bucket"))


@pytest.fixture
def counting() -> CountingMakerResource:
    CountingMaker.requests = []
    return CountingMakerResource(long_side=480)


def materialize_script(
    instance: DagsterInstance,
    bucket: BucketResource,
    script_id: str,
    image_maker: ImageMakerResource | None = None,
    **config: Any,
):
    """One run of the script's graph; the result, whatever it is."""
    ensure_pool_limit(instance, 5)
    return materialize(
        all_assets,
        selection=GRAPH_ASSETS,
        partition_key=script_id,
        instance=instance,
        resources=resources(bucket, image_maker),
        run_config=plan_config(**config),
        raise_on_error=False,
    )


def by_id(manifest) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {s.scene_id: s for s in manifest.scenes}


def scene_pngs(bucket: BucketResource, script_id: str) -> list[str]:
    return [
        k for k in keys(bucket.get_bucket(), f"results/{script_id}/scenes/") if k.endswith(".png")
    ]


def latest_metadata(instance: DagsterInstance, asset: str) -> dict[str, Any]:
    """The metadata of the asset's latest materialization, as the UI shows it."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    assert event is not None and event.asset_materialization is not None, asset
    return dict(event.asset_materialization.metadata)


def portrait_rows(gallery: str) -> dict[str, tuple[str, str, str]]:
    """character -> (source, status, portrait cell) of the `character_portraits` gallery."""
    rows = {}
    for line in gallery.splitlines()[2:]:
        name, source, status, shown = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = (source, status, shown)
    return rows


def thumbnail_of(cell: str, alt: str) -> Image.Image:
    """The one picture of a markdown cell, `![alt](data:image/jpeg;base64,...)`, decoded."""
    pattern = rf"!\[{re.escape(alt)}\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)"
    found = re.fullmatch(pattern, cell)
    assert found, cell[:120]
    with Image.open(io.BytesIO(base64.b64decode(found.group(1)))) as image:
        assert image.format == "JPEG"
        return image.convert("RGB")


def mean_colour(image: Image.Image) -> list[float]:
    return ImageStat.Stat(image).mean


# -- one script, one picture per scene --------------------------------------------------------


def test_a_script_gets_one_png_per_scene_a_portrait_per_character_and_a_manifest(
    instance, bucket
) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    manifest = run_script(instance, bucket, script_id)
    store = bucket.get_bucket()

    assert manifest.status == "complete"
    assert manifest.offline and "OFFLINE" in (manifest.notice or "")
    assert [s.scene_id for s in manifest.scenes] == ["1", "2", "3-key"]
    for scene in manifest.scenes:
        assert scene.status == "succeeded" and scene.offline
        assert scene.image_prompt and "OFFLINE" not in scene.image_prompt
        assert scene.generation and GENERATION.match(scene.generation)
        key = f"results/rooftop-cat/scenes/{scene.scene_id}/{scene.generation}.png"
        assert scene.image_s3url == store.uri(key)
        assert scene.candidates == [scene.image_s3url] and scene.picked == 1
        width, height = png_size(store.read_bytes(key))
        assert width * 16 == height * 9  # options.aspect_ratio 9:16
        record = store.read_model(key[:-4] + ".json", GenerationRecord)
        assert record is not None
        assert record.image_prompt == scene.image_prompt and record.image.offline
    # Both characters appear in a scene: one portrait each, referenced by their scenes.
    assert [c.name for c in manifest.characters] == ["지우", "고양이"]
    assert all(c.status == "succeeded" and c.portrait_s3url for c in manifest.characters)
    portrait_of = {c.name: c.portrait_s3url for c in manifest.characters}
    assert by_id(manifest)["1"].references == [portrait_of["지우"]]
    assert by_id(manifest)["3-key"].references == [portrait_of["고양이"]]
    results = keys(store, "results/")
    assert "results/rooftop-cat/manifest.json" in results
    assert len(scene_pngs(bucket, script_id)) == 3
    assert len([k for k in results if "/characters/" in k]) == 2 * 2  # PNG and record each
    assert len(results) == 1 + 2 * 3 + 2 * 2


def test_dagster_records_every_asset_of_the_partition_and_each_scene_step(instance, bucket) -> None:
    script_id = accept(bucket, example("rainy_day_requests.json"), instance)
    run_script(instance, bucket, script_id)
    for name in (
        "character_sheet",
        "character_portraits",
        "scene_prompts",
        "scene_images",
        "manifest",
    ):
        event = instance.get_latest_materialization_event(AssetKey(name))
        assert event is not None and event.dagster_event.partition == "rainy-day", name
    manifest_event = instance.get_latest_materialization_event(AssetKey("manifest"))
    metadata = manifest_event.asset_materialization.metadata
    assert metadata["status"].value == "complete" and metadata["offline"].value is True
    # Each scene's step shows what an operator needs: prompt, thumbnail, URI.
    outputs = [
        e.dagster_event.step_output_data.metadata
        for e in instance.all_logs(manifest_event.run_id)
        if e.dagster_event
        and e.dagster_event.is_successful_output
        and e.dagster_event.step_key.startswith("scenes.render_scene[")
    ]
    assert len(outputs) == 2
    for step_metadata in outputs:
        assert step_metadata["preview"].value.startswith("![scene ")
        assert step_metadata["image"].value.startswith("file://")
        assert step_metadata["image_prompt"].value and step_metadata["prompt"].value == "written"


def test_the_scene_images_gallery_shows_every_scene(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    run_script(instance, bucket, script_id)
    event = instance.get_latest_materialization_event(AssetKey("scene_images"))
    assert event is not None
    gallery = event.asset_materialization.metadata["gallery"].value
    for scene_id in ("1", "2", "3-key"):
        assert f"| {scene_id} | succeeded |" in gallery
    assert gallery.count("](data:image/jpeg;base64,") == 3  # one thumbnail per scene


def test_the_portraits_gallery_shows_each_portrait_and_whether_it_was_drawn_or_uploaded(
    instance, bucket
) -> None:
    """README "Operating": `character_portraits` shows every portrait with its source, so an
    operator can see in the UI which reference each character's scenes are drawn with, and
    that an upload replaced the drawn one."""
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    run_script(instance, bucket, script_id)
    drawn = latest_metadata(instance, "character_portraits")
    rows = portrait_rows(drawn["gallery"].value)
    assert set(rows) == {"지우", "고양이"}
    for name, (source, status, shown) in rows.items():
        assert (source, status) == ("drawn", "succeeded"), name
        assert max(thumbnail_of(shown, f"{name} 1").size) == 128  # a thumbnail, not the PNG
    assert drawn["portraits"].value == 2 and drawn["uploaded"].value == 0
    drawn_cat = thumbnail_of(rows["고양이"][2], "고양이 1")

    # An operator's own picture of the cat (plain green), pinned from the run config.
    upload = io.BytesIO()
    Image.new("RGB", (400, 600), (20, 160, 60)).save(upload, format="PNG")
    bucket.get_bucket().write_bytes("uploads/cat.png", upload.getvalue(), "image/png")
    run_script(instance, bucket, script_id, portrait_uploads={"고양이": "uploads/cat.png"})
    uploaded = latest_metadata(instance, "character_portraits")
    rows = portrait_rows(uploaded["gallery"].value)
    assert rows["고양이"][:2] == ("uploaded", "succeeded")
    assert rows["지우"][:2] == ("drawn", "succeeded")
    # The cat's thumbnail is the upload's (green), no longer the drawn portrait's.
    cat = mean_colour(thumbnail_of(rows["고양이"][2], "고양이 1"))
    assert max(abs(got - want) for got, want in zip(cat, (20, 160, 60), strict=True)) < 12
    assert max(abs(got - was) for got, was in zip(cat, mean_colour(drawn_cat), strict=True)) > 12
    assert uploaded["portraits"].value == 2 and uploaded["uploaded"].value == 1


def test_an_unchanged_script_costs_nothing_the_second_time(instance, bucket, counting) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    first = run_script(instance, bucket, script_id, image_maker=counting)
    drawn = len(CountingMaker.requests)
    before = keys(bucket.get_bucket(), "results/")
    second = run_script(instance, bucket, script_id, image_maker=counting)
    assert drawn == 3 + 2  # three scenes, two portraits
    assert len(CountingMaker.requests) == drawn
    assert keys(bucket.get_bucket(), "results/") == before
    assert [s.generation for s in second.scenes] == [s.generation for s in first.scenes]
    assert second.updated_at >= first.updated_at


def test_a_changed_scene_alone_is_redrawn(instance, bucket) -> None:
    document = example("rooftop_cat.json")
    script_id = accept(bucket, document, instance)
    first = by_id(run_script(instance, bucket, script_id))
    document["scenes"][1]["audios"][1]["text"] = "오늘은 비가 오네."
    document["scenes"].pop(2)
    accept(bucket, document, instance)
    second = by_id(run_script(instance, bucket, script_id))
    assert second["1"].generation == first["1"].generation
    assert second["2"].generation != first["2"].generation
    assert second["3-key"].status == "removed"
    # Nothing is deleted: the removed scene's image is still in the bucket.
    removed = f"results/rooftop-cat/scenes/3-key/{first['3-key'].generation}.png"
    assert bucket.get_bucket().read_bytes_if_present(removed) is not None


def test_forcing_one_scene_adds_one_generation(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    first = by_id(run_script(instance, bucket, script_id))
    second = by_id(run_script(instance, bucket, script_id, scene_ids=["3-key"], force=True))
    assert second["3-key"].generation != first["3-key"].generation
    assert {k: v.generation for k, v in second.items() if k != "3-key"} == {
        k: v.generation for k, v in first.items() if k != "3-key"
    }
    assert len(keys(bucket.get_bucket(), "results/rooftop-cat/scenes/3-key/")) == 4


def test_the_plan_and_the_manifest_show_how_many_scenes_are_stale_and_why(
    instance, bucket, counting
) -> None:
    """A configuration change (here the reference mode switched off) keeps the pictures drawn
    under the old one: they are stale, not redrawn. The run's plan (on `character_portraits`)
    and the `manifest` count them and say why for each, so that an operator sees what
    `refresh_stale` would pay for."""
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    first = by_id(run_script(instance, bucket, script_id, image_maker=counting))
    for asset in ("character_portraits", "manifest"):
        shown = latest_metadata(instance, asset)
        assert shown["scenes_stale"].value == 0 and shown["stale"].value == "-", asset
    paid = len(CountingMaker.requests)

    text_only = CountingMakerResource(long_side=480, references=False)
    kept = by_id(run_script(instance, bucket, script_id, image_maker=text_only))
    assert len(CountingMaker.requests) == paid
    assert {k: e.generation for k, e in kept.items()} == {k: e.generation for k, e in first.items()}
    assert latest_metadata(instance, "character_portraits")["scenes_to_render"].value == 0
    why = "the providers or the reference mode changed since it was drawn"
    for asset in ("character_portraits", "manifest"):
        shown = latest_metadata(instance, asset)
        assert shown["scenes_stale"].value == 3, asset
        assert shown["stale"].value.splitlines() == [
            f"- scene {scene_id}: {why}" for scene_id in ("1", "2", "3-key")
        ], asset


# -- candidates, picks and prompt overrides ---------------------------------------------------


def test_three_candidates_are_stored_listed_and_the_first_is_shown(instance, bucket) -> None:
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    manifest = run_script(instance, bucket, script_id, candidates=3)
    [scene] = manifest.scenes
    prefix = f"results/2024/scenes/1/{scene.generation}"
    assert scene_pngs(bucket, script_id) == [f"{prefix}-{k}.png" for k in (1, 2, 3)]
    store = bucket.get_bucket()
    assert scene.candidates == [store.uri(f"{prefix}-{k}.png") for k in (1, 2, 3)]
    assert scene.picked == 1 and scene.image_s3url == scene.candidates[0]
    pictures = {store.read_bytes(f"{prefix}-{k}.png") for k in (1, 2, 3)}
    assert len(pictures) == 3  # three different pictures, not one stored three times


def test_a_pick_in_a_later_run_shows_that_candidate_without_drawing(
    instance, bucket, counting
) -> None:
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    [drawn] = run_script(instance, bucket, script_id, image_maker=counting, candidates=3).scenes
    paid = len(CountingMaker.requests)
    before = keys(bucket.get_bucket(), "results/2024/scenes/")

    [picked] = run_script(instance, bucket, script_id, image_maker=counting, picks={"1": 2}).scenes

    assert picked.generation == drawn.generation
    assert picked.picked == 2 and picked.image_s3url == drawn.candidates[1]
    assert len(CountingMaker.requests) == paid
    assert keys(bucket.get_bucket(), "results/2024/scenes/") == before
    # The pick is kept: a later run without it still shows candidate 2.
    [later] = run_script(instance, bucket, script_id, image_maker=counting).scenes
    assert later.picked == 2 and later.image_s3url == drawn.candidates[1]


def test_a_pick_of_a_candidate_that_does_not_exist_fails_the_run_before_any_work(
    instance, bucket
) -> None:
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    first = run_script(instance, bucket, script_id, candidates=2)
    result = materialize_script(instance, bucket, script_id, picks={"1": 3})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "scenes.plan_script"
    description = failure.step_failure_data.user_failure_data.description
    assert "scene 1 has 2 candidate(s)" in description
    assert bucket.get_bucket().read_manifest(script_id) == first


def test_a_prompt_override_is_drawn_exactly_and_kept_until_cleared(
    instance, bucket, counting
) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    written = by_id(run_script(instance, bucket, script_id, image_maker=counting))
    text = "A grey tabby cat with a folded ear holds a small brass key, rooftop at dusk."

    overridden = by_id(
        run_script(
            instance, bucket, script_id, image_maker=counting, prompt_overrides={"3-key": text}
        )
    )
    assert overridden["3-key"].image_prompt == text
    assert overridden["3-key"].prompt_source == "override"
    assert overridden["3-key"].generation != written["3-key"].generation
    assert CountingMaker.requests[-1].prompt == text  # drawn with exactly that text
    for other in ("1", "2"):
        assert overridden[other].generation == written[other].generation

    # A later run without any config keeps the override and its picture.
    paid = len(CountingMaker.requests)
    kept = by_id(run_script(instance, bucket, script_id, image_maker=counting))
    assert kept["3-key"].image_prompt == text and kept["3-key"].prompt_source == "override"
    assert kept["3-key"].generation == overridden["3-key"].generation
    assert len(CountingMaker.requests) == paid

    # Cleared: back to the written prompt and its picture, without drawing again.
    cleared = by_id(
        run_script(
            instance, bucket, script_id, image_maker=counting, clear_prompt_overrides=["3-key"]
        )
    )
    assert cleared["3-key"].prompt_source == "written"
    assert cleared["3-key"].image_prompt == written["3-key"].image_prompt
    assert cleared["3-key"].generation == written["3-key"].generation
    assert len(CountingMaker.requests) == paid


# -- failures ---------------------------------------------------------------------------------


def test_a_refused_scene_fails_alone_and_waits_for_a_change(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    refusing = RefusingImageMakerResource(refused=["2"], moderation=True)
    manifest = run_script(instance, bucket, script_id, image_maker=refusing)
    scenes = by_id(manifest)
    assert manifest.status == "partial"
    assert scenes["2"].status == "failed" and "moderation" in (scenes["2"].error or "")
    assert scenes["2"].refused
    assert scenes["1"].status == scenes["3-key"].status == "succeeded"

    # Not asked again for the same content, even of a provider that would draw it...
    again = by_id(run_script(instance, bucket, script_id))
    assert again["2"].status == "failed" and again["2"].refused
    # ...until an operator asks for that scene.
    healed = run_script(instance, bucket, script_id, scene_ids=["2"])
    assert healed.status == "complete"
    assert by_id(healed)["1"].generation == scenes["1"].generation


def test_a_rejected_request_fails_its_scene_and_is_tried_again_next_run(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    rejecting = RefusingImageMakerResource(refused=["2"], moderation=False)
    first = by_id(run_script(instance, bucket, script_id, image_maker=rejecting))
    assert first["2"].status == "failed" and not first["2"].refused

    healed = run_script(instance, bucket, script_id)
    assert healed.status == "complete"
    assert by_id(healed)["1"].generation == first["1"].generation


def test_a_failed_portrait_fails_only_the_scenes_it_is_in_and_they_say_why(
    instance, bucket, counting
) -> None:
    """README "Consistent characters": a scene whose portrait failed is not drawn without it
    (it would be paid twice: once without, once with); it fails naming the portrait, the
    other scenes are drawn, and the next run draws the portrait and exactly those scenes."""
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    PortraitRefusingMaker.requests = []
    refusing = PortraitRefusingResource(character="고양이", long_side=480)
    manifest = run_script(instance, bucket, script_id, image_maker=refusing)
    scenes = by_id(manifest)
    assert manifest.status == "partial"
    # The cat is in scene 3-key only; 지우 is in scenes 1 and 2.
    assert scenes["3-key"].status == "failed" and not scenes["3-key"].refused
    assert scenes["3-key"].error == (
        "reference portrait of 고양이 failed: invalid request: portrait of 고양이 refused"
    )
    assert scenes["3-key"].image_s3url is None
    assert scenes["1"].status == scenes["2"].status == "succeeded"
    characters = {c.name: c for c in manifest.characters}
    assert characters["고양이"].status == "failed" and characters["고양이"].portrait_s3url is None
    assert characters["고양이"].error == "invalid request: portrait of 고양이 refused"
    assert characters["지우"].status == "succeeded"
    # Scene 3-key was never asked for without its portrait.
    asked = sorted(r.subject for r in PortraitRefusingMaker.requests)
    assert asked == ["portrait of 고양이", "portrait of 지우", "scene 1", "scene 2"]
    assert len(scene_pngs(bucket, script_id)) == 2

    healed = run_script(instance, bucket, script_id, image_maker=counting)
    assert [r.subject for r in CountingMaker.requests] == ["portrait of 고양이", "scene 3-key"]
    assert healed.status == "complete"
    cat = next(c for c in healed.characters if c.name == "고양이")
    assert cat.status == "succeeded" and by_id(healed)["3-key"].references == [cat.portrait_s3url]
    for scene_id in ("1", "2"):
        assert by_id(healed)[scene_id].generation == scenes[scene_id].generation


def test_an_unknown_scene_selection_fails_the_run_before_any_work(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    result = materialize_script(instance, bucket, script_id, scene_ids=["9"])
    assert not result.success
    assert bucket.get_bucket().read_manifest(script_id) is None
    assert keys(bucket.get_bucket(), "results/") == []


def test_a_failed_run_leaves_the_script_free_for_the_next_one(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    assert not materialize_script(instance, bucket, script_id, scene_ids=["9"]).success
    assert leases.holder(bucket.get_bucket(), script_id) is None


def test_the_same_keys_land_in_s3(instance, s3_endpoint, s3_bucket) -> None:
    from dagster_aws.s3 import S3Resource

    from scene_pipeline.resources.s3_bucket import S3BucketResource

    bucket = S3BucketResource(
        bucket=s3_bucket, s3=S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    )
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    manifest = run_script(instance, bucket, script_id)
    [scene] = manifest.scenes
    [character] = manifest.characters
    assert manifest.status == "complete"
    assert scene.image_s3url == f"s3://{s3_bucket}/results/2024/scenes/1/{scene.generation}.png"
    portrait_key = character.portrait_s3url.removeprefix(f"s3://{s3_bucket}/")
    assert scene.references == [character.portrait_s3url]
    assert keys(bucket.get_bucket(), "results/") == [
        portrait_key.removesuffix(".png") + ".json",
        portrait_key,
        "results/2024/manifest.json",
        f"results/2024/scenes/1/{scene.generation}.json",
        f"results/2024/scenes/1/{scene.generation}.png",
    ]
    png_size(bucket.get_bucket().read_bytes(f"results/2024/scenes/1/{scene.generation}.png"))
    record = bucket.get_bucket().read_model(
        portrait_key.removesuffix(".png") + ".json", PortraitRecord
    )
    assert record is not None and record.name == "민수"


def test_an_account_error_stops_the_run_from_calling_the_provider_again(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    BrokenAccountMaker.calls = 0
    manifest = run_script(instance, bucket, script_id, image_maker=BrokenAccountResource())
    assert manifest.status == "failed"
    assert BrokenAccountMaker.calls == 1
    assert all("resource pack exhausted" in (s.error or "") for s in manifest.scenes)
    assert sum("not attempted" in (s.error or "") for s in manifest.scenes) == 2


def test_a_bug_in_our_code_fails_the_run_instead_of_a_quiet_failed_scene(instance, bucket) -> None:
    script_id = accept(bucket, example("bus_stop_request.json"), instance)
    result = materialize_script(instance, bucket, script_id, image_maker=BuggyMakerResource())
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["scenes.render_scene[1]"]
    assert "RuntimeError" in failures[0].step_failure_data.error.to_string()
    # No manifest pretends the scene merely failed.
    assert bucket.get_bucket().read_manifest(script_id) is None
    # The failed run still names itself in the script's lease, but it is over: the next run
    # takes the lease at once instead of waiting for it to expire.
    held = leases.holder(bucket.get_bucket(), script_id)
    assert held is not None and held.run_id == result.run_id
    fixed = materialize_script(instance, bucket, script_id)
    assert fixed.success
    waits = [
        e.message
        for e in instance.all_logs(fixed.run_id)
        if e.message and "busy" in e.message and "waiting" in e.message
    ]
    assert waits == []


def test_failed_scenes_fail_the_manifest_check_where_operators_look(instance, bucket) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    result = materialize_script(
        instance, bucket, script_id, RefusingImageMakerResource(refused=["1", "3-key"])
    )
    assert result.success
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert found["all_scenes_succeeded"].passed is False
    assert "1, 3-key" in (found["all_scenes_succeeded"].description or "")
    assert found["prompts_within_cap"].passed is True


def test_the_references_check_passes_after_a_run_and_fails_when_a_portrait_is_gone(
    instance, bucket
) -> None:
    script_id = accept(bucket, example("rooftop_cat.json"), instance)
    result = materialize_script(instance, bucket, script_id)
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert found["references_exist"].passed is True
    store = bucket.get_bucket()
    manifest = store.read_manifest(script_id)
    assert manifest is not None and all(s.references for s in manifest.scenes)

    # The same check, as the asset check runs it, notices a portrait that disappeared.
    cat = next(c for c in manifest.characters if c.name == "고양이")
    store.delete("results/" + cat.portrait_s3url.partition("/results/")[2])
    assert checks.missing_references(manifest, store) == [
        f"3-key: {cat.portrait_s3url.rpartition('/')[2]}"
    ]
