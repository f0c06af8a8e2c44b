"""What `dagster dev` in the repo root loads: the code location, its job, sensor and schedule,
the resources the environment selects, and what the UI shows of them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, Definitions, DynamicPartitionsDefinition
from dagster._core.remote_representation.external_data import (
    RepositorySnap,
    ResourceConfigEnvVarSnap,
)

from scene_pipeline.assets import all_assets
from scene_pipeline.resources.bucket import LocalBucketResource
from scene_pipeline.resources.providers import (
    KlingImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
    OpenAIImagesMakerResource,
    OpenAIPromptWriterResource,
)
from scene_pipeline.resources.s3_bucket import S3BucketResource
from scene_pipeline.resources.slots import ensure_pool_limit
from scene_pipeline.settings import Settings
from scene_pipeline.wiring import build_resources

from .conftest import REPO

KEYS = {
    "KLING_ACCESS_KEY": "ak-value-Hj4Rt9Qw2",
    "KLING_SECRET_KEY": "sk-value-Ty7Ui2Op5",
    "OPENAI_API_KEY": "oai-value-Vq3ZrT8p",
    "OPENAI_IMAGES_API_KEY": "img-value-Lw2Nx7Ks",
}


def test_dagster_finds_and_validates_the_code_location_from_the_repo_root() -> None:
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "definitions", "validate"], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Validation successful for code location scene_pipeline" in done.stdout + done.stderr
    # Loading the definitions says loudly that nothing real is configured.
    assert "OFFLINE" in done.stderr


def test_every_job_sensor_and_schedule_resolves() -> None:
    from scene_pipeline.definitions import defs

    repository = defs.get_repository_def()
    assert {s.name for s in repository.sensor_defs} == {"script_inbox_sensor"}
    assert {s.name for s in repository.schedule_defs} == {"nightly_regeneration_schedule"}
    assert "scene_job" in {j.name for j in repository.get_all_jobs()}
    sensor = defs.resolve_sensor_def("script_inbox_sensor")
    schedule = defs.resolve_schedule_def("nightly_regeneration_schedule")
    assert sensor.job_name == schedule.job_name == "scene_job"
    assert set(repository.get_top_level_resources()) == {
        "bucket",
        "prompt_writer",
        "image_maker",
        "pipeline",
        "io_manager",
        "script_io_manager",
        "manifest_io_manager",
    }


def test_the_job_has_a_step_per_scene_between_plan_and_publish_with_retries() -> None:
    from scene_pipeline.definitions import defs

    job = defs.resolve_job_def("scene_job")
    assert isinstance(job.partitions_def, DynamicPartitionsDefinition)
    assert job.partitions_def.name == "scripts"
    ops = {node.name: node.definition for node in job.graph.node_dict["scenes"].definition.nodes}
    assert set(ops) == {"plan_script", "render_scene", "publish_script"}
    for name in ("plan_script", "render_scene"):
        assert ops[name].retry_policy is not None and ops[name].retry_policy.max_retries == 2
    assert ops["plan_script"].output_dict["scenes_todo"].is_dynamic
    # The KLING account's limit is claimed around each paid task, not held per step.
    assert not ops["render_scene"].pool and not ops["plan_script"].pool


def test_the_job_runs_multiprocess_by_default_sized_by_the_kling_limit() -> None:
    from scene_pipeline.definitions import defs, settings

    job = defs.resolve_job_def("scene_job")
    assert job.executor_def.name == "multi_or_in_process_executor"
    execution = job.get_run_config_for_partition_key("any")["execution"]["config"]
    assert execution["multiprocess"]["max_concurrent"] == 2 * settings.kling_max_concurrency
    start = execution["multiprocess"]["start_method"]["forkserver"]
    assert start["preload_modules"] == ["scene_pipeline._preload"]


def test_the_lineage_reads_from_script_to_manifest() -> None:
    from scene_pipeline.definitions import defs

    graph = defs.get_repository_def().asset_graph
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents == {
        "script_document": set(),
        "character_sheet": {"script_document"},
        "character_portraits": {"character_sheet"},
        "scene_prompts": {"script_document", "character_sheet"},
        "scene_images": {"scene_prompts", "character_portraits"},
        "manifest": {"scene_images"},
    }
    assert graph.get(AssetKey("script_document")).is_external
    assert {c.name for c in graph.get(AssetKey("manifest")).check_keys} == {
        "all_scenes_succeeded",
        "prompts_within_cap",
        "references_exist",
    }


def test_descriptions_have_no_angle_brackets_for_the_ui_to_take_for_html() -> None:
    from scene_pipeline.definitions import defs

    repository = defs.get_repository_def()
    texts = {
        key.to_user_string(): repository.asset_graph.get(key).description or ""
        for key in repository.asset_graph.get_all_asset_keys()
    }
    for node in repository.asset_graph.asset_nodes:
        for check in node.check_keys:
            spec = repository.asset_graph.get_check_spec(check)
            texts[f"check {check.name}"] = spec.description or ""
    texts["job scene_job"] = repository.get_job("scene_job").description or ""
    assert all(texts.values()), [name for name, text in texts.items() if not text]
    assert {name: text for name, text in texts.items() if re.search(r"[<>]", text)} == {}


def resource_config_shown(settings: Settings) -> dict[str, dict[str, object]]:
    """The resources' configured values as the UI shows them (the repository snapshot)."""
    definitions = Definitions(assets=all_assets, resources=build_resources(settings))
    snapshot = RepositorySnap.from_def(definitions.get_repository_def())
    return {r.name: dict(r.configured_values) for r in snapshot.resources or []}


@pytest.mark.parametrize(
    ("provider", "image_key_variable"),
    [("kling", None), ("openai-images", "OPENAI_IMAGES_API_KEY")],
)
def test_resources_carry_keys_as_env_vars_the_ui_shows_by_name(
    provider: str, image_key_variable: str | None
) -> None:
    settings = Settings.from_env({**KEYS, "SCENE_PIPELINE_IMAGE_PROVIDER": provider})
    shown = resource_config_shown(settings)
    assert shown["prompt_writer"]["api_key"] == ResourceConfigEnvVarSnap(name="OPENAI_API_KEY")
    if provider == "kling":
        assert shown["image_maker"]["access_key"] == ResourceConfigEnvVarSnap(
            name="KLING_ACCESS_KEY"
        )
        assert shown["image_maker"]["secret_key"] == ResourceConfigEnvVarSnap(
            name="KLING_SECRET_KEY"
        )
    else:
        assert shown["image_maker"]["api_key"] == ResourceConfigEnvVarSnap(name=image_key_variable)
    text = json.dumps({n: {k: repr(v) for k, v in c.items()} for n, c in shown.items()})
    assert not [value for value in KEYS.values() if value in text]


def test_the_images_key_falls_back_to_the_openai_key_by_name() -> None:
    keys = {k: v for k, v in KEYS.items() if k != "OPENAI_IMAGES_API_KEY"}
    settings = Settings.from_env({**keys, "SCENE_PIPELINE_IMAGE_PROVIDER": "openai-images"})
    shown = resource_config_shown(settings)
    assert shown["image_maker"]["api_key"] == ResourceConfigEnvVarSnap(name="OPENAI_API_KEY")


def test_storage_and_providers_follow_the_settings(tmp_path: Path) -> None:
    local = build_resources(Settings.from_env({"SCENE_PIPELINE_LOCAL_DIR": str(tmp_path)}))
    assert isinstance(local["bucket"], LocalBucketResource)
    assert local["bucket"].local_dir == str(tmp_path)
    assert isinstance(local["prompt_writer"], OfflinePromptWriterResource)
    assert isinstance(local["image_maker"], OfflineImageMakerResource)
    # Every IO manager stores in the same bucket.
    for name in ("io_manager", "script_io_manager", "manifest_io_manager"):
        assert local[name].bucket is local["bucket"], name

    s3 = build_resources(
        Settings.from_env(
            {
                "S3_BUCKET_NAME": "b",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                "AWS_REGION": "eu-west-1",
                **KEYS,
                "KLING_MAX_CONCURRENCY": "7",
                "SCENE_PIPELINE_CANDIDATES": "3",
                "SCENE_PIPELINE_CHARACTER_REFERENCES": "off",
                "KLING_MODEL": "kling-v2",
            }
        )
    )
    assert isinstance(s3["bucket"], S3BucketResource) and s3["bucket"].bucket == "b"
    assert s3["bucket"].s3.endpoint_url == "http://127.0.0.1:9"
    assert s3["bucket"].s3.region_name == "eu-west-1"
    assert isinstance(s3["prompt_writer"], OpenAIPromptWriterResource)
    assert isinstance(s3["image_maker"], KlingImageMakerResource)
    assert s3["image_maker"].model == "kling-v2" and s3["image_maker"].references is False
    pipeline = s3["pipeline"]
    assert (pipeline.kling_pool_limit, pipeline.candidates) == (7, 3)


def test_provider_resources_never_show_their_keys_in_repr() -> None:
    resources = [
        OpenAIPromptWriterResource(api_key="sk-key-secret"),
        OpenAIImagesMakerResource(api_key="sk-key-secret"),
        KlingImageMakerResource(access_key="ak-key-secret", secret_key="sk-key-secret"),
    ]
    for resource in resources:
        shown = repr(resource.process_config_and_initialize())
        assert "key-secret" not in shown and "**********" in shown


def test_the_repo_instance_config_runs_one_run_per_script(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    [limit] = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limit == {
        "key": "dagster/partition",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    }
    # A copy, so that the instance's SQLite files land in tmp_path, not in the checkout.
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        # Every run sets the kling pool to KLING_MAX_CONCURRENCY; the UI shows that limit.
        assert ensure_pool_limit(instance, 3) is None
        assert instance.event_log_storage.get_concurrency_info("kling").slot_count == 3
        assert ensure_pool_limit(instance, 3) is None
        assert ensure_pool_limit(instance, 5) == 3
        assert instance.event_log_storage.get_concurrency_info("kling").slot_count == 5
