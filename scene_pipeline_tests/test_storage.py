"""Both storage backends behave the same and hold the contract's keys."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from scene_pipeline.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    layout,
)


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


def test_put_get_head_and_overwrite(store: ObjectStore) -> None:
    store.put("results/1/manifest.json", b'{"v": 1}', "application/json")
    first = store.head("results/1/manifest.json")
    store.put("results/1/manifest.json", b'{"v": 2}', "application/json")
    second = store.head("results/1/manifest.json")
    assert store.get("results/1/manifest.json") == b'{"v": 2}'
    assert first and second and first.etag != second.etag and second.size == 8
    # Both backends report S3's ETag: the quoted MD5 of a single-part object.
    md5 = hashlib.md5(b'{"v": 2}').hexdigest()
    assert second.etag == f'"{md5}"'


def test_missing_objects(store: ObjectStore) -> None:
    assert store.head("results/none.json") is None
    with pytest.raises(ObjectNotFound):
        store.get("results/none.json")
    assert list(store.list("results/")) == []


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


def test_uri_names_the_backend(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri("results/1/manifest.json")
    if isinstance(store, S3ObjectStore):
        assert uri == f"s3://{store.bucket}/results/1/manifest.json"
    else:
        assert uri == (tmp_path / "bucket" / "results/1/manifest.json").as_uri()


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
        store.put("results/1/manifest.json", b"{}")
    message = str(caught.value)
    assert "s3://no-such-bucket/results/1/manifest.json" in message
    assert "topsecret" not in message and "AKIASECRET" not in message


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a/./b", "a/.."]
)
def test_the_local_folder_never_leaves_its_root(tmp_path: Path, key: str) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    with pytest.raises(StorageError):
        store.put(key, b"x")
    assert not (tmp_path / "x").exists()


def test_the_local_folder_hides_unfinished_writes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    store.put("results/1/manifest.json", b"{}")
    (tmp_path / "bucket" / "results" / "1" / ".tmp-abandoned").write_bytes(b"half")
    assert [i.key for i in store.list("results/")] == ["results/1/manifest.json"]


def test_layout_keys_match_the_contract() -> None:
    assert layout.manifest_key("4711") == "results/4711/manifest.json"
    assert (
        layout.generation_key("4711", "3", "20261125T031140Z-5f0c1e9a", ".png")
        == "results/4711/scenes/3/20261125T031140Z-5f0c1e9a.png"
    )
    assert (
        layout.rejected_key("scripts/incoming/team/a.json", "scripts/incoming/")
        == "scripts/rejected/team/a.json.error.json"
    )
    for bad in ["../1", "a/b", "", "x" * 65]:
        with pytest.raises(layout.UnsafeKeyError):
            layout.manifest_key(bad)
