"""Sensor scale: the inbox sensor's tick time over a big inbox, on moto's S3 server
(ThreadedMotoServer on 127.0.0.1) and a real (SQLite) Dagster instance, evaluated with
`build_sensor_context` as scene_pipeline_tests/test_sensor.py does.

For each inbox size (1,000 and 10,000 objects already seen):
- idle tick: nothing new (one paginated listing and a digest, 1000 keys per page);
- then 500 new objects at once: the sensor handles at most
  SCENE_PIPELINE_INBOX_MAX_PER_TICK (100) per tick, so it needs several ticks; each tick's
  time and the number of ticks until nothing is left are printed.

"Already seen" objects are written straight into moto's in-process backend (a minute of PUTs
saved) and the seen set and cursor are the ones a sensor leaves after handling them all
(scene_pipeline.sensors.SeenSet / InboxCursor). The 500 new ones are PUT through the S3 API.

    python bench/sensor_scale.py             # 1,000 and 10,000 seen, 500 new
    python bench/sensor_scale.py --quick     # the same (it takes about a minute)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import emit_json, fmt_table, machine_line, stop_on_sigterm, temp_dir

INBOX = "scripts/incoming/"


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


def measure(endpoint: str, bucket: str, seen_count: int, new_count: int) -> dict[str, Any]:
    import boto3
    from dagster import DagsterInstance, SensorResult, build_sensor_context
    from dagster_aws.s3 import S3Resource
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from scene_pipeline.resources.storage import S3StorageResource
    from scene_pipeline.sensors import InboxCursor, SeenSet, build_script_inbox_sensor, seen_digest

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    storage = S3StorageResource(
        bucket=bucket, s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1")
    )
    store = storage.get_store()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(seen_count):
        backend.put_object(bucket, f"{INBOX}seen/{i:05d}.json", doc(f"seen-{i:05d}"))
    listed = {info.key: info.etag for info in store.list(INBOX)}
    assert len(listed) == seen_count, len(listed)
    SeenSet(1, {k: (e, 1) for k, e in listed.items()}).save(store, INBOX)
    cursor: str | None = InboxCursor(
        generation=1, seen=len(listed), digest=seen_digest(listed.items())
    ).to_json()
    sensor_def = build_script_inbox_sensor({})

    with (
        temp_dir("bench-sensor-home-") as home,
        DagsterInstance.local_temp(
            str(home), overrides={"telemetry": {"enabled": False}}
        ) as instance,
    ):

        def tick(cursor: str | None) -> tuple[float, SensorResult]:
            started = time.perf_counter()
            with build_sensor_context(
                instance=instance, cursor=cursor, resources={"storage": storage}
            ) as context:
                result = sensor_def(context)
            elapsed = time.perf_counter() - started
            assert isinstance(result, SensorResult)
            for request in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            return elapsed, result

        idle = []
        for _ in range(3):
            elapsed, result = tick(cursor)
            assert not result.run_requests, "an idle tick asked for runs"
            idle.append(elapsed)
            cursor = result.cursor

        new = {f"{INBOX}new/{i:03d}.json": doc(f"new-{i:03d}") for i in range(new_count)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: store.put(*kv), new.items()))
        busy, runs = [], 0
        while True:
            elapsed, result = tick(cursor)
            cursor = result.cursor
            if not result.run_requests:
                after = elapsed
                break
            busy.append(elapsed)
            runs += len(result.run_requests)
            if len(busy) > 50:
                raise RuntimeError("the sensor does not get through the new objects")
        assert runs == new_count, f"{runs} run requests for {new_count} new objects"
        seen_bytes = store.head("pipeline/inbox/seen.json").size
    return {
        "seen": seen_count,
        "new": new_count,
        "idle_tick_median": statistics.median(idle),
        "idle_ticks": idle,
        "busy_ticks": busy,
        "ticks_needed": len(busy),
        "tick_after": after,
        "cursor_chars": len(cursor or ""),
        "seen_set_bytes": seen_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the default sizes")
    parser.add_argument("--full", action="store_true", help="the default sizes")
    parser.add_argument("--sizes", default="1000,10000", help="objects already seen")
    parser.add_argument("--new", type=int, default=500)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    stop_on_sigterm()

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ):
        os.environ[name] = value
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "SCENE_PIPELINE_INBOX_PREFIX"):
        os.environ.pop(name, None)
    from moto.server import ThreadedMotoServer

    # moto's request log and the sensor's INFO lines would drown the figures.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    print(f"machine: {machine_line()}", flush=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    results = []
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(endpoint, f"bench-sensor-{size}", size, args.new)
            results.append(r)
            print(
                f"{size} seen: idle tick {r['idle_tick_median']:.2f} s (median of 3);"
                f" {args.new} new: {r['ticks_needed']} ticks of"
                f" {', '.join(f'{t:.2f}' for t in r['busy_ticks'])} s, then idle"
                f" {r['tick_after']:.2f} s; cursor {r['cursor_chars']} chars, seen set"
                f" {r['seen_set_bytes'] / 1e3:.0f} kB",
                flush=True,
            )
    finally:
        server.stop()
    print(f"\nsensor ticks ({machine_line()}):")
    print(
        fmt_table(
            ["seen", "idle tick s", "new", "ticks needed", "busy tick s (median / max)"],
            [
                [
                    r["seen"],
                    f"{r['idle_tick_median']:.2f}",
                    r["new"],
                    r["ticks_needed"],
                    f"{statistics.median(r['busy_ticks']):.2f} / {max(r['busy_ticks']):.2f}",
                ]
                for r in results
            ],
        )
    )
    emit_json(
        args.json, {"benchmark": "sensor_scale", "machine": machine_line(), "results": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
