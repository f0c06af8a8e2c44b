"""`script_inbox_sensor` on a real Dagster instance, against moto's S3 server and a local folder.

S3 quirks covered: ETags are quoted MD5s; moto's listing has one-second LastModified; a
listing page holds 1000 keys (10,000 objects are 10 pages); the console's "folder" objects
are zero-byte keys ending in "/"; a GET can fail with 503 SlowDown after the client's own
retries. Faults are injected at the HTTP level (a botocore `before-send` handler answers the
request), and every S3 call of the sensor's client is recorded (`before-call`), so tests can
assert which objects were downloaded and which reports were written.
"""

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from dagster import DagsterInstance, DefaultSensorStatus, SensorResult, build_sensor_context
from dagster_aws.s3 import S3Resource
from pydantic import Field

from scene_pipeline.bucket import Bucket
from scene_pipeline.contract.outputs import RejectionReport, SourceRef
from scene_pipeline.environment import ConfigurationError
from scene_pipeline.resources.storage import (
    LocalStorageResource,
    S3StorageResource,
    StorageResource,
)
from scene_pipeline.sensors import (
    SEEN_KEY,
    InboxCursor,
    SeenSet,
    build_script_inbox_sensor,
    check_inbox_prefix,
    run_key_for,
    seen_digest,
)
from scene_pipeline.storage import ObjectStore

INBOX = "scripts/incoming/"

SLOW_DOWN = (
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)

# (operation, key) of every S3 call made by an InstrumentedS3Storage client.
CALLS: list[tuple[str, str]] = []


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


class InstrumentedS3Storage(S3StorageResource):
    """S3 storage whose client records every call and answers 503 SlowDown to every GET of
    `failing_keys` (each attempt: the client's retries are exhausted too)."""

    failing_keys: list[str] = Field(default_factory=list)

    def _make_store(self) -> ObjectStore:
        store = super()._make_store()
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

        store.client.meta.events.register("before-parameter-build.s3", record)
        store.client.meta.events.register("before-send.s3.GetObject", fault)
        return store


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def s3(s3_endpoint: str, s3_bucket: str) -> InstrumentedS3Storage:
    return s3_storage(s3_endpoint, s3_bucket)


def s3_storage(endpoint: str, bucket: str, failing: list[str] | None = None, **kw: Any):
    return InstrumentedS3Storage(
        bucket=bucket,
        s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1", **kw),
        failing_keys=failing or [],
    )


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
    storage: StorageResource,
    cursor: str | None,
    env: dict[str, str] | None = None,
) -> SensorResult:
    """One evaluation of the sensor; the partition requests are applied as the daemon would."""
    sensor_def = build_script_inbox_sensor(env or {})
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": storage}
    ) as context:
        result = sensor_def(context)
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requested(result: SensorResult) -> dict[str, str]:
    """partition key -> run key of the tick's run requests."""
    keys = {r.partition_key: r.run_key for r in result.run_requests or []}
    assert len(keys) == len(result.run_requests or [])
    return keys


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


# -- the case matrix: first tick, nothing new, new key, changed ETag ---------------------------


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_first_tick_nothing_new_new_key_and_changed_etag(
    backend: str, request: pytest.FixtureRequest, instance: DagsterInstance, tmp_path: Path
) -> None:
    if backend == "s3":
        storage: StorageResource = request.getfixturevalue("s3")
        prefix, env = INBOX, {}
    else:
        storage = LocalStorageResource(local_dir=str(tmp_path))
        prefix, env = "drops/", {"SCENE_PIPELINE_INBOX_PREFIX": "drops/"}
    store = storage.get_store()
    written = {
        f"{prefix}a.json": doc("s-a"),
        f"{prefix}b.json": doc("s-b"),
        f"{prefix}batch/2026/c.json": doc("s-c"),
    }
    for key, data in written.items():
        store.put(key, data, "application/json")
    if backend == "s3":  # a console "folder": a zero-byte key ending in "/"
        store.put(f"{prefix}batch/", b"")

    first = tick(instance, storage, None, env)
    runs = requested(first)
    assert set(runs) == {"s-a", "s-b", "s-c"}
    assert first.dynamic_partitions_requests[0].partition_keys == ["s-a", "s-b", "s-c"]
    assert set(instance.get_dynamic_partitions("scripts")) == {"s-a", "s-b", "s-c"}
    c_key = f"{prefix}batch/2026/c.json"
    assert runs["s-c"] == f"{c_key}:{hashlib.md5(written[c_key]).hexdigest()}"
    assert len(set(runs.values())) == 3
    by_id = {r.partition_key: r for r in first.run_requests}
    assert by_id["s-a"].tags["scene_pipeline/inbox_key"] == f"{prefix}a.json"
    listed = {i.key: i for i in store.list(prefix)}
    bucket = storage.get_bucket()
    for script_id, key in [("s-a", "a.json"), ("s-c", "batch/2026/c.json")]:
        accepted = bucket.read_accepted(script_id)
        assert accepted is not None
        assert accepted.source == SourceRef(key=prefix + key, etag=md5_etag(written[prefix + key]))
        assert accepted.source_last_modified == listed[prefix + key].last_modified
    assert not list(store.list("scripts/rejected/"))  # the folder marker is not a drop

    # Nothing new: no run, no partition, the same cursor, and the seen set is not even read.
    CALLS.clear()
    again = tick(instance, storage, first.cursor, env)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert again.cursor == first.cursor
    assert again.skip_reason is not None
    if backend == "s3":
        assert [op for op, _ in CALLS] == ["ListObjectsV2"]

    # A new key.
    store.put(f"{prefix}d.json", doc("s-d"))
    third = tick(instance, storage, again.cursor, env)
    assert requested(third) == {"s-d": f"{prefix}d.json:{hashlib.md5(doc('s-d')).hexdigest()}"}

    # The same key overwritten (a new ETag): a new run with a new run key.
    changed = doc("s-a", text="다른 버전")
    store.put(f"{prefix}a.json", changed)
    fourth = tick(instance, storage, third.cursor, env)
    assert set(requested(fourth)) == {"s-a"}
    assert requested(fourth)["s-a"] != runs["s-a"]
    assert bucket.read_accepted("s-a").source.etag == md5_etag(changed)
    assert not tick(instance, storage, fourth.cursor, env).run_requests

    # The inbox is exactly what was dropped: nothing moved, changed or deleted.
    expected = {k: md5_etag(v) for k, v in {**written, f"{prefix}d.json": doc("s-d")}.items()}
    expected[f"{prefix}a.json"] = md5_etag(changed)
    if backend == "s3":
        expected[f"{prefix}batch/"] = md5_etag(b"")
    assert listing(store, prefix) == expected


# -- bad drops ----------------------------------------------------------------------------------


def test_bad_objects_are_reported_once_at_their_keys_and_do_not_block_good_ones(
    s3: InstrumentedS3Storage, instance: DagsterInstance
) -> None:
    store = s3.get_store()
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
        report = RejectionReport.model_validate_json(store.get(report_key))
        assert report.source == SourceRef(key=source_key, etag=md5_etag(bad[source_key]))
        assert [e.path for e in report.errors] == [path]
        assert report.rejected_at <= datetime.now(UTC)
    assert "field required" in store.get("scripts/rejected/no-text.json.error.json").decode()

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
    s3: InstrumentedS3Storage, instance: DagsterInstance
) -> None:
    store = s3.get_store()
    big = b'{"pad": "' + b" " * (5 * 1024 * 1024) + b'"}'
    store.put(f"{INBOX}huge.json", big)
    store.put(f"{INBOX}small.json", doc("small"))
    CALLS.clear()
    result = tick(instance, s3, None)
    assert set(requested(result)) == {"small"}
    assert gets(f"{INBOX}huge.json") == 0 and gets(f"{INBOX}small.json") == 1
    report = RejectionReport.model_validate_json(store.get("scripts/rejected/huge.json.error.json"))
    assert report.errors[0].path == "$"
    assert f"{len(big)} bytes" in report.errors[0].message


# -- versions and failures ----------------------------------------------------------------------


def test_an_old_version_read_late_does_not_replace_the_newer_one(
    s3_endpoint: str, s3_bucket: str, instance: DagsterInstance
) -> None:
    storage = s3_storage(s3_endpoint, s3_bucket)
    store = storage.get_store()
    store.put(f"{INBOX}v1.json", doc("story", text="first version"))
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    store.put(f"{INBOX}v2.json", doc("story", text="second version"))

    # v1's read fails (503 after the client's retries): v2 is accepted and run alone.
    # S3Resource's max_attempts is botocore's retry count: 1 = one retry after the first try.
    flaky = s3_storage(s3_endpoint, s3_bucket, failing=[f"{INBOX}v1.json"], max_attempts=1)
    first = tick(instance, flaky, None)
    assert requested(first) == {
        "story": run_key_for(f"{INBOX}v2.json", listing(store)[f"{INBOX}v2.json"])
    }
    assert gets(f"{INBOX}v1.json") == 1 and failed_attempts(f"{INBOX}v1.json") == 2

    # v1 is read on the next tick: valid, but older than the stored v2, so no copy, no run.
    second = tick(instance, storage, first.cursor)
    assert not second.run_requests
    accepted = storage.get_bucket().read_accepted("story")
    assert accepted.source.key == f"{INBOX}v2.json"
    assert accepted.script.scenes[0].audios[0].text == "second version"
    assert not list(store.list("scripts/rejected/"))
    third = tick(instance, storage, second.cursor)
    assert not third.run_requests and third.cursor == second.cursor


def test_versions_of_one_script_by_last_modified_on_the_local_backend(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    storage = LocalStorageResource(local_dir=str(tmp_path))
    store = storage.get_store()
    now = datetime.now(UTC).replace(microsecond=0)
    put_with_mtime(store, tmp_path, f"{INBOX}b-old.json", doc("s", "old"), now - timedelta(hours=2))
    put_with_mtime(store, tmp_path, f"{INBOX}a-new.json", doc("s", "new"), now - timedelta(hours=1))
    # Two versions in one tick: one run, for the newer (the key order says otherwise).
    first = tick(instance, storage, None)
    assert requested(first) == {"s": run_key_for(f"{INBOX}a-new.json", md5_etag(doc("s", "new")))}
    # An even older version dropped late: not stored, no run.
    put_with_mtime(store, tmp_path, f"{INBOX}oldest.json", doc("s", "0"), now - timedelta(hours=3))
    second = tick(instance, storage, first.cursor)
    assert not second.run_requests
    assert storage.get_bucket().read_accepted("s").source.key == f"{INBOX}a-new.json"
    # Equal LastModified: the version handled later wins (tie rule), and it is run.
    put_with_mtime(store, tmp_path, f"{INBOX}tie.json", doc("s", "tie"), now - timedelta(hours=1))
    third = tick(instance, storage, second.cursor)
    assert set(requested(third)) == {"s"}
    assert storage.get_bucket().read_accepted("s").source.key == f"{INBOX}tie.json"


def test_a_transient_read_error_is_retried_on_the_next_tick_and_never_reported(
    s3_endpoint: str, s3_bucket: str, instance: DagsterInstance
) -> None:
    storage = s3_storage(s3_endpoint, s3_bucket)
    store = storage.get_store()
    store.put(f"{INBOX}a.json", doc("a"))
    store.put(f"{INBOX}b.json", doc("b"))
    flaky = s3_storage(s3_endpoint, s3_bucket, failing=[f"{INBOX}a.json"], max_attempts=0)

    first = tick(instance, flaky, None)
    assert set(requested(first)) == {"b"}
    assert not list(store.list("scripts/rejected/"))
    assert json.loads(first.cursor)["failures"] == {
        f"{INBOX}a.json": [listing(store)[f"{INBOX}a.json"], 1]
    }

    second = tick(instance, storage, first.cursor)
    assert set(requested(second)) == {"a"}
    assert json.loads(second.cursor)["failures"] == {}
    assert not list(store.list("scripts/rejected/"))
    assert not tick(instance, storage, second.cursor).run_requests


def test_an_object_that_keeps_failing_does_not_block_the_others(
    s3_endpoint: str, s3_bucket: str, instance: DagsterInstance
) -> None:
    store = s3_storage(s3_endpoint, s3_bucket).get_store()
    env = {"SCENE_PIPELINE_INBOX_MAX_PER_TICK": "1"}
    stuck = f"{INBOX}stuck.json"
    flaky = s3_storage(s3_endpoint, s3_bucket, failing=[stuck], max_attempts=0)
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

    fourth = tick(instance, s3_storage(s3_endpoint, s3_bucket), third.cursor, env)
    assert set(requested(fourth)) == {"stuck"}


# -- scale ----------------------------------------------------------------------------------------


def test_a_tick_over_10000_seen_objects_is_fast_and_the_cursor_small(
    s3: InstrumentedS3Storage, s3_bucket: str, instance: DagsterInstance
) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    # 10,000 objects written straight into moto's (in-process) backend: 0.5 s instead of a
    # minute of PUTs. The sensor still lists them through the S3 API, 10 pages of 1000.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    seen: dict[str, str] = {}
    for i in range(10_000):
        key, data = f"{INBOX}bulk/{i:05d}.json", doc(f"bulk-{i:05d}")
        backend.put_object(s3_bucket, key, data)
        seen[key] = md5_etag(data)
    store = s3.get_store()
    # "Already seen": the seen set and cursor a sensor leaves after handling all of them.
    SeenSet(1, {k: (e, 1) for k, e in seen.items()}).save(store, INBOX)
    cursor = InboxCursor(generation=1, seen=len(seen), digest=seen_digest(seen.items())).to_json()

    CALLS.clear()
    started = time.perf_counter()
    idle = tick(instance, s3, cursor)
    idle_seconds = time.perf_counter() - started
    assert not idle.run_requests and idle.cursor == cursor
    assert {op for op, _ in CALLS} == {"ListObjectsV2"}  # the seen set is not read
    print(f"\n10,000 seen, nothing new: tick {idle_seconds:.2f} s")  # noqa: T201 (pytest -s)

    # One new object and one overwritten old one among them: found, the rest untouched.
    store.put(f"{INBOX}bulk/00017.json", doc("bulk-00017", text="changed"))
    store.put(f"{INBOX}zz-new.json", doc("zz-new"))
    started = time.perf_counter()
    busy = tick(instance, s3, idle.cursor)
    busy_seconds = time.perf_counter() - started
    assert set(requested(busy)) == {"bulk-00017", "zz-new"}
    seen_size = store.head(SEEN_KEY).size
    print(  # noqa: T201
        f"10,000 seen, 2 new: tick {busy_seconds:.2f} s, cursor {len(busy.cursor)} chars,"
        f" seen set {seen_size / 1e3:.0f} kB"
    )
    assert idle_seconds < 20 and busy_seconds < 20
    assert len(busy.cursor) < 300
    assert SeenSet.load(store).committed(json.loads(busy.cursor)["generation"]) == {
        **seen,
        f"{INBOX}bulk/00017.json": md5_etag(doc("bulk-00017", text="changed")),
        f"{INBOX}zz-new.json": md5_etag(doc("zz-new")),
    }


def test_a_burst_of_250_is_handled_in_batches_without_skipping_any(
    s3: InstrumentedS3Storage, instance: DagsterInstance
) -> None:
    store = s3.get_store()
    dropped = {f"{INBOX}burst/{i:03d}.json": doc(f"burst-{i:03d}") for i in range(250)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: store.put(*kv), dropped.items()))

    cursor, run_keys, timings = None, [], []
    for _ in range(4):
        started = time.perf_counter()
        result = tick(instance, s3, cursor)
        timings.append(time.perf_counter() - started)
        run_keys += [r.run_key for r in result.run_requests or []]
        cursor = result.cursor
    print("\n250 new, batches of 100: ticks", ", ".join(f"{t:.2f} s" for t in timings))  # noqa: T201
    assert [len(x) for x in [run_keys[:100], run_keys[100:200], run_keys[200:]]] == [100, 100, 50]
    assert len(set(run_keys)) == 250
    assert set(run_keys) == {run_key_for(k, md5_etag(v)) for k, v in dropped.items()}
    assert len(instance.get_dynamic_partitions("scripts")) == 250
    assert listing(store) == {k: md5_etag(v) for k, v in dropped.items()}


# -- settings and definitions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["scripts/incoming", "", "/scripts/", "scripts//in/", "results/", "pipeline/inbox/",
     "scripts/", "scripts/rejected/", "scripts/rejected/x/", "../x/"],
)  # fmt: skip
def test_an_inbox_prefix_that_could_read_the_pipelines_own_objects_is_refused(
    prefix: str,
) -> None:
    with pytest.raises(ConfigurationError, match="SCENE_PIPELINE_INBOX_PREFIX"):
        check_inbox_prefix(prefix)


def test_settings_come_from_the_environment() -> None:
    assert check_inbox_prefix("drops/backend/") == "drops/backend/"
    custom = build_script_inbox_sensor(
        {"SCENE_PIPELINE_INBOX_INTERVAL_SECONDS": "90", "SCENE_PIPELINE_INBOX_MAX_PER_TICK": "5"}
    )
    assert custom.minimum_interval_seconds == 90
    with pytest.raises(ConfigurationError, match="SCENE_PIPELINE_INBOX_MAX_PER_TICK"):
        build_script_inbox_sensor({"SCENE_PIPELINE_INBOX_MAX_PER_TICK": "0"})


def test_the_definitions_run_the_sensor_by_default_on_scene_job(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    from scene_pipeline.definitions import defs

    sensor_def = defs.resolve_sensor_def("script_inbox_sensor")
    assert sensor_def.default_status == DefaultSensorStatus.RUNNING
    assert sensor_def.job_name == "scene_job"
    assert sensor_def.minimum_interval_seconds == 30
    assert sensor_def.description
    assert "storage" in sensor_def.required_resource_keys
    storage = LocalStorageResource(local_dir=str(tmp_path))
    storage.get_store().put(f"{INBOX}one.json", doc("one"))
    with build_sensor_context(
        instance=instance, cursor=None, resources={"storage": storage}
    ) as context:
        result = sensor_def(context)
    assert [r.partition_key for r in result.run_requests] == ["one"]


def test_a_missing_seen_set_is_rebuilt(
    s3: InstrumentedS3Storage, instance: DagsterInstance
) -> None:
    store = s3.get_store()
    store.put(f"{INBOX}a.json", doc("a"))
    first = tick(instance, s3, None)
    # Someone deletes pipeline/inbox/seen.json: the object is handled again, same run key.
    boto3.client("s3", endpoint_url=s3.s3.endpoint_url, region_name="us-east-1").delete_object(
        Bucket=s3.bucket, Key=SEEN_KEY
    )
    store.put(f"{INBOX}b.json", doc("b"))
    second = tick(instance, s3, first.cursor)
    assert requested(second) == {
        **requested(first),
        "b": run_key_for(f"{INBOX}b.json", md5_etag(doc("b"))),
    }
    assert Bucket(store).read_accepted("a") is not None
    assert not tick(instance, s3, second.cursor).run_requests
