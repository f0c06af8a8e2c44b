"""Sensor intake: the inbox sensor (`script_inbox_sensor`, evaluated with `build_sensor_context`
on a real Dagster instance, tick after tick with the cursor each tick returns, its resources
built anew for every tick as the daemon does) over a big inbox.

- Catch-up: N new valid scripts PUT into an empty inbox on moto's S3 server (in a process of
  its own on 127.0.0.1, so that it does not share this process's GIL with the sensor, as a
  real S3 would not); ticks until every object has its run request. Target: N /
  (the ticks' summed time) >= 30 objects/s on a quiet machine.
- Idle tick: 10,000 objects already seen (the seen set and cursor are the ones the sensor
  leaves after handling them, `core.inbox_state`), nothing new: the time of one tick (median
  of 3). Target < 1 s on the local folder backend; measured on moto too.

Objects already seen are written into the folder, or straight into moto's backend, before the
clock starts. Storage settings come from `Settings.from_env` (local:
SCENE_PIPELINE_LOCAL_DIR; S3: S3_BUCKET_NAME, AWS_ENDPOINT_URL); providers are the offline ones
(the sensor only reads their identities). SCENE_PIPELINE_INBOX_MAX_PER_TICK and
SCENE_PIPELINE_INBOX_TICK_SECONDS keep their defaults (500 objects, 20 s per tick).

    python bench/sensor_scale.py            # --quick: N = 500, 10,000 seen (about 2 minutes)
    python bench/sensor_scale.py --full     # N = 2,000
    python bench/sensor_scale.py --new 100 --seen 2000   # a smoke test
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from _common import (
    INBOX,
    Target,
    base_env,
    bench_parser,
    finish,
    fmt_table,
    kill_group,
    machine_line,
    stop_on_sigterm,
    temp_dir,
)

TARGET_RATE, TARGET_IDLE = 30.0, 1.0
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def doc(script_id: str) -> bytes:
    return json.dumps(
        {
            "script_metadata": {"script_id": script_id, "title": f"title of {script_id}"},
            "scenes": [
                {
                    "scene_id": 1,
                    "audios": [
                        {"type": "narration", "character": "narration", "text": "버스를 탔다."}
                    ],
                }
            ],
        },
        ensure_ascii=False,
    ).encode()


@dataclass
class Moto:
    """moto's S3 server in a process of its own (see `serve_moto`)."""

    proc: subprocess.Popen
    endpoint: str

    def seed(self, bucket: str, count: int) -> None:
        """`count` objects under {INBOX}seen/ of `bucket`, written straight into moto's backend."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"seed {bucket} {count}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "done":
            raise RuntimeError(f"moto server: {answer!r}")


@contextmanager
def moto_server() -> Iterator[Moto]:
    """Start `serve_moto` (this file with --serve-moto) and stop it at the end."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-moto"],
        env=base_env(**AWS),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"the moto server did not start: {ready!r}")
        yield Moto(proc, f"http://127.0.0.1:{ready[1]}")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_group(proc, grace=5)


def serve_moto() -> int:
    """The moto process: ThreadedMotoServer on a free 127.0.0.1 port ("ready PORT" on stdout),
    then one command per stdin line, "seed BUCKET COUNT" (answered "done"), until stdin
    closes."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        print(f"ready {server.get_host_and_port()[1]}", flush=True)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for line in sys.stdin:
            _, bucket, count = line.split()
            for i in range(int(count)):
                backend.put_object(bucket, f"{INBOX}seen/{i:05d}.json", doc(f"seen-{i:05d}"))
            print("done", flush=True)
    finally:
        server.stop()
    return 0


class Sensor:
    """The inbox sensor of the given storage settings, evaluated tick after tick."""

    def __init__(self, instance: Any, env: dict[str, str]) -> None:
        from scene_pipeline.jobs import build_scene_job
        from scene_pipeline.sensors import build_script_inbox_sensor
        from scene_pipeline.settings import Settings

        self.instance = instance
        self.settings = Settings.from_env(env)
        self.definition = build_script_inbox_sensor(
            self.settings, build_scene_job(self.settings.kling_max_concurrency)
        )
        self.cursor: str | None = None

    def bucket(self) -> Any:
        from scene_pipeline.storage.factory import open_bucket

        return open_bucket(self.settings)

    def tick(self) -> tuple[float, int]:
        """(seconds, run requests) of one tick; the cursor moves on."""
        from dagster import SensorResult, build_sensor_context

        from scene_pipeline.wiring import build_resources

        started = time.perf_counter()
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources=build_resources(self.settings),
        ) as context:
            result = self.definition(context)
        elapsed = time.perf_counter() - started
        assert isinstance(result, SensorResult), result
        self.cursor = result.cursor
        return elapsed, len(result.run_requests or [])


def put_all(bucket: Any, objects: dict[str, bytes]) -> None:
    """Write the objects through the bucket (16 threads)."""
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda kv: bucket.write_bytes(kv[0], kv[1], "application/json"), objects.items()
            )
        )


def mark_seen(sensor: Sensor) -> int:
    """The seen set and cursor the sensor leaves once it has handled every inbox object."""
    from scene_pipeline.core.inbox import is_inbox_object
    from scene_pipeline.core.inbox_state import InboxCursor, SeenSet, seen_digest

    bucket, prefix = sensor.bucket(), sensor.settings.inbox_prefix
    listed = {i.key: i.etag for i in bucket.list(prefix) if is_inbox_object(i, prefix)}
    SeenSet(1, {k: (e, 1) for k, e in listed.items()}).save(bucket, prefix)
    sensor.cursor = InboxCursor(
        generation=1, seen=len(listed), digest=seen_digest(listed.items())
    ).to_json()
    return len(listed)


def idle_ticks(sensor: Sensor, seen: int, backend: str, seed: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    seed()
    written = time.perf_counter() - started
    assert mark_seen(sensor) == seen
    ticks = []
    for _ in range(3):
        elapsed, runs = sensor.tick()
        assert runs == 0, f"an idle tick asked for {runs} runs"
        ticks.append(elapsed)
    return {
        "backend": backend,
        "seen": seen,
        "write_seconds": written,
        "idle_ticks": ticks,
        "idle_tick_median": statistics.median(ticks),
    }


def catch_up(sensor: Sensor, new: int) -> dict[str, Any]:
    put_all(sensor.bucket(), {f"{INBOX}new/{i:05d}.json": doc(f"new-{i:05d}") for i in range(new)})
    ticks: list[tuple[float, int]] = []
    runs = 0
    while runs < new:
        if len(ticks) >= 100:
            raise RuntimeError(f"only {runs} of {new} objects handled after 100 ticks")
        elapsed, requested = sensor.tick()
        ticks.append((elapsed, requested))
        runs += requested
    after, extra = sensor.tick()
    assert extra == 0, f"{extra} run requests after the catch-up"
    busy = sum(t for t, _ in ticks)
    return {
        "new": new,
        "ticks": [{"seconds": t, "runs": n} for t, n in ticks],
        "busy_seconds": busy,
        "rate": new / busy,
        "tick_after": after,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--serve-moto"]:
        return serve_moto()
    parser = bench_parser(__doc__, "N = 2,000", portraits_default=None)
    parser.add_argument("--new", type=int, help="N new objects of the catch-up (default 500)")
    parser.add_argument("--seen", type=int, default=10_000, help="objects seen (10,000)")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    new = args.new or (2000 if args.full else 500)

    os.environ.update(AWS)
    os.environ.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(name, None)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    logging.getLogger("scene_pipeline").setLevel(logging.WARNING)
    import boto3
    from dagster import DagsterInstance

    print(f"machine: {machine_line()}", flush=True)
    with (
        temp_dir("bench-sensor-") as tmp,
        moto_server() as moto,
        DagsterInstance.ephemeral() as instance,
    ):
        endpoint = moto.endpoint
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for name in ("bench-catch-up", "bench-idle"):
            s3.create_bucket(Bucket=name)

        def on_s3(bucket: str) -> Sensor:
            return Sensor(
                instance,
                {"S3_BUCKET_NAME": bucket, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"},
            )

        caught = catch_up(on_s3("bench-catch-up"), new)
        print(
            f"catch-up of {new} new objects on moto: {len(caught['ticks'])} tick(s) of "
            + ", ".join(f"{t['seconds']:.1f} s ({t['runs']} runs)" for t in caught["ticks"])
            + f" = {caught['rate']:.0f} objects/s; then an idle tick of"
            f" {caught['tick_after']:.2f} s",
            flush=True,
        )
        local = Sensor(instance, {"SCENE_PIPELINE_LOCAL_DIR": str(tmp / "local")})
        seen = {f"{INBOX}seen/{i:05d}.json": doc(f"seen-{i:05d}") for i in range(args.seen)}
        idle = [
            idle_ticks(local, args.seen, "local folder", lambda: put_all(local.bucket(), seen)),
            idle_ticks(
                on_s3("bench-idle"),
                args.seen,
                "moto S3",
                lambda: moto.seed("bench-idle", args.seen),
            ),
        ]
        for r in idle:
            print(
                f"idle tick over {r['seen']} seen objects, {r['backend']}:"
                f" {r['idle_tick_median']:.2f} s (median of"
                f" {', '.join(f'{t:.2f}' for t in r['idle_ticks'])}; written in"
                f" {r['write_seconds']:.0f} s beforehand)",
                flush=True,
            )
    print(
        fmt_table(
            ["what", "seconds", "per object"],
            [
                [
                    f"catch-up of {new} (moto)",
                    f"{caught['busy_seconds']:.1f}",
                    f"{1000 / caught['rate']:.1f} ms",
                ],
                *[
                    [
                        f"idle tick, {r['seen']} seen ({r['backend']})",
                        f"{r['idle_tick_median']:.2f}",
                        "-",
                    ]
                    for r in idle
                ],
            ],
        )
    )
    local, moto = idle
    targets = [
        Target(
            f"6. sensor catch-up of {new} new objects (moto)",
            f">= {TARGET_RATE:g} objects/s",
            f"{caught['rate']:.0f} objects/s ({len(caught['ticks'])} ticks,"
            f" {caught['busy_seconds']:.1f} s)",
            caught["rate"] >= TARGET_RATE,
        ),
        Target(
            f"6. sensor idle tick, {local['seen']} seen (local folder)",
            f"< {TARGET_IDLE:g} s",
            f"{local['idle_tick_median']:.2f} s",
            local["idle_tick_median"] < TARGET_IDLE,
        ),
        Target(
            f"6. sensor idle tick, {moto['seen']} seen (moto S3; printed, no bound)",
            "-",
            f"{moto['idle_tick_median']:.2f} s",
            True,
        ),
    ]
    return finish("sensor_scale", args.json, targets, catch_up=caught, idle=idle)


if __name__ == "__main__":
    sys.exit(main())
