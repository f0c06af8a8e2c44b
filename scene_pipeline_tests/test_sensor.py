"""`script_inbox_sensor` on a real Dagster instance, against moto's S3 server and a local folder.

S3 quirks covered: ETags are quoted MD5s; moto's listing has one-second LastModified; a
listing page holds 1000 keys (2,500 objects are 3 pages); the console's "folder" objects
are zero-byte keys ending in "/"; a GET can fail with 503 SlowDown after the client's own
retries. Faults are injected at the HTTP level (a botocore `before-send` handler answers the
request), and every S3 call of the sensor's client is recorded (`before-parameter-build`), so
tests can assert which objects were downloaded and which reports were written. On the local
backend, the sensor's store is wrapped to count reads or to overwrite an object mid-tick.
"""

import hashlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultSensorStatus,
    SensorResult,
    build_sensor_context,
)
from dagster_aws.s3 import S3Resource
from PIL import Image
from pydantic import Field

import scene_pipeline.core.inbox as inbox_module
from scene_pipeline.contract.outputs import RejectionReport, SourceRef
from scene_pipeline.core.inbox import evaluate_inbox, run_key_for
from scene_pipeline.core.inbox_state import InboxCursor, SeenSet, seen_digest
from scene_pipeline.core.intake import read_accepted
from scene_pipeline.jobs import build_scene_job
from scene_pipeline.resources.bucket import BucketResource, LocalBucketResource
from scene_pipeline.resources.s3_bucket import S3BucketResource
from scene_pipeline.sensors import build_script_inbox_sensor
from scene_pipeline.settings import ConfigurationError, Settings
from scene_pipeline.storage import Bucket, ObjectStore, layout
from scene_pipeline.storage.base import OCTET
from scene_pipeline.storage.local import LocalObjectStore
from scene_pipeline.storage.s3 import S3ObjectStore
from scene_pipeline.wiring import build_resources

from .conftest import EXAMPLES
from .pipeline_helpers import run_script
from .test_cli import cli

INBOX = "scripts/incoming/"
SENSOR_RESOURCES = ("bucket", "prompt_writer", "image_maker", "pipeline")

SLOW_DOWN = (
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)

# (operation, key) of every S3 call made by an InstrumentedS3Bucket client.
CALLS: list[tuple[str, str]] = []


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


class InstrumentedS3Bucket(S3BucketResource):
    """The S3 bucket resource whose client records every call and answers 503 SlowDown to
    every GET of `failing_keys` (each attempt: the client's retries are exhausted too)."""

    failing_keys: list[str] = Field(default_factory=list)

    def _make_bucket(self) -> Bucket:
        client = self.s3.get_client()
        failing = set(self.failing_keys)
        bucket = self.bucket

        def record(model: Any, params: dict, **_: Any) -> None:
            CALLS.append((model.name, params.get("Key", params.get("Prefix", ""))))

        def fault(request: Any, **_: Any) -> AWSResponse | None:
            key = unquote(urlsplit(request.url).path).removeprefix(f"/{bucket}/")
            if key not in failing:
                return None
            CALLS.append(("GetObject:503", key))
            return AWSResponse(
                request.url, 503, {"Content-Type": "application/xml"}, _Body(SLOW_DOWN)
            )

        client.meta.events.register("before-parameter-build.s3", record)
        client.meta.events.register("before-send.s3.GetObject", fault)
        return Bucket(S3ObjectStore(client, bucket))


# Stores that tests wrap (to count reads, or to overwrite an object mid-tick), by name.
STORES: dict[str, ObjectStore] = {}


class WrappedBucketResource(BucketResource):
    """The bucket resource over one of `STORES`."""

    store_name: str

    def _make_bucket(self) -> Bucket:
        return Bucket(STORES[self.store_name])


class RecordingStore:
    """An ObjectStore that counts the GETs of every key and passes everything on."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            self.gets[key] += 1
        return self.inner.get(key)

    def put(self, key: str, data: bytes, content_type: str = OCTET, when: Any = None) -> str:
        return self.inner.put(key, data, content_type, when)

    def list(self, prefix: str) -> Iterator[Any]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def inbox_gets(self, prefix: str = INBOX) -> Counter[str]:
        return Counter({k: n for k, n in self.gets.items() if k.startswith(prefix)})


class OverwrittenAfterListingStore(RecordingStore):
    """The first GET of `key` finds `newer`: someone overwrote it after the tick's listing."""

    def __init__(self, inner: ObjectStore, key: str, newer: bytes) -> None:
        super().__init__(inner)
        self.key = key
        self.newer: bytes | None = newer

    def get(self, key: str) -> tuple[bytes, str]:
        if key == self.key and self.newer is not None:
            newer, self.newer = self.newer, None
            self.inner.put(key, newer, "application/json")
        return super().get(key)


def wrapped(name: str, store: RecordingStore) -> WrappedBucketResource:
    STORES[name] = store
    return WrappedBucketResource(store_name=name)


@pytest.fixture(autouse=True)
def _clear_recordings() -> Iterator[None]:
    CALLS.clear()
    yield
    STORES.clear()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def s3(s3_endpoint: str, s3_bucket: str) -> InstrumentedS3Bucket:
    return s3_resource(s3_endpoint, s3_bucket)


@pytest.fixture
def store(s3_endpoint: str, s3_bucket: str) -> ObjectStore:
    """The test's own (unrecorded) way into the S3 bucket."""
    return s3_store(s3_endpoint, s3_bucket)


def s3_resource(
    endpoint: str, bucket: str, failing: list[str] | None = None, **kw: Any
) -> InstrumentedS3Bucket:
    return InstrumentedS3Bucket(
        bucket=bucket,
        s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1", **kw),
        failing_keys=failing or [],
    )


def s3_store(endpoint: str, bucket: str) -> S3ObjectStore:
    return S3ObjectStore(boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"), bucket)


def doc(script_id: str, text: str = "버스를 타고 집에 가는 길이었거든?") -> bytes:
    return json.dumps(
        {
            "script_metadata": {"script_id": script_id, "title": f"title of {script_id}"},
            "scenes": [
                {
                    "scene_id": 1,
                    "audios": [{"type": "narration", "character": "narration", "text": text}],
                }
            ],
        },
        ensure_ascii=False,
    ).encode()


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def tick(
    instance: DagsterInstance,
    bucket: BucketResource,
    cursor: str | None,
    env: dict[str, str] | None = None,
) -> SensorResult:
    """One evaluation of the sensor built from `env` as definitions.py builds it; its asset
    events and partition requests are applied as the daemon applies them."""
    settings = Settings.from_env(env or {})
    sensor_def = build_script_inbox_sensor(
        settings, build_scene_job(settings.kling_max_concurrency)
    )
    resources = {**build_resources(settings), "bucket": bucket}
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={k: resources[k] for k in SENSOR_RESOURCES},
    ) as context:
        result = sensor_def(context)
    assert isinstance(result, SensorResult)
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requested(result: SensorResult) -> dict[str, str]:
    """partition key -> run key of the tick's run requests."""
    keys = {r.partition_key: r.run_key for r in result.run_requests or []}
    assert len(keys) == len(result.run_requests or [])
    return keys


def accepted_events(result: SensorResult) -> dict[str, str]:
    """partition -> source key of the tick's `script_document` materializations."""
    events = result.asset_events or []
    assert all(e.asset_key == AssetKey("script_document") for e in events)
    found = {e.partition: e.metadata["source"].value for e in events}
    assert len(found) == len(events)
    return found


def skip_text(result: SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def listing(store: ObjectStore, prefix: str = INBOX) -> dict[str, str]:
    return {info.key: info.etag for info in store.list(prefix)}


def gets(key: str) -> int:
    """GetObject calls for `key` (one per call, however many HTTP attempts it made)."""
    return sum(1 for op, k in CALLS if op == "GetObject" and k == key)


def failed_attempts(key: str) -> int:
    """HTTP requests for `key` that the injected fault answered with 503."""
    return sum(1 for op, k in CALLS if op == "GetObject:503" and k == key)


def puts_under(prefix: str) -> list[str]:
    return [k for op, k in CALLS if op == "PutObject" and k.startswith(prefix)]


def put_with_mtime(store: ObjectStore, root: Path, key: str, data: bytes, when: datetime) -> None:
    store.put(key, data)
    os.utime(root / key, (when.timestamp(), when.timestamp()))


# Files opened by this process while `files_opened()` is active (a sys.audit hook: it sees
# every open(), io.open() and os.open(), whatever opens the file).
_OPENED: list[str] | None = None
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


@contextmanager
def files_opened() -> Iterator[list[str]]:
    global _OPENED, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: it idles when not recording
        _HOOKED = True
    _OPENED = opened = []
    try:
        yield opened
    finally:
        _OPENED = None


# -- the case matrix: first tick, nothing new, new key, changed ETag ---------------------------


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_first_tick_nothing_new_new_key_and_changed_etag(
    backend: str, request: pytest.FixtureRequest, instance: DagsterInstance, tmp_path: Path
) -> None:
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        name = request.getfixturevalue("s3_bucket")
        resource: BucketResource = s3_resource(endpoint, name)
        store: ObjectStore = s3_store(endpoint, name)
        prefix, env = INBOX, {}
    else:
        resource = LocalBucketResource(local_dir=str(tmp_path))
        store = LocalObjectStore(tmp_path)
        prefix, env = "drops/", {"SCENE_PIPELINE_INBOX_PREFIX": "drops/"}
    written = {
        f"{prefix}a.json": doc("s-a"),
        f"{prefix}b.json": doc("s-b"),
        f"{prefix}batch/2026/c.json": doc("s-c"),
    }
    for key, data in written.items():
        store.put(key, data, "application/json")
    if backend == "s3":  # a console "folder": a zero-byte key ending in "/"
        store.put(f"{prefix}batch/", b"")
    etags = listing(store, prefix)

    first = tick(instance, resource, None, env)
    runs = requested(first)
    assert set(runs) == {"s-a", "s-b", "s-c"}
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["s-a", "s-b", "s-c"]
    assert set(instance.get_dynamic_partitions("scripts")) == {"s-a", "s-b", "s-c"}
    c_key = f"{prefix}batch/2026/c.json"
    assert runs["s-c"] == f"{c_key}:{etags[c_key].strip(chr(34))}"
    if backend == "s3":  # the run key names the bytes: S3's ETag is their MD5
        assert etags[c_key] == md5_etag(written[c_key])
    assert len(set(runs.values())) == 3
    by_id = {r.partition_key: r for r in first.run_requests}
    assert by_id["s-a"].tags["scene_pipeline/inbox_key"] == f"{prefix}a.json"
    assert by_id["s-a"].tags["scene_pipeline/launched_by"] == "sensor"
    # Each accepted version is reported as a `script_document` materialization.
    assert accepted_events(first) == {
        "s-a": f"{prefix}a.json",
        "s-b": f"{prefix}b.json",
        "s-c": c_key,
    }
    latest = instance.get_latest_materialization_event(AssetKey("script_document"))
    assert latest is not None and latest.dagster_event.partition in {"s-a", "s-b", "s-c"}
    listed = {i.key: i for i in store.list(prefix)}
    bucket = Bucket(store)
    for script_id, key in [("s-a", "a.json"), ("s-c", "batch/2026/c.json")]:
        accepted = read_accepted(bucket, script_id)
        assert accepted is not None
        assert accepted.source == SourceRef(key=prefix + key, etag=etags[prefix + key])
        assert accepted.source_last_modified == listed[prefix + key].last_modified
    assert not list(store.list("scripts/rejected/"))  # the folder marker is not a drop

    # Nothing new: no run, no partition, the same cursor, and the seen set is not even read.
    CALLS.clear()
    again = tick(instance, resource, first.cursor, env)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert not again.asset_events
    assert again.cursor == first.cursor
    assert again.skip_reason is not None
    if backend == "s3":
        assert [op for op, _ in CALLS] == ["ListObjectsV2"]

    # A new key.
    store.put(f"{prefix}d.json", doc("s-d"))
    third = tick(instance, resource, again.cursor, env)
    d_etag = listing(store, prefix)[f"{prefix}d.json"]
    assert requested(third) == {"s-d": run_key_for(f"{prefix}d.json", d_etag)}

    # The same key overwritten (a new ETag): a new run with a new run key.
    changed = doc("s-a", text="다른 버전")
    store.put(f"{prefix}a.json", changed)
    fourth = tick(instance, resource, third.cursor, env)
    assert set(requested(fourth)) == {"s-a"}
    assert requested(fourth)["s-a"] != runs["s-a"]
    new_etag = listing(store, prefix)[f"{prefix}a.json"]
    assert requested(fourth)["s-a"] == run_key_for(f"{prefix}a.json", new_etag)
    assert read_accepted(bucket, "s-a").source.etag == new_etag
    assert not tick(instance, resource, fourth.cursor, env).run_requests

    # The inbox is exactly what was dropped: nothing moved, changed or deleted.
    expected = {**written, f"{prefix}d.json": doc("s-d"), f"{prefix}a.json": changed}
    if backend == "s3":
        expected[f"{prefix}batch/"] = b""
    assert {k: store.get(k)[0] for k in listing(store, prefix)} == expected


# -- bad drops ----------------------------------------------------------------------------------


def test_bad_objects_are_reported_once_at_their_keys_and_do_not_block_good_ones(
    s3: InstrumentedS3Bucket, store: ObjectStore, instance: DagsterInstance
) -> None:
    bad = {
        f"{INBOX}not-json.json": b"{scenes: [}",
        f"{INBOX}no-text.json": json.dumps(
            {
                "script_metadata": {"script_id": "nt", "title": "t"},
                "scenes": [{"scene_id": 1, "audios": [{"type": "narration"}]}],
            }
        ).encode(),
        f"{INBOX}team/bad-id.json": doc("a/b"),
    }
    for key, data in bad.items():
        store.put(key, data)
    store.put(f"{INBOX}good.json", doc("good"))

    first = tick(instance, s3, None)
    assert set(requested(first)) == {"good"}
    assert set(accepted_events(first)) == {"good"}  # no materialization for a rejected drop
    expected_paths = {
        "scripts/rejected/not-json.json.error.json": ("$", f"{INBOX}not-json.json"),
        "scripts/rejected/no-text.json.error.json": (
            "scenes[0].audios[0].text",
            f"{INBOX}no-text.json",
        ),
        "scripts/rejected/team/bad-id.json.error.json": (
            "script_metadata.script_id",
            f"{INBOX}team/bad-id.json",
        ),
    }
    assert set(listing(store, "scripts/rejected/")) == set(expected_paths)
    for report_key, (path, source_key) in expected_paths.items():
        report = RejectionReport.model_validate_json(store.get(report_key)[0])
        assert report.source == SourceRef(key=source_key, etag=md5_etag(bad[source_key]))
        assert [e.path for e in report.errors] == [path]
        assert report.rejected_at <= datetime.now(UTC)
    assert "field required" in store.get("scripts/rejected/no-text.json.error.json")[0].decode()

    # A later tick with work to do does not report the same objects again.
    store.put(f"{INBOX}other.json", doc("other"))
    CALLS.clear()
    second = tick(instance, s3, first.cursor)
    assert set(requested(second)) == {"other"}
    assert puts_under("scripts/rejected/") == []
    assert all(gets(key) == 0 for key in bad)

    # Even with the cursor lost (every object handled again), reports are not rewritten and
    # the run keys are the same as before (Dagster skips a run key it has already used).
    CALLS.clear()
    reset = tick(instance, s3, None)
    assert puts_under("scripts/rejected/") == []
    assert requested(reset) == {**requested(first), **requested(second)}

    # A fixed re-upload under the same key is processed.
    store.put(f"{INBOX}no-text.json", doc("nt"))
    fixed = tick(instance, s3, reset.cursor)
    assert set(requested(fixed)) == {"nt"}


def test_an_oversize_object_is_rejected_from_its_listed_size_without_a_get(
    s3: InstrumentedS3Bucket, store: ObjectStore, instance: DagsterInstance
) -> None:
    big = b'{"pad": "' + b" " * (5 * 1024 * 1024) + b'"}'
    store.put(f"{INBOX}huge.json", big)
    store.put(f"{INBOX}small.json", doc("small"))
    CALLS.clear()
    result = tick(instance, s3, None)
    assert set(requested(result)) == {"small"}
    assert gets(f"{INBOX}huge.json") == 0 and gets(f"{INBOX}small.json") == 1
    report = RejectionReport.model_validate_json(
        store.get("scripts/rejected/huge.json.error.json")[0]
    )
    assert report.errors[0].path == "$"
    assert f"{len(big)} bytes" in report.errors[0].message


# -- versions and failures ----------------------------------------------------------------------


def test_an_old_version_read_late_does_not_replace_the_newer_one(
    s3_endpoint: str, s3_bucket: str, store: ObjectStore, instance: DagsterInstance
) -> None:
    resource = s3_resource(s3_endpoint, s3_bucket)
    store.put(f"{INBOX}v1.json", doc("story", text="first version"))
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    store.put(f"{INBOX}v2.json", doc("story", text="second version"))

    # v1's read fails (503 after the client's retries): v2 is accepted and run alone.
    # S3Resource's max_attempts is botocore's retry count: 1 = one retry after the first try.
    flaky = s3_resource(s3_endpoint, s3_bucket, failing=[f"{INBOX}v1.json"], max_attempts=1)
    first = tick(instance, flaky, None)
    assert requested(first) == {
        "story": run_key_for(f"{INBOX}v2.json", listing(store)[f"{INBOX}v2.json"])
    }
    assert gets(f"{INBOX}v1.json") == 1 and failed_attempts(f"{INBOX}v1.json") == 2

    # v1 is read on the next tick: valid, but older than the stored v2, so no copy, no run.
    second = tick(instance, resource, first.cursor)
    assert not second.run_requests and not second.asset_events
    accepted = read_accepted(Bucket(store), "story")
    assert accepted.source.key == f"{INBOX}v2.json"
    assert accepted.script.scenes[0].audios[0].text == "second version"
    assert not list(store.list("scripts/rejected/"))
    third = tick(instance, resource, second.cursor)
    assert not third.run_requests and third.cursor == second.cursor


def test_versions_of_one_script_by_last_modified_on_the_local_backend(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    resource = LocalBucketResource(local_dir=str(tmp_path))
    store = LocalObjectStore(tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    put_with_mtime(store, tmp_path, f"{INBOX}b-old.json", doc("s", "old"), now - timedelta(hours=2))
    put_with_mtime(store, tmp_path, f"{INBOX}a-new.json", doc("s", "new"), now - timedelta(hours=1))
    # Two versions in one tick: one run, for the newer (the key order says otherwise).
    first = tick(instance, resource, None)
    assert requested(first) == {
        "s": run_key_for(f"{INBOX}a-new.json", listing(store)[f"{INBOX}a-new.json"])
    }
    assert accepted_events(first) == {"s": f"{INBOX}a-new.json"}
    # An even older version dropped late: not stored, no run.
    put_with_mtime(store, tmp_path, f"{INBOX}oldest.json", doc("s", "0"), now - timedelta(hours=3))
    second = tick(instance, resource, first.cursor)
    assert not second.run_requests
    assert read_accepted(Bucket(store), "s").source.key == f"{INBOX}a-new.json"
    # Equal LastModified: the version handled later wins (tie rule), and it is run.
    put_with_mtime(store, tmp_path, f"{INBOX}tie.json", doc("s", "tie"), now - timedelta(hours=1))
    third = tick(instance, resource, second.cursor)
    assert set(requested(third)) == {"s"}
    assert read_accepted(Bucket(store), "s").source.key == f"{INBOX}tie.json"


def test_a_transient_read_error_is_retried_on_the_next_tick_and_never_reported(
    s3_endpoint: str, s3_bucket: str, store: ObjectStore, instance: DagsterInstance
) -> None:
    resource = s3_resource(s3_endpoint, s3_bucket)
    store.put(f"{INBOX}a.json", doc("a"))
    store.put(f"{INBOX}b.json", doc("b"))
    flaky = s3_resource(s3_endpoint, s3_bucket, failing=[f"{INBOX}a.json"], max_attempts=0)

    first = tick(instance, flaky, None)
    assert set(requested(first)) == {"b"}
    assert not list(store.list("scripts/rejected/"))
    assert json.loads(first.cursor)["failures"] == {
        f"{INBOX}a.json": [listing(store)[f"{INBOX}a.json"], 1]
    }

    second = tick(instance, resource, first.cursor)
    assert set(requested(second)) == {"a"}
    assert json.loads(second.cursor)["failures"] == {}
    assert not list(store.list("scripts/rejected/"))
    assert not tick(instance, resource, second.cursor).run_requests


def test_an_object_that_keeps_failing_does_not_block_the_others(
    s3_endpoint: str, s3_bucket: str, store: ObjectStore, instance: DagsterInstance
) -> None:
    env = {"SCENE_PIPELINE_INBOX_MAX_PER_TICK": "1"}
    stuck = f"{INBOX}stuck.json"
    flaky = s3_resource(s3_endpoint, s3_bucket, failing=[stuck], max_attempts=0)
    store.put(stuck, doc("stuck"))
    first = tick(instance, flaky, None, env)
    assert not first.run_requests and failed_attempts(stuck) == 1

    time.sleep(1.1)  # "fresh" is newer too: the order below comes from the failure count
    store.put(f"{INBOX}fresh.json", doc("fresh"))
    CALLS.clear()
    second = tick(instance, flaky, first.cursor, env)  # one slot: the fresh object gets it
    assert set(requested(second)) == {"fresh"} and gets(stuck) == 0

    CALLS.clear()
    third = tick(instance, flaky, second.cursor, env)  # still retried, still failing
    assert not third.run_requests and failed_attempts(stuck) == 1
    assert json.loads(third.cursor)["failures"][stuck][1] == 2

    fourth = tick(instance, s3_resource(s3_endpoint, s3_bucket), third.cursor, env)
    assert set(requested(fourth)) == {"stuck"}


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_an_object_overwritten_after_the_listing_is_not_run_twice_with_the_same_bytes(
    backend: str, request: pytest.FixtureRequest, instance: DagsterInstance, tmp_path: Path
) -> None:
    if backend == "s3":
        inner: ObjectStore = request.getfixturevalue("store")
    else:
        inner = LocalObjectStore(tmp_path)
    key = f"{INBOX}story.json"
    inner.put(key, doc("story", text="first draft"))
    newer = doc("story", text="the final draft, saved while the sensor was listing")
    wrapper = OverwrittenAfterListingStore(inner, key, newer)
    resource = wrapped("overwritten", wrapper)

    # The first tick lists the first draft but reads the final one; the second lists the final
    # draft. Between them: exactly one run, for the bytes that were read.
    first = tick(instance, resource, None)
    second = tick(instance, resource, first.cursor)
    assert wrapper.newer is None and inner.get(key)[0] == newer  # the overwrite happened
    final_etag = listing(inner)[key]
    runs = [*first.run_requests, *second.run_requests]
    assert [r.run_key for r in runs] == [run_key_for(key, final_etag)]
    assert runs[0].tags["scene_pipeline/inbox_etag"] == final_etag.strip('"')
    assert not second.asset_events
    assert wrapper.inbox_gets() == {key: 1}
    accepted = read_accepted(Bucket(inner), "story")
    assert accepted.source.etag == final_etag
    assert accepted.script.scenes[0].audios[0].text.startswith("the final draft")
    assert not tick(instance, resource, second.cursor).run_requests


# -- what a version with nothing to draw gets -----------------------------------------------


def test_an_identical_redrop_is_accepted_without_a_run(tmp_path: Path) -> None:
    resource = LocalBucketResource(local_dir=str(tmp_path / "bucket"))
    store = LocalObjectStore(tmp_path / "bucket")
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        store.put(f"{INBOX}a.json", doc("story"))
        first = tick(instance, resource, None)
        assert set(requested(first)) == {"story"}
        run_script(instance, resource, "story")  # the requested run, in-process

        # The same script under another key: accepted and reported, nothing to draw, no run.
        store.put(f"{INBOX}copy/a.json", doc("story"))
        redrop = tick(instance, resource, first.cursor)
        assert not redrop.run_requests
        assert accepted_events(redrop) == {"story": f"{INBOX}copy/a.json"}
        assert read_accepted(Bucket(store), "story").source.key == f"{INBOX}copy/a.json"
        assert "1 accepted (0 need a run)" in skip_text(redrop)

        # The same bytes written again under the first key (a new ETag locally): no run.
        store.put(f"{INBOX}a.json", doc("story"))
        again = tick(instance, resource, redrop.cursor)
        assert not again.run_requests
        assert accepted_events(again) == {"story": f"{INBOX}a.json"}

        # Changed content is drawn.
        store.put(f"{INBOX}a.json", doc("story", text="다른 버전"))
        changed = tick(instance, resource, again.cursor)
        assert requested(changed) == {
            "story": run_key_for(f"{INBOX}a.json", listing(store)[f"{INBOX}a.json"])
        }


def test_a_portrait_can_be_pinned_for_a_script_the_sensor_accepted_before_any_run(
    tmp_path: Path,
) -> None:
    """The backend drops a script; an operator who already has the cat's picture pins it
    before the requested run draws anything (`portrait` needs the accepted copy only, not a
    finished run): the run then draws the cat's scene with that picture, and no portrait of
    the cat."""
    storage = tmp_path / "bucket"
    env = {"SCENE_PIPELINE_LOCAL_DIR": str(storage)}
    submitted = cli("submit", EXAMPLES / "rooftop_cat.json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    resource = LocalBucketResource(local_dir=str(storage))
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        first = tick(instance, resource, None)
        assert set(requested(first)) == {"rooftop-cat"}
        assert not (storage / "results").exists()  # accepted, nothing drawn yet

        upload = tmp_path / "cat.png"
        picture = io.BytesIO()
        Image.new("RGB", (400, 600), (20, 160, 60)).save(picture, format="PNG")
        upload.write_bytes(picture.getvalue())
        pinned = cli("portrait", "rooftop-cat", "고양이", "--image", upload, env=env)
        assert pinned.returncode == 0, pinned.stderr
        assert "pinned the portrait of 고양이" in pinned.stdout
        assert "redraws the 1 scene(s) it is in: 3-key" in pinned.stdout

        manifest = run_script(instance, resource, "rooftop-cat")  # the requested run
    assert manifest.status == "complete"
    cat = next(c for c in manifest.characters if c.name == "고양이")
    assert cat.source == "uploaded" and cat.status == "succeeded" and cat.portrait_s3url
    assert Path(cat.portrait_s3url.removeprefix("file://")).read_bytes() == upload.read_bytes()
    scene = next(s for s in manifest.scenes if s.scene_id == "3-key")
    assert scene.status == "succeeded" and scene.references == [cat.portrait_s3url]
    # The only picture of the cat is the upload: none was drawn.
    cat_pngs = list((storage / "results/rooftop-cat/characters" / cat.character_key).glob("*.png"))
    assert len(cat_pngs) == 1


# -- bounds of a tick: count and time ---------------------------------------------------------


def local_inbox(root: Path, count: int, name: str = "inbox") -> tuple[RecordingStore, Bucket]:
    inner = LocalObjectStore(root)
    for i in range(count):
        inner.put(f"{INBOX}{i:04d}.json", doc(f"s-{i:04d}"))
    recording = RecordingStore(inner)
    STORES[name] = recording
    return recording, Bucket(recording)


def evaluate(bucket: Bucket, cursor: str | None, budget_seconds: float = 20.0) -> Any:
    return evaluate_inbox(
        bucket,
        INBOX,
        cursor,
        logging.getLogger("test_sensor"),
        max_per_tick=500,
        budget_seconds=budget_seconds,
        needs_run=lambda accepted: (True, "never drawn"),
    )


def test_a_tick_without_time_left_reads_nothing_and_leaves_everything_for_the_next(
    tmp_path: Path,
) -> None:
    recording, bucket = local_inbox(tmp_path, 5)
    spent = evaluate(bucket, None, budget_seconds=0)
    assert recording.inbox_gets() == {}
    assert spent.deferred == 5
    assert not spent.accepted and not spent.rejected and not spent.failed

    following = evaluate(bucket, spent.cursor)
    assert following.deferred == 0
    assert sorted(a.accepted.script.script_id for a in following.accepted) == [
        f"s-{i:04d}" for i in range(5)
    ]
    assert set(recording.inbox_gets().values()) == {1}
    assert evaluate(bucket, following.cursor).skip_message is not None


def test_objects_not_read_within_the_time_budget_are_read_by_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording, bucket = local_inbox(tmp_path, 150)
    # The tick's clock is a fake one that a read advances by a second: a slow store,
    # deterministically. 150 reads would take 150 "seconds"; the budget is 100.
    clock = SimpleNamespace(now=0.0, lock=threading.Lock())

    def slow_get(key: str, get: Any = recording.get) -> tuple[bytes, str]:
        with clock.lock:
            clock.now += 1.0
        return get(key)

    monkeypatch.setattr(recording, "get", slow_get)
    monkeypatch.setattr(inbox_module, "time", SimpleNamespace(monotonic=lambda: clock.now))

    first = evaluate(bucket, None, budget_seconds=100)
    read_first = set(recording.inbox_gets())
    assert 0 < len(read_first) < 150
    assert first.deferred == 150 - len(read_first)
    assert {a.key for a in first.accepted} == read_first

    second = evaluate(bucket, first.cursor, budget_seconds=1000)
    assert second.deferred == 0
    assert {a.key for a in second.accepted} == {f"{INBOX}{i:04d}.json" for i in range(150)} - (
        read_first
    )
    assert set(recording.inbox_gets().values()) == {1}  # none read twice, none skipped


def test_the_sensor_stops_reading_when_its_tick_seconds_are_used(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    recording, _ = local_inbox(tmp_path, 3)
    resource = WrappedBucketResource(store_name="inbox")
    # A microsecond: used up by the listing, before any object is read.
    hurried = tick(instance, resource, None, {"SCENE_PIPELINE_INBOX_TICK_SECONDS": "0.000001"})
    assert not hurried.run_requests and not hurried.asset_events
    assert recording.inbox_gets() == {}
    assert "3 left for the next ticks" in skip_text(hurried)

    relaxed = tick(instance, resource, hurried.cursor)
    assert set(requested(relaxed)) == {"s-0000", "s-0001", "s-0002"}


def test_a_burst_of_250_is_handled_in_batches_without_skipping_any(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    resource = LocalBucketResource(local_dir=str(tmp_path))
    store = LocalObjectStore(tmp_path)
    dropped = {f"{INBOX}burst/{i:03d}.json": doc(f"burst-{i:03d}") for i in range(250)}
    for key, data in dropped.items():
        store.put(key, data)
    etags = listing(store)

    env = {"SCENE_PIPELINE_INBOX_MAX_PER_TICK": "100"}
    cursor, batches = None, []
    for _ in range(4):
        result = tick(instance, resource, cursor, env)
        batches.append([r.run_key for r in result.run_requests or []])
        cursor = result.cursor
    assert [len(b) for b in batches] == [100, 100, 50, 0]
    run_keys = [k for b in batches for k in b]
    assert set(run_keys) == {run_key_for(k, etags[k]) for k in dropped}
    assert len(instance.get_dynamic_partitions("scripts")) == 250
    assert {k: store.get(k)[0] for k in listing(store)} == dropped


# -- scale ----------------------------------------------------------------------------------------


def test_an_idle_tick_over_several_pages_of_seen_s3_objects_only_lists(
    s3: InstrumentedS3Bucket, s3_bucket: str, store: ObjectStore, instance: DagsterInstance
) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    # 2,500 objects written straight into moto's (in-process) backend, not PUT one by one.
    # The sensor still lists them through the S3 API: 3 pages of at most 1000. (10,000 objects
    # are the local test below: moto takes seconds to list them, the sensor's work is the same.)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    seen: dict[str, str] = {}
    for i in range(2_500):
        key, data = f"{INBOX}bulk/{i:05d}.json", doc(f"bulk-{i:05d}")
        backend.put_object(s3_bucket, key, data)
        seen[key] = md5_etag(data)
    # "Already seen": the seen set and cursor a sensor leaves after handling all of them.
    SeenSet(1, {k: (e, 1) for k, e in seen.items()}).save(Bucket(store), INBOX)
    cursor = InboxCursor(generation=1, seen=len(seen), digest=seen_digest(seen.items())).to_json()

    CALLS.clear()
    idle = tick(instance, s3, cursor)
    assert not idle.run_requests and idle.cursor == cursor
    assert [op for op, _ in CALLS] == ["ListObjectsV2"] * 3  # 3 pages; no object read

    # One new object and one overwritten old one among them: found, the rest untouched.
    store.put(f"{INBOX}bulk/00017.json", doc("bulk-00017", text="changed"))
    store.put(f"{INBOX}zz-new.json", doc("zz-new"))
    CALLS.clear()
    busy = tick(instance, s3, idle.cursor)
    assert set(requested(busy)) == {"bulk-00017", "zz-new"}
    inbox_reads = {k for op, k in CALLS if op == "GetObject" and k.startswith(INBOX)}
    assert inbox_reads == {f"{INBOX}bulk/00017.json", f"{INBOX}zz-new.json"}
    assert len(busy.cursor) < 300
    assert SeenSet.load(Bucket(store)).committed(json.loads(busy.cursor)["generation"]) == {
        **seen,
        f"{INBOX}bulk/00017.json": md5_etag(doc("bulk-00017", text="changed")),
        f"{INBOX}zz-new.json": md5_etag(doc("zz-new")),
    }


def test_an_idle_tick_over_10000_seen_local_files_opens_none_of_them(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    root = tmp_path / "bucket"
    inbox_dir = root / INBOX / "bulk"
    inbox_dir.mkdir(parents=True)
    for i in range(10_000):
        (inbox_dir / f"{i:05d}.json").write_bytes(doc(f"bulk-{i:05d}"))
    inner = LocalObjectStore(root)
    seen = listing(inner)
    SeenSet(1, {k: (e, 1) for k, e in seen.items()}).save(Bucket(inner), INBOX)
    cursor = InboxCursor(generation=1, seen=len(seen), digest=seen_digest(seen.items())).to_json()
    recording = RecordingStore(inner)
    resource = wrapped("bulk", recording)

    def inbox_files(opened: list[str]) -> set[str]:
        paths = {Path(p).resolve() for p in opened}
        return {p.relative_to(root).as_posix() for p in paths if p.is_relative_to(root / INBOX)}

    # Local ETags come from size and mtime: listing 10,000 files reads none of them.
    with files_opened() as opened:
        idle = tick(instance, resource, cursor)
    assert not idle.run_requests and idle.cursor == cursor
    assert inbox_files(opened) == set()
    assert recording.gets == {}  # not even the seen set

    changed = f"{INBOX}bulk/00017.json"
    inner.put(changed, doc("bulk-00017", text="changed"))
    inner.put(f"{INBOX}zz-new.json", doc("zz-new"))
    with files_opened() as opened:
        busy = tick(instance, resource, idle.cursor)
    assert set(requested(busy)) == {"bulk-00017", "zz-new"}
    assert inbox_files(opened) == {changed, f"{INBOX}zz-new.json"}
    assert set(recording.inbox_gets()) == {changed, f"{INBOX}zz-new.json"}
    assert len(busy.cursor) < 300


# -- settings and definitions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["scripts/incoming", "/scripts/", "scripts//in/", "results/", "pipeline/inbox/",
     "scripts/", "scripts/rejected/", "scripts/rejected/x/", "../x/"],
)  # fmt: skip
def test_an_inbox_prefix_that_could_read_the_pipelines_own_objects_is_refused(
    prefix: str,
) -> None:
    with pytest.raises(ConfigurationError, match="SCENE_PIPELINE_INBOX_PREFIX"):
        Settings.from_env({"SCENE_PIPELINE_INBOX_PREFIX": prefix})


def test_settings_come_from_the_environment() -> None:
    assert Settings.from_env({"SCENE_PIPELINE_INBOX_PREFIX": "drops/backend/"}).inbox_prefix == (
        "drops/backend/"
    )
    # Blank is unset: the default inbox, 500 objects or 20 s per tick.
    default = Settings.from_env({"SCENE_PIPELINE_INBOX_PREFIX": " "})
    assert default.inbox_prefix == INBOX
    assert (default.inbox_max_per_tick, default.inbox_tick_seconds) == (500, 20.0)
    custom = build_script_inbox_sensor(
        Settings.from_env(
            {
                "SCENE_PIPELINE_INBOX_INTERVAL_SECONDS": "90",
                "SCENE_PIPELINE_INBOX_MAX_PER_TICK": "5",
                "SCENE_PIPELINE_INBOX_TICK_SECONDS": "7.5",
            }
        ),
        build_scene_job(5),
    )
    assert custom.minimum_interval_seconds == 90
    assert "at most 5 or 7.5 s per tick" in (custom.description or "")
    for name, value in [
        ("SCENE_PIPELINE_INBOX_MAX_PER_TICK", "0"),
        ("SCENE_PIPELINE_INBOX_TICK_SECONDS", "0"),
        ("SCENE_PIPELINE_INBOX_TICK_SECONDS", "soon"),
    ]:
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({name: value})


def test_the_definitions_run_the_sensor_by_default_on_scene_job(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    from scene_pipeline.definitions import defs

    sensor_def = defs.resolve_sensor_def("script_inbox_sensor")
    assert sensor_def.default_status == DefaultSensorStatus.RUNNING
    assert sensor_def.job_name == "scene_job"
    assert sensor_def.minimum_interval_seconds == 30
    assert sensor_def.description
    assert set(SENSOR_RESOURCES) <= set(sensor_def.required_resource_keys)
    bucket = LocalBucketResource(local_dir=str(tmp_path))
    LocalObjectStore(tmp_path).put(f"{INBOX}one.json", doc("one"))
    resources = {**build_resources(Settings.from_env({})), "bucket": bucket}
    with build_sensor_context(
        instance=instance, cursor=None, resources={k: resources[k] for k in SENSOR_RESOURCES}
    ) as context:
        result = sensor_def(context)
    assert [r.partition_key for r in result.run_requests] == ["one"]


def test_a_missing_seen_set_is_rebuilt(
    s3: InstrumentedS3Bucket, store: ObjectStore, instance: DagsterInstance
) -> None:
    store.put(f"{INBOX}a.json", doc("a"))
    first = tick(instance, s3, None)
    # Someone deletes pipeline/inbox/seen.json: the object is handled again, same run key.
    store.delete(layout.INBOX_SEEN_KEY)
    store.put(f"{INBOX}b.json", doc("b"))
    second = tick(instance, s3, first.cursor)
    assert requested(second) == {
        **requested(first),
        "b": run_key_for(f"{INBOX}b.json", md5_etag(doc("b"))),
    }
    assert read_accepted(Bucket(store), "a") is not None
    assert not tick(instance, s3, second.cursor).run_requests
