"""What `dagster dev` in the repo root loads: the code location, the job, the instance config."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DynamicPartitionsDefinition

from scene_pipeline.environment import ConfigurationError, build_resources, describe, resolve_mode
from scene_pipeline.resources.storage import LocalStorageResource, S3StorageResource

from .conftest import REPO


def test_dagster_finds_and_validates_the_code_location_from_the_repo_root() -> None:
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "definitions", "validate"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Validation successful for code location scene_pipeline" in done.stdout + done.stderr
    # Loading the definitions says loudly that nothing real is configured.
    assert "OFFLINE" in done.stderr


def test_the_job_has_a_step_per_scene_and_a_pooled_image_step() -> None:
    from scene_pipeline.definitions import defs

    job = defs.resolve_job_def("scene_job")
    assert isinstance(job.partitions_def, DynamicPartitionsDefinition)
    assert job.partitions_def.name == "scripts"
    ops = {node.name: node.definition for node in job.graph.node_dict["scenes"].definition.nodes}
    assert ops["draw_scene_image"].pool == "kling"
    assert ops["draw_scene_image"].retry_policy.max_retries >= 1
    assert ops["write_scene_prompt"].retry_policy.max_retries >= 1
    assert ops["plan_scenes"].output_dict["todo"].is_dynamic
    executor = job.executor_def
    assert executor.name == "scene_executor"


def test_the_repo_instance_config_limits_the_kling_pool(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 5
    # A copy, so that the instance's SQLite files land in tmp_path, not in the checkout.
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 5


def test_storage_and_providers_follow_the_environment(tmp_path: Path) -> None:
    local = build_resources({"SCENE_PIPELINE_LOCAL_DIR": str(tmp_path)})
    assert isinstance(local["storage"], LocalStorageResource)
    assert local["storage"].local_dir == str(tmp_path)
    s3 = build_resources({"S3_BUCKET_NAME": "b", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert isinstance(s3["storage"], S3StorageResource)
    assert s3["storage"].s3.endpoint_url == "http://127.0.0.1:9"
    lines = describe({})
    assert any("OFFLINE template writer" in line for line in lines)
    assert any("OFFLINE placeholder maker" in line for line in lines)
    assert resolve_mode({}).offline


def test_an_unknown_image_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="SCENE_PIPELINE_IMAGE_PROVIDER"):
        resolve_mode({"SCENE_PIPELINE_IMAGE_PROVIDER": "dall-e-9"})


def test_announced_endpoints_never_show_credentials_in_urls() -> None:
    lines = describe(
        {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": "https://user:pw-secret@proxy.example/v1?api-key=q-secret",
            "S3_BUCKET_NAME": "b",
            "AWS_ENDPOINT_URL": "http://ak:sk-secret@127.0.0.1:9000",
        }
    )
    text = "\n".join(lines)
    assert "proxy.example/v1" in text and "127.0.0.1:9000" in text
    assert "secret" not in text


def test_provider_resources_never_show_their_keys_in_repr() -> None:
    from scene_pipeline.resources.kling import KlingImageMakerResource
    from scene_pipeline.resources.openai import (
        OpenAIImagesMakerResource,
        OpenAIPromptWriterResource,
    )

    resources = [
        OpenAIPromptWriterResource(api_key="sk-key-secret"),
        OpenAIImagesMakerResource(api_key="sk-key-secret"),
        KlingImageMakerResource(access_key="ak-key-secret", secret_key="sk-key-secret"),
    ]
    for resource in resources:
        shown = repr(resource.process_config_and_initialize())
        assert "key-secret" not in shown and "**********" in shown
