"""Shared fixtures: example scripts, an S3 endpoint (moto's server on 127.0.0.1), a clean env."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from scene_pipeline.settings import variable_names

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SAMPLE = REPO.parent / "shared" / "samples" / "strange_oldman.json"

# Every variable the code reads (the settings model's list, so a new setting is cleared the
# day it is added), plus Dagster's home: a developer's exported values never leak in.
PIPELINE_ENV = (*variable_names(), "DAGSTER_HOME")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long end-to-end tests first. pytest-xdist hands tests out in this order, one at a
    time (`--maxschedchunk 1` in pyproject.toml; its default hands each worker a quarter of
    its share at once, which gave one worker every long test): a long test never starts last
    on one worker while the other has nothing left to do."""
    items.sort(
        key=lambda item: (
            not (item.get_closest_marker("slow") or item.get_closest_marker("postgres"))
        )
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PIPELINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture
def sample_path() -> Path:
    if not SAMPLE.exists():
        pytest.skip("../shared/samples/strange_oldman.json is not next to this checkout")
    return SAMPLE


@pytest.fixture
def rooftop_cat() -> dict:
    return json.loads((EXAMPLES / "rooftop_cat.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on a free 127.0.0.1 port, for boto3 and dagster-aws."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket per test."""
    name = (
        "sp-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name
