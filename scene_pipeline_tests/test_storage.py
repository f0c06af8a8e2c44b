"""Both storage backends behave the same and hold the contract's keys: whole objects, ETags,
conditional writes that never lose a concurrent change, listings that do not read objects."""

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from pydantic import BaseModel

from scene_pipeline.storage import (
    Bucket,
    Condition,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    layout,
)
from scene_pipeline.storage.local import LocalObjectStore
from scene_pipeline.storage.s3 import S3ObjectStore

KEY = "results/1/manifest.json"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "bucket")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        yield S3ObjectStore(
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"), bucket
        )


# -- whole objects and their ETags ------------------------------------------------------------


def test_put_get_and_overwrite(store: ObjectStore) -> None:
    first = store.put(KEY, b'{"v": 1}', "application/json")
    assert store.get(KEY) == (b'{"v": 1}', first)
    second = store.put(KEY, b'{"v": 22}', "application/json")
    assert store.get(KEY) == (b'{"v": 22}', second)
    assert first != second
    [info] = store.list("results/")
    assert (info.key, info.etag, info.size) == (KEY, second, 9)


def test_s3_etags_are_the_md5_of_the_bytes(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3ObjectStore(
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1"), s3_bucket
    )
    data = b'{"v": 2}'
    assert store.put(KEY, data) == f'"{hashlib.md5(data).hexdigest()}"'


def test_the_local_etag_changes_on_a_rewrite_and_only_then(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    first = store.put(KEY, b"aaaa")
    assert store.get(KEY)[1] == first
    assert [i.etag for i in store.list("results/")] == [first]
    assert store.get(KEY)[1] == first  # reading does not change it
    second = store.put(KEY, b"bbbbb")
    assert second != first
    assert store.get(KEY) == (b"bbbbb", second)
    assert [i.etag for i in store.list("results/")] == [second]
    assert store.get(KEY)[1] == second


def test_a_same_size_rewrite_within_one_clock_tick_still_changes_the_etag(
    tmp_path: Path,
) -> None:
    """Kernels before 6.13 stamp files with a coarse clock (one jiffy, 1-10 ms) and some
    filesystems keep 1-2 s: two rewrites within one tick get the same mtime. os.utime
    reproduces that deterministically."""
    store = LocalObjectStore(tmp_path / "bucket")
    first = store.put(KEY, b'{"n": 10}')
    stamp = os.stat(tmp_path / "bucket" / KEY).st_mtime_ns
    store.put(KEY, b'{"n": 11}', when=Condition(etag=first))  # another writer's change
    os.utime(tmp_path / "bucket" / KEY, ns=(stamp, stamp))  # ... within the same tick
    with pytest.raises(PreconditionFailed):
        store.put(KEY, b'{"n": 11}', when=Condition(etag=first))  # a stale writer must lose


def test_missing_objects(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("results/none.json")
    assert list(store.list("results/")) == []
    store.delete("results/none.json")  # deleting what is not there is not an error


def test_delete_removes_the_object(store: ObjectStore) -> None:
    store.put(KEY, b"{}")
    store.put("results/1/scenes/1/a.png", b"x")
    store.delete(KEY)
    with pytest.raises(ObjectNotFound):
        store.get(KEY)
    assert [i.key for i in store.list("results/")] == ["results/1/scenes/1/a.png"]


def test_listing_is_by_prefix_in_key_order(store: ObjectStore) -> None:
    for key in [
        "results/1/scenes/2/b.png",
        "results/1/manifest.json",
        "results/10/manifest.json",
        "results/1/scenes/10/a.png",
        "scripts/incoming/1.json",
    ]:
        store.put(key, b"x")
    assert [i.key for i in store.list("results/1/")] == [
        "results/1/manifest.json",
        "results/1/scenes/10/a.png",
        "results/1/scenes/2/b.png",
    ]
    # A prefix may end inside a name, as in S3.
    assert [i.key for i in store.list("results/1")] == [
        "results/1/manifest.json",
        "results/1/scenes/10/a.png",
        "results/1/scenes/2/b.png",
        "results/10/manifest.json",
    ]


def test_uri_names_the_backend(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri(KEY)
    if isinstance(store, S3ObjectStore):
        assert uri == f"s3://{store.bucket}/{KEY}"
    else:
        assert uri == (tmp_path / "bucket" / KEY).as_uri()


# -- conditional writes -----------------------------------------------------------------------


def test_create_only_refuses_an_existing_key(store: ObjectStore) -> None:
    etag = store.put(KEY, b"first", when=Condition(absent=True))
    with pytest.raises(PreconditionFailed):
        store.put(KEY, b"second", when=Condition(absent=True))
    assert store.get(KEY) == (b"first", etag)


def test_if_match_refuses_a_changed_object_and_accepts_the_current_one(
    store: ObjectStore,
) -> None:
    read_by_a = store.put(KEY, b'{"by": "nobody"}')
    by_b = store.put(KEY, b'{"by": "b"}', when=Condition(etag=read_by_a))
    with pytest.raises(PreconditionFailed):
        store.put(KEY, b'{"by": "a"}', when=Condition(etag=read_by_a))
    assert store.get(KEY) == (b'{"by": "b"}', by_b)
    # Replacing what is not there is refused too: it was deleted since it was read.
    with pytest.raises(PreconditionFailed):
        store.put("results/1/other.json", b"{}", when=Condition(etag=by_b))
    with pytest.raises(ObjectNotFound):
        store.get("results/1/other.json")


class Counter(BaseModel):
    n: int = 0
    by: list[str] = []


def test_concurrent_read_modify_write_loses_nothing(store: ObjectStore) -> None:
    """Two writers increment one counter with read, change, conditional write, retry: every
    increment of both is in the final object (what operators' picks and the manifest rely
    on)."""
    rounds = 25
    start = threading.Barrier(2)
    lost_races: list[int] = []
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                for attempt in range(200):
                    try:
                        data, etag = store.get(KEY)
                    except ObjectNotFound:
                        data, etag = None, None
                    current = Counter.model_validate_json(data) if data else Counter()
                    changed = Counter(n=current.n + 1, by=[*current.by, name])
                    try:
                        store.put(
                            KEY,
                            changed.model_dump_json().encode(),
                            when=Condition.matching(etag),
                        )
                        break
                    except PreconditionFailed:
                        lost_races.append(attempt)
                else:
                    raise AssertionError("a writer never got through")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    final = Counter.model_validate_json(store.get(KEY)[0])
    assert final.n == 2 * rounds
    assert sorted(final.by) == ["a"] * rounds + ["b"] * rounds


def test_bucket_update_model_applies_every_change_it_reports_done(tmp_path: Path) -> None:
    """`Bucket.update_model` (operator state, leases) under two concurrent writers: every
    update it returned from is in the object; none is silently overwritten."""
    bucket = Bucket(LocalObjectStore(tmp_path / "bucket"))
    start = threading.Barrier(2)
    done: list[str] = []

    def add(name: str) -> Counter:
        def change(current: Counter | None) -> Counter:
            current = current or Counter()
            return Counter(n=current.n + 1, by=[*current.by, name])

        return bucket.update_model(KEY, Counter, change)

    def writer(name: str) -> None:
        start.wait()
        for i in range(20):
            with contextlib.suppress(StorageError):  # "kept changing": not applied, not done
                add(f"{name}{i}")
                done.append(f"{name}{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    counter = bucket.read_model(KEY, Counter)
    assert counter is not None
    assert sorted(counter.by) == sorted(done) and counter.n == len(done)
    assert len(done) >= 30  # most got through: the loop retries lost races


# -- S3 specifics -----------------------------------------------------------------------------


def test_s3_listing_follows_pages(s3_endpoint: str, s3_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    store = S3ObjectStore(client, s3_bucket)
    for i in range(1005):
        client.put_object(Bucket=s3_bucket, Key=f"pipeline/x/{i:05d}", Body=b"")
    assert len(list(store.list("pipeline/x/"))) == 1005


def test_s3_errors_name_the_key_not_the_credentials(s3_endpoint: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIASECRETSECRET",
        aws_secret_access_key="topsecret",
    )
    store = S3ObjectStore(client, "no-such-bucket")
    with pytest.raises(StorageError) as caught:
        store.put(KEY, b"{}")
    message = str(caught.value)
    assert f"s3://no-such-bucket/{KEY}" in message
    assert "topsecret" not in message and "AKIASECRET" not in message


# -- the local folder -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a/./b", "a/..", ""]
)
def test_the_local_folder_never_leaves_its_root(tmp_path: Path, key: str) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    with pytest.raises(StorageError):
        store.put(key, b"x")
    with pytest.raises(StorageError):
        store.get(key)
    assert not (tmp_path / "x").exists()


def test_the_local_folder_hides_unfinished_writes_and_its_lock(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    store.put(KEY, b"{}", when=Condition(absent=True))  # a conditional write creates the lock file
    (tmp_path / "bucket" / "results" / "1" / ".tmp-abandoned").write_bytes(b"half")
    assert [i.key for i in store.list("")] == [KEY]


def _many_files(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / "results" / "big" / "scenes" / f"{i % 100:03d}"
        if i < 100:
            folder.mkdir(parents=True)
        fd = os.open(folder / f"{i:05d}.png", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"png")
        os.close(fd)


def test_the_local_folder_lists_ten_thousand_objects_without_opening_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "bucket"
    _many_files(root, 10_000)
    store = LocalObjectStore(root)
    opened: list[object] = []

    def no_open(path: object, *args: object, **kwargs: object) -> None:
        opened.append(path)
        raise AssertionError(f"the listing opened {path}")

    with monkeypatch.context() as patched:
        patched.setattr("builtins.open", no_open)
        patched.setattr("io.open", no_open)
        patched.setattr("os.open", no_open)
        found = list(store.list("results/big/"))
    assert opened == []
    assert len(found) == 10_000
    assert found[0].key == "results/big/scenes/000/00000.png" and found[0].size == 3
    assert [i.key for i in found] == sorted(i.key for i in found)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_the_local_folder_lists_files_it_cannot_read(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    for i in range(3):
        store.put(f"results/1/scenes/{i}/a.png", b"png")
        (tmp_path / "bucket" / f"results/1/scenes/{i}/a.png").chmod(0)
    assert len(list(store.list("results/1/"))) == 3
    with pytest.raises(StorageError):
        store.get("results/1/scenes/0/a.png")


# -- keys -------------------------------------------------------------------------------------


def test_layout_keys_match_the_contract() -> None:
    generation = "20261125T031140123Z-5f0c1e9a2b3c4d5e-3fc17d03"
    assert layout.manifest_key("4711") == "results/4711/manifest.json"
    assert (
        layout.generation_key("4711", ("scenes", "3"), generation, ".png")
        == f"results/4711/scenes/3/{generation}.png"
    )
    assert layout.image_keys("4711", ("scenes", "3"), generation, 1) == [
        f"results/4711/scenes/3/{generation}.png"
    ]
    assert layout.image_keys("4711", ("characters", "char-ab12"), generation, 3) == [
        f"results/4711/characters/char-ab12/{generation}-{k}.png" for k in (1, 2, 3)
    ]
    assert (
        layout.rejected_key("scripts/incoming/team/a.json", "scripts/incoming/")
        == "scripts/rejected/team/a.json.error.json"
    )
    for bad in ["../1", "a/b", "", "x" * 65]:
        with pytest.raises(layout.UnsafeKeyError):
            layout.manifest_key(bad)
    with pytest.raises(layout.UnsafeKeyError):
        layout.generation_key("4711", ("scenes", "../3"), generation, ".png")
    with pytest.raises(layout.UnsafeKeyError):
        layout.generation_key("4711", ("other", "3"), generation, ".png")


def test_generation_keys_parse_back_to_subject_generation_and_candidate() -> None:
    generation = "20261125T031140123Z-5f0c1e9a2b3c4d5e-3fc17d03"
    prefix = layout.subjects_prefix("4711", "scenes")
    for suffix in (".png", ".json", "-2.png"):
        key = layout.generation_key("4711", ("scenes", "3-key"), generation, suffix)
        assert layout.parse_generation_key(key, prefix) == ("3-key", generation, suffix)
    assert layout.parse_generation_key(f"{prefix}3/notes.txt", prefix) is None
    assert layout.parse_generation_key(f"{prefix}3/not-a-generation.png", prefix) is None
    assert layout.parse_generation_key("results/other/scenes/3/x.png", prefix) is None


def test_bucket_lists_generations_with_their_candidates_and_skips_unfinished_ones(
    tmp_path: Path,
) -> None:
    bucket = Bucket(LocalObjectStore(tmp_path / "bucket"))
    done = "20261125T031140123Z-aaaa-11111111"
    several = "20261125T041140123Z-bbbb-22222222"
    unfinished = "20261125T051140123Z-cccc-33333333"
    for generation, suffixes in [
        (done, [".png", ".json"]),
        (several, ["-1.png", "-2.png", ".json"]),
        (unfinished, [".png"]),  # its record was never written
    ]:
        for suffix in suffixes:
            bucket.write_bytes(
                layout.generation_key("4711", ("scenes", "1"), generation, suffix), b"x", "x"
            )
    [first, second] = bucket.list_generations("4711", "scenes")["1"]
    assert (first.generation, first.content_hash, len(first.image_keys)) == (done, "aaaa", 1)
    assert second.generation == several and second.image_keys == tuple(
        layout.image_keys("4711", ("scenes", "1"), several, 2)
    )
