"""Many scripts: S scripts of M scenes dropped into the inbox at once; the Dagster daemon (the
inbox sensor, the run queue, the kling pool) does the work against the fake KLING and the fake
OpenAI.

`dagster-daemon run -m scene_pipeline.definitions` with a temporary DAGSTER_HOME whose
dagster.yaml sets the kling pool limit C and a run queue limit R, local storage
(SCENE_PIPELINE_LOCAL_DIR) and a 2 s sensor interval (SCENE_PIPELINE_INBOX_INTERVAL_SECONDS).
The S script files are written under scripts/incoming/ at once; the benchmark waits until all
S manifests are complete (bounded), then prints the wall time from the drop against the
account bound ceil(S*M/C)*L and the most KLING tasks in flight (asserted <= C).

    python bench/many_scripts.py            # --quick: 10 x 5 scenes, C=4, L=2 s
    python bench/many_scripts.py --full     # 20 x 10 scenes, C=4, L=4 s (15+ min on 2 cores)
    python bench/many_scripts.py --scripts 20 --scenes 10   # the issue's case with L=2 s

--quick is scaled down because every run costs a run worker, a forkserver and two step
processes per scene: on 2 shared cores 20 x 10 scenes took over 6 minutes for 8 scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    ProcessTreeSampler,
    account_bound,
    emit_json,
    fake_providers,
    kill_group,
    machine_line,
    provider_env,
    script_document,
    stop_on_sigterm,
    temp_dir,
    write_dagster_yaml,
)

DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
INBOX = "scripts/incoming/"


def manifests(storage: Path, ids: list[str]) -> dict[str, str]:
    """script id -> manifest status, for the scripts that have a manifest."""
    out = {}
    for script_id in ids:
        path = storage / "results" / script_id / "manifest.json"
        try:
            out[script_id] = json.loads(path.read_text())["status"]
        except (OSError, ValueError, KeyError):
            continue
    return out


def run_stats(home: Path) -> dict[str, Any]:
    """Runs of the instance: count, statuses, queue wait (enqueued -> start) and run time."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
    waits, spans, statuses = [], [], {}
    for record in records:
        statuses[record.dagster_run.status.value] = (
            statuses.get(record.dagster_run.status.value, 0) + 1
        )
        if record.start_time and record.create_timestamp:
            waits.append(record.start_time - record.create_timestamp.timestamp())
        if record.start_time and record.end_time:
            spans.append(record.end_time - record.start_time)
    waits.sort()
    spans.sort()
    return {
        "runs": len(records),
        "statuses": statuses,
        "median_queue_wait": waits[len(waits) // 2] if waits else None,
        "max_queue_wait": max(waits) if waits else None,
        "median_run_time": spans[len(spans) // 2] if spans else None,
    }


def measure(
    scripts: int, scenes: int, limit: int, latency: float, max_runs: int, timeout: float
) -> dict[str, Any]:
    ids = [f"many-{i:02d}" for i in range(scripts)]
    with temp_dir("bench-many-") as tmp, fake_providers(latency, limit) as (kling, openai):
        home, storage = tmp / "dagster_home", tmp / "storage"
        write_dagster_yaml(home, limit, max_concurrent_runs=max_runs)
        env = provider_env(
            kling,
            openai,
            storage,
            limit,
            0.25,
            dagster_home=home,
            SCENE_PIPELINE_INBOX_INTERVAL_SECONDS="2",
        )
        log = (tmp / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [DAEMON, "run", "-m", "scene_pipeline.definitions", "--log-level", "warning"],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        seen_pids: set[int] = set()
        try:
            # Let the daemon load the code location and run a first (empty) sensor tick.
            time.sleep(15)
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited: {(tmp / 'daemon.log').read_text()}")
            inbox = storage / INBOX
            inbox.mkdir(parents=True, exist_ok=True)
            staged = tmp / "staged"
            staged.mkdir()
            for script_id in ids:
                document = script_document(script_id, scenes)
                (staged / f"{script_id}.json").write_text(json.dumps(document, ensure_ascii=False))
            started = time.perf_counter()
            for path in staged.iterdir():  # a rename each: the sensor never sees half a file
                os.replace(path, inbox / path.name)
            status: dict[str, str] = {}
            first_complete = None
            with ProcessTreeSampler(daemon.pid, interval=1.0, pss=False) as sampler:
                while time.perf_counter() - started < timeout:
                    status = manifests(storage, ids)
                    done = sum(1 for s in status.values() if s == "complete")
                    if done and first_complete is None:
                        first_complete = time.perf_counter() - started
                    if done == scripts:
                        break
                    if daemon.poll() is not None:
                        raise RuntimeError("dagster-daemon exited during the benchmark")
                    time.sleep(1)
                    seen_pids.update(sampler.result.hwm)
            wall = time.perf_counter() - started
            seen_pids.update(sampler.result.hwm)
        finally:
            kill_group(daemon, grace=10)
            _kill_leftovers(seen_pids, daemon.pid)
            log.close()
        complete = sum(1 for s in status.values() if s == "complete")
        tasks, max_in_flight = len(kling.tasks), kling.max_in_flight
        stats = run_stats(home)
    if max_in_flight > limit:
        raise AssertionError(f"KLING tasks in flight {max_in_flight} > limit {limit}")
    bound = account_bound(scripts * scenes, limit, latency)
    return {
        "scripts": scripts,
        "scenes_per_script": scenes,
        "limit": limit,
        "latency": latency,
        "max_concurrent_runs": max_runs,
        "complete": complete,
        "timed_out": complete < scripts,
        "wall": wall,
        "first_manifest": first_complete,
        "bound": bound,
        "ratio": wall / bound,
        "kling_tasks": tasks,
        "max_in_flight": max_in_flight,
        "peak_processes": sampler.result.peak_processes,
        "peak_rss_mb": sampler.result.peak_total_rss_kb / 1024,
        **stats,
    }


def _kill_leftovers(pids: set[int], root: int) -> None:
    """Processes of the daemon's tree that left its process group (none expected)."""
    for pid in pids - {root}:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="10 x 5 scenes, L = 2 s (default)")
    mode.add_argument("--full", action="store_true", help="20 x 10 scenes, L = 4 s")
    parser.add_argument("--scripts", type=int, help="default 10 quick, 20 full")
    parser.add_argument("--scenes", type=int, help="scenes per script: default 5 quick, 10 full")
    parser.add_argument("--limit", type=int, default=4, help="C: kling pool / account limit")
    parser.add_argument("--latency", type=float, help="L (default 2 quick, 4 full)")
    parser.add_argument("--max-runs", type=int, default=4, help="run queue limit")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    latency = args.latency or (4.0 if args.full else 2.0)
    args.scripts = args.scripts or (20 if args.full else 10)
    args.scenes = args.scenes or (10 if args.full else 5)

    print(f"machine: {machine_line()}")
    print(
        f"{args.scripts} scripts x {args.scenes} scenes into the inbox at once; C={args.limit},"
        f" L={latency:g} s, at most {args.max_runs} runs at once, sensor interval 2 s",
        flush=True,
    )
    r = measure(args.scripts, args.scenes, args.limit, latency, args.max_runs, args.timeout)
    print(
        f"{r['complete']}/{r['scripts']} manifests complete"
        + (" (TIMED OUT)" if r["timed_out"] else "")
        + f" after {r['wall']:.1f} s (first after {r['first_manifest'] or float('nan'):.1f} s);"
        f" account bound ceil({r['scripts'] * r['scenes_per_script']}/{r['limit']})"
        f" x {latency:g} = {r['bound']:.0f} s; ratio {r['ratio']:.2f}"
    )
    print(
        f"KLING: {r['kling_tasks']} tasks, max in flight {r['max_in_flight']} (limit"
        f" {r['limit']}: never exceeded)"
    )
    print(
        f"runs: {r['runs']} {r['statuses']}, queue wait median {r['median_queue_wait'] or 0:.1f} s"
        f" (max {r['max_queue_wait'] or 0:.1f} s), run time median"
        f" {r['median_run_time'] or 0:.1f} s; peak {r['peak_processes']} processes,"
        f" {r['peak_rss_mb']:.0f} MB RSS summed"
    )
    print(f"machine after: {machine_line()}")
    emit_json(args.json, {"benchmark": "many_scripts", "machine": machine_line(), **r})
    return 0 if not r["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
