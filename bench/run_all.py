"""Run every benchmark, one after the other, and print one table of the issue's targets: each
target, its bound, what this run measured and pass/FAIL (figures measured in this run, with the
machine's size and load average before and after).

    python bench/run_all.py                 # --quick: the target cases (about 10 minutes on 2
                                            # idle cores)
    python bench/run_all.py --full          # every benchmark's full mode
    python bench/run_all.py --smoke         # small cases (N, L smaller): checks that every
                                            # script works end to end, not the targets
    python bench/run_all.py --only throughput,rerun

Each benchmark runs as its own process (`python bench/<name>.py --quick --json ...`); its
output is shown as it comes. Exit status 0 when every target is met, 1 otherwise (or when a
benchmark failed to measure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, fmt_table, machine_line, stop_on_sigterm

# name -> the arguments of its --smoke case
BENCHMARKS: dict[str, list[str]] = {
    "throughput": ["--scenes", "8", "--latency", "2"],
    "rerun": ["--scenes", "8", "--latency", "2"],
    "many_scripts": ["--scripts", "4", "--scenes", "3", "--latency", "2"],
    "memory": ["--scenes", "30"],
    "sensor_scale": ["--new", "100", "--seen", "2000"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the target cases (default)")
    mode.add_argument("--full", action="store_true", help="every benchmark's full mode")
    mode.add_argument("--smoke", action="store_true", help="small cases, not the targets")
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    stop_on_sigterm()
    wanted = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(wanted) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    before = machine_line()
    print(f"machine before: {before}", flush=True)
    rows: list[list[str]] = []
    ok = True
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        for name in (n for n in BENCHMARKS if n in wanted):
            out = Path(tmp) / f"{name}.json"
            mode_args = BENCHMARKS[name] if args.smoke else ["--full" if args.full else "--quick"]
            command = [sys.executable, str(BENCH / f"{name}.py"), *mode_args, "--json", str(out)]
            print(f"\n### {name}: {' '.join(command[1:-2])}", flush=True)
            t0 = time.perf_counter()
            child = subprocess.Popen(command, cwd=BENCH.parent)
            try:
                returncode = child.wait()
            except BaseException:
                # Let the benchmark stop its servers and remove its folders, then go.
                child.terminate()
                child.wait(timeout=60)
                raise
            print(f"### {name}: {time.perf_counter() - t0:.0f} s, exit {returncode}", flush=True)
            if not out.exists():
                ok = False
                rows.append([name, "-", f"no result (exit {returncode})", "FAIL"])
                continue
            for target in json.loads(out.read_text())["targets"]:
                ok = ok and target["passed"]
                verdict = "pass" if target["passed"] else "FAIL"
                rows.append([target["name"], target["bound"], target["measured"], verdict])
    print(
        f"\nsummary ({'smoke: not the target cases; ' if args.smoke else ''}"
        f"{time.perf_counter() - started:.0f} s)\nmachine before: {before}\nmachine after: "
        f"{machine_line()}"
    )
    print(fmt_table(["target", "bound", "measured", "verdict"], rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
