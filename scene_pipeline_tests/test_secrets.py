"""No secret leaves the process: not in output, the Dagster instance, or the bucket.

`scene-pipeline run --log-level DEBUG` runs against the fake OpenAI and KLING servers and moto's
S3 with distinctive keys (the OpenAI key deliberately not `sk-`-shaped, so that only a scrub of
the actual key can hide it). Character references are on (the default): each run draws the
characters' portraits, then the scenes with those portraits sent to KLING's multi-image2image.

The first run hits two failure paths: KLING answers 401 once (the client makes a new token and
retries), and OpenAI answers one scene's prompt request with a 401 whose message echoes the
presented key (as OpenAI does), which fails that scene and stops the run's prompt writing: its
error text travels into logs, step metadata, the manifest. The second run redoes the failed
scenes and completes. Then an operator redraws scene 1 with a prompt override and two
candidates, picks the second candidate, and redraws scene 2 while KLING hangs: its task times
out and its journal stays in the bucket.

Then every place a secret could end up is searched for the keys, any JWT made from them
(every token the fake KLING was shown, its parts, and anything shaped like a JWT whose header
decodes), and the signed image URLs of the fake KLING (their `signature=` query strings):
the CLI's stdout and stderr, every event of every run in the instance (serialized whole, so
materialization, output and asset check metadata included), every file under DAGSTER_HOME
(SQLite databases and compute logs, as raw bytes), and every object in the bucket (manifest,
records, portraits, prompts, task journals, operator state, leases, thumbnails, IO-manager
JSON, accepted script) and its key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from pathlib import Path

import boto3
import jwt
import pytest
from dagster import DagsterInstance, serialize_value

from .fakes.kling import FakeKlingServer
from .fakes.openai import FakeOpenAIServer, Fault, unauthorized
from .resilience import CLI, fake_env, run_to_end, script_document, write_script

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

OPENAI_KEY = "oai-test-Vq3ZrT8pLw2Nx7KsQ1"
KLING_ACCESS_KEY = "kling-ak-Hj4Rt9Qw2Lp6Zx8Mn3Bv"
KLING_SECRET_KEY = "kling-sk-Ty7Ui2Op5As8Df3Gh6Jk1Lz0Xc4VbN"
AWS_ACCESS_KEY = "AKIAFAKESECRET7Q2W9X"
AWS_SECRET_KEY = "awsFakeSecret/Zx81Lm29Pq47Rt/Vb65Nc03QwE"
SECRETS = (OPENAI_KEY, KLING_ACCESS_KEY, KLING_SECRET_KEY, AWS_ACCESS_KEY, AWS_SECRET_KEY)
SCRIPT_ID = "secrets"
SCENES = 2
OVERRIDE = "A quiet bus stop at night, a man with glasses under a street lamp, soft rain"
# Anything shaped like a JWT (base64url JSON header starting with `{"`, then a dot).
JWT_LIKE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


def _b64url(segment: bytes) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return b""


def forbidden_in(blob: bytes, tokens: Iterable[str], signatures: Iterable[str]) -> list[str]:
    """What of the secrets, tokens and signed URLs `blob` contains (as short labels)."""
    found = [f"key {s[:8]}..." for s in SECRETS if s.encode() in blob]
    for token in set(tokens):
        header, payload, signature = token.encode().split(b".")
        if token.encode() in blob or payload in blob or signature in blob:
            found.append(f"KLING token {token[:12]}...")
    for match in JWT_LIKE.finditer(blob):
        header = _b64url(match.group().split(b".")[0])
        if b'"alg"' in header:
            found.append(f"JWT {match.group()[:16]!r}")
    for signature in signatures:
        if signature.encode() in blob:
            found.append(f"image URL signature {signature[:8]}...")
    if b"signature=" in blob:
        found.append("a signed URL (signature=)")
    return found


def test_the_detector_finds_keys_tokens_and_signed_urls() -> None:
    token = jwt.encode({"iss": KLING_ACCESS_KEY, "exp": 2, "nbf": 1}, KLING_SECRET_KEY)
    other = jwt.encode({"iss": "someone"}, "another-secret-of-at-least-32-bytes!")
    signature = "ab12" * 16
    assert forbidden_in(b"nothing to see: eyJust text. signed", [token], [signature]) == []
    for blob in (
        f"Bearer {token}".encode(),
        token.split(".")[1].encode(),  # the payload alone names the access key
        f"auth={other}".encode(),  # any JWT, not only the ones the fake saw
        f"/images/x.png?signature={signature}".encode(),
        f"key={OPENAI_KEY}".encode(),
        json.dumps({"secret": AWS_SECRET_KEY}).encode(),
    ):
        assert forbidden_in(blob, [token], [signature]), blob


def test_no_secret_in_output_instance_or_bucket(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    logs = tmp_path / "logs"
    with (
        FakeOpenAIServer(api_key=OPENAI_KEY) as openai,
        FakeKlingServer(
            access_key=KLING_ACCESS_KEY,
            secret_key=KLING_SECRET_KEY,
            task_latency_seconds=0.3,
            concurrency_limit=SCENES,
        ) as kling,
    ):
        env = fake_env(
            openai,
            kling,
            DAGSTER_HOME=str(home),
            S3_BUCKET_NAME=s3_bucket,
            AWS_ENDPOINT_URL=s3_endpoint,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET_KEY,
            KLING_MAX_CONCURRENCY=str(SCENES),
        )
        script = write_script(tmp_path / "script.json", script_document(SCRIPT_ID, SCENES))
        debug = ["--log-level", "DEBUG"]
        run = [CLI, "run", str(script), *debug]
        outputs: dict[str, tuple[int, str, str]] = {}

        # Run 1: the sheet is written, then one scene's prompt request gets a 401 that echoes
        # the key; KLING refuses the first token presented.
        openai.queue("chat", Fault(), unauthorized(OPENAI_KEY))
        kling.fail_next(1004, count=1)
        outputs["run 1"] = run_to_end(run, env, logs, "first")
        manifest_1 = read_manifest(s3_endpoint, s3_bucket)
        # Run 2: the failed scenes again; everything succeeds.
        outputs["run 2"] = run_to_end(run, env, logs, "second")
        # An operator's prompt for scene 1, drawn as two candidates (with its portrait), and
        # a pick of the second one.
        redraw = [CLI, "redraw", SCRIPT_ID, "--scene", "1", *debug]
        override = [*redraw, "--prompt", OVERRIDE, "--candidates", "2"]
        outputs["override"] = run_to_end(override, env, logs, "override")
        outputs["pick"] = run_to_end([CLI, "pick", SCRIPT_ID, "1", "2"], env, logs, "pick")
        manifest_3 = read_manifest(s3_endpoint, s3_bucket)
        # Scene 2 redrawn while KLING hangs: the task times out, its journal stays.
        kling.options.hang_all = True
        outputs["timeout"] = run_to_end(
            [CLI, "redraw", SCRIPT_ID, "--scene", "2", *debug],
            {**env, "KLING_TASK_TIMEOUT_SECONDS": "2"},
            logs,
            "timeout",
        )

    # The failure paths were really taken, and their messages really were written out.
    assert outputs["run 1"][0] == 1, outputs["run 1"][2][-3000:]
    assert manifest_1["status"] in ("partial", "failed")
    errors = [s["error"] for s in manifest_1["scenes"] if s["error"]]
    assert any("API key was not accepted" in e for e in errors), errors
    assert any("API key was not accepted" in e for e in errors if "redacted" in e), errors
    assert kling.answers[(401, 1004)] == 1
    for name in ("run 2", "override", "pick"):
        assert outputs[name][0] == 0, (name, outputs[name][2][-3000:])
    assert "complete" in outputs["run 2"][1]
    scene_1 = next(s for s in manifest_3["scenes"] if s["scene_id"] == "1")
    assert scene_1["prompt_source"] == "override" and scene_1["image_prompt"] == OVERRIDE
    assert len(scene_1["candidates"]) == 2 and scene_1["picked"] == 2
    assert len(scene_1["references"]) == 1
    assert [t.n for t in kling.tasks_of("multi-image2image")].count(2) == 1
    assert outputs["timeout"][0] == 1, outputs["timeout"][2][-3000:]
    assert "timed out" in outputs["timeout"][1]
    # There were tokens and signed URLs to leak.
    assert kling.tokens and kling.tasks_of("generations") and kling.tasks_of("multi-image2image")

    leaks: dict[str, list[str]] = {}

    def check(where: str, blob: bytes) -> None:
        found = forbidden_in(blob, kling.tokens, [t.signature for t in kling.tasks])
        if found:
            leaks[where] = found

    for name, (_, out, err) in outputs.items():
        check(f"{name} stdout", out.encode())
        check(f"{name} stderr", err.encode())
    assert "DEBUG" in outputs["run 1"][2]  # the DEBUG event log really was on stderr

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 4  # run 1, run 2, the override, the timeout (a pick is no run)
        for run_ in runs:
            check(f"run {run_.run_id} record", serialize_value(run_).encode())
            events = instance.all_logs(run_.run_id)
            assert any(e.dagster_event and e.dagster_event.is_step_success for e in events)
            for event in events:
                check(f"event {event.step_key}", serialize_value(event).encode())
    files = [path for path in home.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in files)
    for path in files:
        check(str(path.relative_to(home)), path.read_bytes())

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    objects = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for item in page.get("Contents", [])
    ]
    for prefix in (
        "pipeline/tasks/",  # the timed-out task's journal
        "pipeline/dagster/",
        f"pipeline/operator/{SCRIPT_ID}.json",
        f"pipeline/leases/{SCRIPT_ID}.json",
        f"pipeline/prompts/{SCRIPT_ID}/",
        f"pipeline/thumbnails/{SCRIPT_ID}/",
        f"results/{SCRIPT_ID}/characters/",
    ):
        assert any(key.startswith(prefix) for key in objects), prefix
    assert sum(key.endswith(".png") for key in objects) >= SCENES + 2 + 2  # + portraits
    for key in objects:
        check(f"s3 key {key}", key.encode())
        check(f"s3://{s3_bucket}/{key}", s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())

    assert not leaks, json.dumps(leaks, indent=1)


def read_manifest(endpoint: str, bucket: str) -> dict:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    key = f"results/{SCRIPT_ID}/manifest.json"
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
