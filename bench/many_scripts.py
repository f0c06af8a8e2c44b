"""Backfill: S scripts of M scenes dropped into the inbox at once; the Dagster daemon (the inbox
sensor, the run queue, the `kling` pool) does the work against the fake KLING (latency L,
account limit C) and the fake OpenAI.

`dagster-daemon run -m scene_pipeline.definitions` with a temporary DAGSTER_HOME whose
dagster.yaml is the repository's (at most R = 4 runs at once and one per partition, i.e. per
script; no `kling` pool limit: every run sets it from KLING_MAX_CONCURRENCY = C), local storage
and a 2 s sensor interval (SCENE_PIPELINE_INBOX_INTERVAL_SECONDS=2). Once the sensor has ticked
(the code location is loaded), the S script files are moved into scripts/incoming/ at once
(renames: the sensor never sees half a file).

Target (S = 8, M = 6, C = 4, L = 8 s, portraits off): the wall time from the drop to the last
complete manifest (the manifests' `updated_at`) <= 1.5 x ceil(S x M / C) x L; never more than C
KLING tasks in flight: the fake's limit is C, so a submit over it is refused with 429/1303, and
those refusals must be 0. Printed too: the runs' median queue wait (RUN_ENQUEUED ->
RUN_DEQUEUED), launch (-> RUN_START) and run time, the most runs at once and the peak number
of processes under the daemon.

    python bench/many_scripts.py            # --quick (= --full): the target case, ~3 minutes
    python bench/many_scripts.py --scripts 4 --scenes 3 --latency 2   # a smoke test
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    DAEMON,
    INBOX,
    PaidCalls,
    ProcessTreeSampler,
    Target,
    account_bound,
    bench_parser,
    classify,
    fake_providers,
    finish,
    kill_group,
    machine_line,
    median,
    open_instance,
    provider_env,
    read_run_times,
    script_document,
    stop_on_sigterm,
    temp_dir,
    write_dagster_yaml,
)

SCRIPTS, SCENES, LIMIT, LATENCY, MAX_RUNS, INTERVAL = 8, 6, 4, 8.0, 4, 2
TARGET_RATIO = 1.5


@contextmanager
def running_daemon(env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen, Any]]:
    """`dagster-daemon run` in its own process group, its tree sampled every second; the group
    and every process seen in the tree (run workers may leave the group) end on exit."""
    log = (cwd / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [DAEMON, "run", "-m", "scene_pipeline.definitions", "--log-level", "warning"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sampler = ProcessTreeSampler(daemon.pid, interval=1.0, pss=False)
    try:
        with sampler:
            yield daemon, sampler
    finally:
        kill_group(daemon, grace=10)
        for pid, kind in sampler.result.pids.items():
            _kill_if_still(pid, kind)
        log.close()


def _kill_if_still(pid: int, kind: str) -> None:
    """SIGKILL a process seen under the daemon if it is still there (and still that kind of
    process, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if classify(cmdline, "step" if kind == "step" else None) == kind:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for_sensor_tick(home: Path, daemon: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until the inbox sensor has finished a tick (the code location is loaded)."""
    from dagster._core.scheduler.instigation import InstigatorType

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited: {log.read_text()[-3000:]}")
        if (home / "schedules").exists():
            with open_instance(home) as instance:
                for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                    if instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
                        return time.perf_counter() - started
        time.sleep(1)
    raise RuntimeError(f"no sensor tick after {timeout:.0f} s: {log.read_text()[-3000:]}")


def wait_for_runs(home: Path, timeout: float) -> bool:
    """Whether every run of the instance ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open_instance(home) as instance:
            if all(r.is_finished for r in instance.get_runs()):
                return True
        time.sleep(0.5)
    return False


def manifests(storage: Path, ids: list[str]) -> dict[str, tuple[str, float]]:
    """script id -> (manifest status, updated_at as a timestamp), for those with a manifest."""
    out = {}
    for script_id in ids:
        path = storage / "results" / script_id / "manifest.json"
        try:
            value = json.loads(path.read_text())
            updated = datetime.fromisoformat(value["updated_at"]).timestamp()
            out[script_id] = (value["status"], updated)
        except (OSError, ValueError, KeyError):
            continue
    return out


def run_stats(home: Path, dropped_at: float) -> dict[str, Any]:
    """The daemon's runs: queue wait, launch and run time, partitions, most at once."""
    with open_instance(home) as instance:
        runs = instance.get_runs()
    rows = [read_run_times(home, r.run_id) for r in runs]
    waits = [t.starting - t.enqueued for t in rows if t.enqueued and t.starting]
    launches = [t.run_start - t.starting for t in rows if t.starting and t.run_start]
    spans = [(t.run_start, t.run_end) for t in rows if t.run_start and t.run_end]
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return {
        "runs": len(rows),
        "statuses": sorted(r.status.value for r in runs),
        "distinct_partitions": len({r.tags.get("dagster/partition") for r in runs}),
        "failures": [
            f"run {r.run_id[:8]} {m}" for r, t in zip(runs, rows, strict=True) for m in t.failures
        ],
        "first_enqueued_after_drop": min((t.enqueued for t in rows if t.enqueued), default=0)
        - dropped_at,
        "median_queue_wait": median(waits),
        "max_queue_wait": max(waits, default=float("nan")),
        "median_launch": median(launches),
        "median_run_time": median([e - s for s, e in spans]),
        "most_runs_at_once": most,
    }


def measure(
    scripts: int,
    scenes: int,
    limit: int,
    latency: float,
    max_runs: int,
    timeout: float,
    portraits: bool,
) -> dict[str, Any]:
    ids = [f"backfill-{i:02d}" for i in range(scripts)]
    with temp_dir("bench-many-") as tmp, fake_providers(latency, limit) as (kling, openai):
        home, storage = tmp / "dagster_home", tmp / "storage"
        write_dagster_yaml(home, max_concurrent_runs=max_runs)
        env = provider_env(
            kling,
            openai,
            storage,
            limit,
            0.25,
            portraits=portraits,
            dagster_home=home,
            SCENE_PIPELINE_INBOX_INTERVAL_SECONDS=str(INTERVAL),
        )
        staged, inbox = tmp / "staged", storage / INBOX
        staged.mkdir()
        inbox.mkdir(parents=True)
        for script_id in ids:
            document = script_document(script_id, scenes)
            (staged / f"{script_id}.json").write_text(json.dumps(document, ensure_ascii=False))
        with running_daemon(env, tmp) as (daemon, sampler):
            ready = wait_for_sensor_tick(home, daemon, tmp / "daemon.log", timeout=300)
            print(f"daemon up, first sensor tick after {ready:.1f} s; dropping", flush=True)
            dropped_at = time.time()
            for path in sorted(staged.iterdir()):
                os.replace(path, inbox / path.name)
            status: dict[str, tuple[str, float]] = {}
            while time.time() - dropped_at < timeout:
                status = manifests(storage, ids)
                if sum(1 for s, _ in status.values() if s == "complete") == scripts:
                    break
                if daemon.poll() is not None:
                    raise RuntimeError("dagster-daemon exited during the benchmark")
                time.sleep(0.5)
            given_up_at = time.time()
            complete = [t for s, t in status.values() if s == "complete"]
            # The manifest is written before the publish step ends: let the runs finish
            # before the daemon (and the run workers in its process group) is stopped.
            runs_ended = len(complete) == scripts and wait_for_runs(home, timeout=120)
        wall = (max(complete) if len(complete) == scripts else given_up_at) - dropped_at
        paid = PaidCalls.of(kling, openai)
        stats = run_stats(home, dropped_at)
    bound = account_bound(scripts * scenes, limit, latency)
    return {
        "scripts": scripts,
        "scenes_per_script": scenes,
        "limit": limit,
        "latency": latency,
        "portraits": portraits,
        "max_concurrent_runs": max_runs,
        "complete": len(complete),
        "runs_ended": runs_ended,
        "wall": wall,
        "first_manifest": min(complete, default=dropped_at) - dropped_at,
        "bound": bound,
        "ratio": wall / bound,
        "paid": vars(paid),
        "peak_processes": sampler.result.peak_processes,
        "peak_rss_mb": sampler.result.peak_total_rss_kb / 1024,
        "load_after": machine_line(),
        **stats,
    }


def report(r: dict[str, Any]) -> str:
    paid = PaidCalls(**r["paid"])
    total = r["scripts"] * r["scenes_per_script"]
    return "\n".join(
        [
            f"{r['complete']}/{r['scripts']} manifests complete {r['wall']:.1f} s after the drop"
            f" (first after {r['first_manifest']:.1f} s) = {r['ratio']:.2f} x"
            f" ceil({total}/{r['limit']}) x {r['latency']:g} s = {r['bound']:g} s (target <="
            f" {TARGET_RATIO})",
            f"{paid.line(r['limit'])} (expected {total} tasks)",
            f"runs: {r['runs']} ({', '.join(r['statuses'])}), {r['distinct_partitions']}"
            f" partitions, first enqueued {r['first_enqueued_after_drop']:.1f} s after the drop;"
            f" queue wait (enqueued -> starting) median {r['median_queue_wait']:.1f} s"
            f" (max {r['max_queue_wait']:.1f} s),"
            f" launch median {r['median_launch']:.1f} s, run time median"
            f" {r['median_run_time']:.1f} s, at most {r['most_runs_at_once']} runs at once"
            f" (limit {r['max_concurrent_runs']})",
            *(f"FAILED: {m}" for m in r["failures"]),
            *(
                ["NOTE: runs still going 120 s after the last manifest"]
                if r["complete"] == r["scripts"] and not r["runs_ended"]
                else []
            ),
            f"processes under the daemon: at most {r['peak_processes']} at once,"
            f" {r['peak_rss_mb']:.0f} MB RSS summed at the peak",
        ]
    )


def targets_of(r: dict[str, Any]) -> list[Target]:
    paid = PaidCalls(**r["paid"])
    case = (
        f"{r['scripts']}x{r['scenes_per_script']} C={r['limit']} L={r['latency']:g}s"
        f" portraits {'on' if r['portraits'] else 'off'}"
    )
    total = r["scripts"] * r["scenes_per_script"]
    return [
        Target(
            f"4. backfill {case}: drop -> last manifest / bound",
            f"<= {TARGET_RATIO}",
            f"{r['ratio']:.2f} ({r['wall']:.1f} s / {r['bound']:g} s,"
            f" {r['complete']}/{r['scripts']} complete)",
            r["ratio"] <= TARGET_RATIO and r["complete"] == r["scripts"],
        ),
        Target(
            f"4. backfill {case}: KLING over its limit",
            "0 x 429/1303",
            f"{paid.refused_1303} (max in flight {paid.max_in_flight}/{r['limit']},"
            f" {paid.kling_tasks} tasks for {total} scenes)",
            paid.refused_1303 == 0 and paid.max_in_flight <= r["limit"],
        ),
        Target(
            "4. backfill: median queue wait (printed, no bound)",
            "-",
            f"{r['median_queue_wait']:.1f} s",
            True,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "the target case", limit=LIMIT, latency=LATENCY)
    parser.add_argument("--scripts", type=int, default=SCRIPTS, help="S (default 8)")
    parser.add_argument("--scenes", type=int, default=SCENES, help="M per script (default 6)")
    parser.add_argument("--max-runs", type=int, default=MAX_RUNS, help="runs at once (4)")
    parser.add_argument("--timeout", type=float, default=1200, help="give up after (s)")
    args = parser.parse_args(argv)
    stop_on_sigterm()

    print(f"machine: {machine_line()}")
    print(
        f"{args.scripts} scripts x {args.scenes} scenes into the inbox at once; C={args.limit},"
        f" L={args.latency:g} s, at most {args.max_runs} runs at once and one per script,"
        f" sensor interval {INTERVAL} s, portraits {args.portraits}",
        flush=True,
    )
    r = measure(
        args.scripts,
        args.scenes,
        args.limit,
        args.latency,
        args.max_runs,
        args.timeout,
        args.portraits == "on",
    )
    print(report(r))
    print(f"machine after: {r['load_after']}")
    return finish("many_scripts", args.json, targets_of(r), **r)


if __name__ == "__main__":
    sys.exit(main())
