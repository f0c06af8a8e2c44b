"""Run every benchmark in its quick mode, one after the other, and print a summary table of
the ratios measured in this run (absolute times are not comparable between runs).

    python bench/run_all.py               # quick mode, about 10 minutes on 2 cores
    python bench/run_all.py --full        # every benchmark's full mode (about an hour)
    python bench/run_all.py --only throughput,sensor_scale

Each benchmark runs as its own process (`python bench/<name>.py --quick --json ...`); its
output is shown as it comes. Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH, fmt_table, machine_line, stop_on_sigterm

BENCHMARKS = ("throughput", "many_scripts", "sensor_scale", "memory")


def summary_rows(name: str, data: dict[str, Any]) -> list[list[str]]:
    if name == "throughput":
        return [
            [
                f"throughput N={r['scenes']} C={r['limit']} L={r['latency']:g}s",
                f"wall {r['wall']:.1f} s / (ceil(N/C)*L {r['bound_waves']:.0f} s + fixed"
                f" {r['fixed']:.1f} s)",
                f"{r['ratio']:.2f}",
                f"{r['overhead_per_scene']:.2f} s/scene over the bound; max in flight"
                f" {r['max_in_flight']}/{r['limit']}",
            ]
            for r in data["results"]
        ]
    if name == "many_scripts":
        r = data
        return [
            [
                f"many scripts {r['scripts']}x{r['scenes_per_script']} C={r['limit']}"
                f" L={r['latency']:g}s",
                f"wall {r['wall']:.1f} s / ceil({r['scripts'] * r['scenes_per_script']}/C)*L"
                f" {r['bound']:.0f} s",
                f"{r['ratio']:.2f}",
                f"{r['complete']}/{r['scripts']} complete; max in flight"
                f" {r['max_in_flight']}/{r['limit']}",
            ]
        ]
    if name == "sensor_scale":
        return [
            [
                f"sensor {r['seen']} seen + {r['new']} new",
                f"idle tick {r['idle_tick_median']:.2f} s",
                f"{r['ticks_needed']} ticks",
                "busy ticks " + ", ".join(f"{t:.1f}" for t in r["busy_ticks"]) + " s",
            ]
            for r in data["results"]
        ]
    if name == "memory":
        r = data
        step = r["kinds"].get("step", {})
        return [
            [
                f"memory {r['scenes']} scenes",
                f"summed PSS peak {r['peak_total_pss_mb']:.0f} MB"
                f" (RSS {r['peak_total_rss_mb']:.0f})",
                f"{r['peak_processes']} procs",
                f"CLI {r['kinds'].get('cli', {}).get('max_hwm_mb', 0):.0f} MB, step max"
                f" {step.get('max_hwm_mb', 0):.0f} MB",
            ]
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full mode of every benchmark")
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    names = [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]

    print(f"machine before: {machine_line()}", flush=True)
    rows: list[list[str]] = []
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            command = [
                sys.executable,
                str(BENCH / f"{name}.py"),
                "--full" if args.full else "--quick",
            ]
            print(f"\n### {name}: {' '.join(command[1:])}", flush=True)
            t0 = time.perf_counter()
            child = subprocess.Popen([*command, "--json", str(out)], cwd=BENCH.parent)
            try:
                returncode = child.wait()
            except BaseException:
                # Let the benchmark stop its servers and remove its folders, then go.
                child.terminate()
                child.wait(timeout=60)
                raise
            print(f"### {name}: {time.perf_counter() - t0:.0f} s, exit {returncode}")
            if returncode != 0 or not out.exists():
                failed.append(name)
                rows.append([name, "FAILED", "-", f"exit {returncode}"])
                continue
            rows += summary_rows(name, json.loads(out.read_text()))
    print(f"\nsummary ({time.perf_counter() - started:.0f} s; machine after: {machine_line()})")
    print(fmt_table(["benchmark", "measured", "ratio", "notes"], rows))
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
