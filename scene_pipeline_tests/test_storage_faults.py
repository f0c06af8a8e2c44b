"""S3 faults while images and the manifest are written: absorbed, or a clear failure, and the
manifest never names an image that does not exist.

The faults are real HTTP answers: `FaultyS3Proxy` sits between the pipeline's S3 client and
moto's server and answers chosen PUTs with 503 SlowDown, 500 InternalError or 404
NoSuchBucket, as S3 does. The pipeline's S3 client is dagster-aws's (standard retry mode,
5 attempts), so a few faults are absorbed by botocore; persistent ones reach the pipeline.
The assets run with `materialize()` (in-process executor, the steps' real RetryPolicy) with
the offline providers: storage is what is under test here. Each run works under the script's
lease as `scene-pipeline run` does (the command holds it, the run is tagged with it), so that
a rerun after a failed run is what a user's next command would be. Missing-bucket start-up is
checked through the CLI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from dagster import DagsterEventType, DagsterInstance, RetryPolicy, materialize
from dagster_aws.s3 import S3Resource

from scene_pipeline.assets import all_assets
from scene_pipeline.cli.runs import script_lease
from scene_pipeline.constants import TAG_LEASE
from scene_pipeline.resources.s3_bucket import S3BucketResource
from scene_pipeline.resources.slots import ensure_pool_limit

from .faulty_s3_proxy import INTERNAL_ERROR, NO_SUCH_BUCKET, SLOW_DOWN, FaultyS3Proxy
from .pipeline_helpers import accept, resources
from .resilience import CLI, run_to_end, script_document, write_script

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

SCRIPT_ID = "storage-faults"
SCENES = 3
MANIFEST_KEY = f"results/{SCRIPT_ID}/manifest.json"
PNG_KEYS = rf"^results/{SCRIPT_ID}/scenes/[^/]+/[^/]+\.png$"


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultyS3Proxy]:
    with FaultyS3Proxy(s3_endpoint) as running:
        yield running


@pytest.fixture
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps' RetryPolicy still decides how many attempts there are (the last one is what
    these tests are about); only its 10-40 s waits between attempts are skipped."""
    monkeypatch.setattr(RetryPolicy, "calculate_delay", lambda self, attempt_num: 0)


@pytest.fixture
def direct(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def bucket_at(endpoint: str, bucket: str) -> S3BucketResource:
    return S3BucketResource(
        bucket=bucket, s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1")
    )


def run(instance: DagsterInstance, through_proxy: S3BucketResource, direct: S3BucketResource):
    """One run of the script's graph through the proxy, under the script's lease (taken
    directly, as the CLI takes it before it starts a run)."""
    ensure_pool_limit(instance, 5)
    with script_lease(direct.get_bucket(), SCRIPT_ID, 0) as token:
        return materialize(
            all_assets,
            selection=[a for a in all_assets if hasattr(a, "node_def")],
            partition_key=SCRIPT_ID,
            instance=instance,
            resources=resources(through_proxy),
            tags={TAG_LEASE: token},
            raise_on_error=False,
        )


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    return [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


def read_manifest(client, bucket: str) -> dict | None:
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=MANIFEST_KEY)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def assert_manifest_images_exist(client, bucket: str, manifest: dict) -> None:
    """Every image the manifest names is in the bucket; every succeeded scene names one."""
    stored = set(keys(client, bucket))
    for scene in manifest["scenes"]:
        if scene["status"] == "succeeded":
            assert scene["image_s3url"], scene
        if scene["image_s3url"]:
            key = scene["image_s3url"].removeprefix(f"s3://{bucket}/")
            assert key in stored, f"manifest names a missing image: {key}"
            head = client.head_object(Bucket=bucket, Key=key)
            assert head["ContentLength"] > 0


def step_failures(result) -> dict[str, str]:
    return {
        event.step_key: event.step_failure_data.error.to_string()
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_FAILURE
    }


class Setup:
    def __init__(self, instance: DagsterInstance, proxied: S3BucketResource, plain: Any):
        self.instance, self.proxied, self.plain = instance, proxied, plain

    def run(self):
        return run(self.instance, self.proxied, self.plain)


@pytest.fixture
def setup(s3_endpoint: str, s3_bucket: str, proxy: FaultyS3Proxy) -> Iterator[Setup]:
    instance = DagsterInstance.ephemeral()
    plain = bucket_at(s3_endpoint, s3_bucket)
    accept(plain, script_document(SCRIPT_ID, SCENES), instance)
    yield Setup(instance, bucket_at(proxy.url, s3_bucket), plain)
    instance.dispose()


def test_a_few_throttles_and_5xx_are_absorbed_by_the_s3_client(setup, proxy, direct, s3_bucket):
    proxy.fail("PUT", PNG_KEYS, SLOW_DOWN, times=2)
    proxy.fail("PUT", re.escape(MANIFEST_KEY), INTERNAL_ERROR, times=2)

    result = setup.run()

    assert result.success, step_failures(result)
    assert proxy.hits == {"PUT SlowDown": 2, "PUT InternalError": 2}
    # botocore absorbed them: no step needed its RetryPolicy.
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    manifest = read_manifest(direct, s3_bucket)
    assert manifest is not None and manifest["status"] == "complete"
    assert_manifest_images_exist(direct, s3_bucket, manifest)


def test_a_manifest_that_cannot_be_written_fails_the_run_naming_the_key_then_a_rerun_completes(
    setup, proxy, direct, s3_bucket
):
    proxy.fail("PUT", re.escape(MANIFEST_KEY), SLOW_DOWN)  # every attempt, every retry

    failed = setup.run()

    assert not failed.success
    failures = step_failures(failed)
    assert list(failures) == ["scenes.publish_script"], failures
    assert f"s3://{s3_bucket}/{MANIFEST_KEY}" in failures["scenes.publish_script"]
    assert "SlowDown" in failures["scenes.publish_script"]
    # The first attempt and S3Resource's max_attempts (5) retries, then the client gave up.
    assert proxy.hits["PUT SlowDown"] == 6
    assert read_manifest(direct, s3_bucket) is None
    scenes = f"results/{SCRIPT_ID}/scenes/"
    drawn = [k for k in keys(direct, s3_bucket, scenes) if k.endswith(".png")]
    assert len(drawn) == SCENES

    proxy.clear()
    again = setup.run()

    assert again.success, step_failures(again)
    manifest = read_manifest(direct, s3_bucket)
    assert manifest is not None and manifest["status"] == "complete"
    assert_manifest_images_exist(direct, s3_bucket, manifest)
    # The pictures of the failed run were reused, not drawn again.
    after = [k for k in keys(direct, s3_bucket, scenes) if k.endswith(".png")]
    assert sorted(after) == sorted(drawn)


def test_scenes_whose_image_cannot_be_stored_fail_alone_and_no_manifest_names_a_missing_image(
    setup, proxy, direct, s3_bucket, no_retry_waits
):
    # The bucket is gone for scene 2's PNG, and for scene 3's record (written after its PNG).
    # 404 is not retried by botocore: the step's RetryPolicy tries again (twice), then each
    # scene fails on its own.
    scenes = f"^results/{SCRIPT_ID}/scenes"
    proxy.fail("PUT", rf"{scenes}/2/.*\.png$", NO_SUCH_BUCKET)
    proxy.fail("PUT", rf"{scenes}/3/.*\.json$", NO_SUCH_BUCKET)

    first = setup.run()

    assert first.success, step_failures(first)
    manifest = read_manifest(direct, s3_bucket)
    assert manifest is not None and manifest["status"] == "partial"
    by_id = {s["scene_id"]: s for s in manifest["scenes"]}
    assert by_id["1"]["status"] == "succeeded"
    for scene_id in ("2", "3"):
        assert by_id[scene_id]["status"] == "failed", by_id[scene_id]
        assert by_id[scene_id]["image_s3url"] is None
        assert "after 3 attempts" in by_id[scene_id]["error"]
        assert "NoSuchBucket" in by_id[scene_id]["error"]
    assert_manifest_images_exist(direct, s3_bucket, manifest)
    # Scene 3's PNG was stored before its record failed: an orphan, named by nothing.
    assert [k for k in keys(direct, s3_bucket, f"results/{SCRIPT_ID}/scenes/3/")]
    # The cause, with the key, is in the retried attempts' errors for the operator.
    retries = [
        (e.step_key, e.step_retry_data.error.to_string() if e.step_retry_data.error else "")
        for e in first.all_events
        if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
    ]
    for scene_id in ("2", "3"):
        errors = [text for step, text in retries if step.endswith(f"[{scene_id}]")]
        assert len(errors) == 2  # the RetryPolicy's two retries, then the scene failed
        assert all("NoSuchBucket" in t and f"/scenes/{scene_id}/" in t for t in errors)

    proxy.clear()
    second = setup.run()

    assert second.success, step_failures(second)
    manifest = read_manifest(direct, s3_bucket)
    assert manifest is not None and manifest["status"] == "complete"
    assert_manifest_images_exist(direct, s3_bucket, manifest)
    for scene in manifest["scenes"]:  # and each image has its record next to it
        record = scene["image_s3url"].removeprefix(f"s3://{s3_bucket}/").replace(".png", ".json")
        assert json.loads(direct.get_object(Bucket=s3_bucket, Key=record)["Body"].read())


def test_the_cli_says_clearly_that_the_bucket_does_not_exist(tmp_path: Path, s3_endpoint: str):
    script = write_script(tmp_path / "script.json", script_document(SCRIPT_ID, 1))
    env = {
        "S3_BUCKET_NAME": "no-such-bucket-here",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "us-east-1",
        "TMPDIR": str(tmp_path),
    }
    code, out, err = run_to_end([CLI, "run", str(script)], env, tmp_path / "logs", "cli")
    assert code != 0
    assert "no-such-bucket-here" in err and "NoSuchBucket" in err
    assert "Traceback" not in err, err[-2000:]
