"""Throughput of one script: `scene-pipeline run script.json` (the real CLI, a subprocess,
wall time from its start to its exit) against the fake KLING (latency L per task, account limit
C) and the fake OpenAI, with a temporary DAGSTER_HOME (the repository's dagster.yaml; the run
sets the `kling` pool's limit from KLING_MAX_CONCURRENCY = C).

Target (N = 24, C = 4, L = 8 s, portraits off): wall <= 1.25 x ceil(N/C) x L on an otherwise
idle 2-core machine. With character reference portraits on, the portraits take one more wave
first: bound = (ceil(portraits/C) + ceil(N/C)) x L. ratio = wall / bound.

Printed per case: the wall time and ratio; the phases from the run's event log (CLI start ->
run start -> first render step start -> last render step success -> run end -> CLI exit); per
render step (median and max) spawn, init and body; the share of the C slots busy during the
image phase (first render step start -> last render step success) from the fake KLING's own
task times; KLING tasks, max in flight and 429/1303 refusals; OpenAI chat calls; CPU time of
the run's process tree.

    python bench/throughput.py                        # --quick: the target case, portraits
                                                      # off then on (about 3 minutes)
    python bench/throughput.py --full                 # also N=100 C=8
    python bench/throughput.py --scenes 8 --latency 2 --portraits off   # a smoke test
    python bench/throughput.py --local-compute-logs   # Dagster's default compute log
                                                      # manager (as deployed), for comparison
"""

from __future__ import annotations

import math
import sys
from typing import Any

from _common import (
    RENDER,
    PaidCalls,
    Target,
    account_bound,
    bench_parser,
    cli_phases,
    cli_setup,
    finish,
    kling_slot_share,
    machine_line,
    phases_line,
    read_run_times,
    script_document,
    single_steps_line,
    step_overhead,
    stop_on_sigterm,
)

SCENES, LIMIT, LATENCY, POLL = 24, 4, 8.0, 0.25
TARGET_RATIO = 1.25
FULL_EXTRA = [(100, 8)]


def measure(
    scenes: int,
    limit: int,
    latency: float,
    poll: float,
    portraits: bool,
    local_compute_logs: bool = False,
) -> dict[str, Any]:
    document = script_document(f"bench-n{scenes}", scenes)
    characters = len(document["script_metadata"]["characters"])
    with cli_setup(
        "throughput",
        document,
        latency=latency,
        limit=limit,
        poll=poll,
        portraits=portraits,
        local_compute_logs=local_compute_logs,
    ) as setup:
        run = setup.run()
        run.check("scene-pipeline run")
        assert run.run_id is not None
        paid = setup.paid()
        times = read_run_times(setup.home, run.run_id)
        phases = cli_phases(run, times)
        share = kling_slot_share(
            setup.kling,
            limit,
            phases.get("first_render_start", 0),
            phases.get("last_render_success", 0),
        )
    portrait_waves = math.ceil(characters / limit) if portraits else 0
    bound = account_bound(scenes, limit, latency) + portrait_waves * latency
    render = step_overhead(times, RENDER)
    return {
        "scenes": scenes,
        "limit": limit,
        "latency": latency,
        "poll_interval": poll,
        "portraits": portraits,
        "characters": characters,
        "local_compute_logs": local_compute_logs,
        "wall": run.wall,
        "bound": bound,
        "portrait_waves": portrait_waves,
        "ratio": run.wall / bound,
        "expected_tasks": scenes + (characters if portraits else 0),
        "paid": vars(paid),
        "phases": phases,
        "slot_share": share,
        "render_step": vars(render),
        "single_steps": single_steps_line(times),
        "render_body_minus_latency": render.body[0] - latency,
        "in_process": times.in_process,
        "failures": times.failures,
        "cpu": run.cpu,
        "load_after": machine_line(),
        "_render": render,  # for report(), not written
    }


def case_name(r: dict[str, Any]) -> str:
    return (
        f"N={r['scenes']} C={r['limit']} L={r['latency']:g}s portraits"
        f" {'on' if r['portraits'] else 'off'}"
    )


def report(r: dict[str, Any]) -> str:
    paid = PaidCalls(**r["paid"])
    waves = f"ceil({r['scenes']}/{r['limit']})"
    if r["portrait_waves"]:
        waves = f"({r['portrait_waves']} portrait wave + {waves})"
    lines = [
        f"wall {r['wall']:.1f} s = {r['ratio']:.2f} x {waves} x {r['latency']:g} s ="
        f" {r['bound']:g} s (target <= {TARGET_RATIO})",
        "  " + phases_line(r["phases"]),
        "  "
        + r["_render"].line()
        + f"; body - L = {r['render_body_minus_latency']:.2f} s (the prompt call, waiting"
        " for a kling slot, submit, polls, download, write)",
        "  " + r["single_steps"],
    ]
    lines += [
        f"  image phase: KLING slots busy {r['slot_share']:.0%} of C x"
        f" {r['phases'].get('render_phase', float('nan')):.1f} s (the fake's task times)",
        f"  {paid.line(r['limit'])} (expected {r['expected_tasks']} tasks)",
    ]
    if r["cpu"] is not None:
        lines.append(
            f"  CPU of the run's process tree: {r['cpu']:.1f} s ({r['cpu'] / r['scenes']:.2f} s"
            " per scene)"
        )
    lines += [f"  FAILED (retried or not): {m}" for m in r["failures"]]
    if r["in_process"]:
        lines.append("  NOTE: the run executed in-process (no step processes)")
    return "\n".join(lines)


def targets_of(r: dict[str, Any]) -> list[Target]:
    paid = PaidCalls(**r["paid"])
    name = case_name(r)
    return [
        Target(
            f"1. throughput {name}: wall / bound",
            f"<= {TARGET_RATIO}",
            f"{r['ratio']:.2f} ({r['wall']:.1f} s / {r['bound']:g} s)",
            r["ratio"] <= TARGET_RATIO,
        ),
        Target(
            f"1. throughput {name}: KLING over its limit",
            "0 x 429/1303",
            f"{paid.refused_1303} (max in flight {paid.max_in_flight}/{r['limit']},"
            f" {paid.kling_tasks}/{r['expected_tasks']} tasks)",
            paid.refused_1303 == 0 and paid.kling_tasks == r["expected_tasks"],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__,
        "also N=100 C=8 (portraits off)",
        scenes=SCENES,
        limit=LIMIT,
        latency=LATENCY,
        portraits=("off", "on", "both"),
        portraits_default="both",
    )
    parser.add_argument(
        "--poll", type=float, default=POLL, help="KLING_POLL_INTERVAL_SECONDS (default 0.25)"
    )
    parser.add_argument(
        "--local-compute-logs",
        action="store_true",
        help="Dagster's LocalComputeLogManager (a `tail -F` per step, as the deployed instance"
        " has); default: the repository's dagster.yaml (no captured step output)",
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()

    variants = {"off": [False], "on": [True], "both": [False, True]}[args.portraits]
    cases = [(args.scenes, args.limit, p) for p in variants]
    if args.full:
        cases += [(n, c, False) for n, c in FULL_EXTRA]
    print(f"machine: {machine_line()}")
    print(
        f"KLING latency L = {args.latency:g} s, KLING_POLL_INTERVAL_SECONDS={args.poll:g},"
        f" compute logs: {'Local (Dagster default)' if args.local_compute_logs else 'NoOp'}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for scenes, limit, portraits in cases:
        print(f"\n== N={scenes} C={limit} portraits {'on' if portraits else 'off'}", flush=True)
        r = measure(scenes, limit, args.latency, args.poll, portraits, args.local_compute_logs)
        results.append(r)
        print(report(r), flush=True)
        print(f"  machine after: {r['load_after']}", flush=True)
    targets = [t for r in results for t in targets_of(r)]
    for r in results:
        del r["_render"]
    return finish("throughput", args.json, targets, results=results)


if __name__ == "__main__":
    sys.exit(main())
