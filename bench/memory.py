"""Memory of a big run: one `scene-pipeline run` of a 200-scene script against the fake KLING
and the fake OpenAI, with a temporary DAGSTER_HOME (the repository's dagster.yaml: no captured
step output, so no `tail -F` helpers; `--local-compute-logs` for Dagster's default).

The CLI's process tree (the CLI/orchestrator, the forkserver, the step processes and their
helpers) is sampled every 0.25 s from /proc (psutil is not a dependency): the summed PSS
(shared pages divided among the processes sharing them: the real footprint), the summed RSS
(shared pages counted in every process) and, per kind of process, how many there were at once,
their summed PSS at the total's peak and each one's peak RSS (VmHWM).

Target: the peak of the summed PSS <= 1.5 GiB. C = 8 by default (KLING_MAX_CONCURRENCY's
default is 5): the multiprocess executor runs at most 2C steps at once, so a larger C is
the harder case. L = 0.5 s: the run is short and its processes come and go quickly.

    python bench/memory.py               # --quick (= --full): 200 scenes (~3 minutes)
    python bench/memory.py --scenes 30   # a smoke test
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    PaidCalls,
    Target,
    bench_parser,
    cli_setup,
    finish,
    fmt_table,
    machine_line,
    script_document,
    stop_on_sigterm,
)

SCENES, LIMIT, LATENCY = 200, 8, 0.5
TARGET_GIB = 1.5


def measure(
    scenes: int, limit: int, latency: float, portraits: bool, local_compute_logs: bool
) -> dict[str, Any]:
    with cli_setup(
        "memory",
        script_document(f"mem-{scenes}", scenes),
        latency=latency,
        limit=limit,
        poll=0.1,
        portraits=portraits,
        local_compute_logs=local_compute_logs,
    ) as setup:
        run = setup.run(sample_memory=True, timeout=3600)
        run.check("scene-pipeline run")
        paid = setup.paid()
    tree = run.tree
    assert tree is not None
    return {
        "scenes": scenes,
        "limit": limit,
        "latency": latency,
        "portraits": portraits,
        "local_compute_logs": local_compute_logs,
        "wall": run.wall,
        "paid": vars(paid),
        "samples": tree.samples,
        "peak_total_pss_mb": tree.peak_total_pss_kb / 1024,
        "peak_total_rss_mb": tree.peak_total_rss_kb / 1024,
        "peak_processes": tree.peak_processes,
        "kinds": {
            kind: {
                "seen": k.seen,
                "most_at_once": k.most_at_once,
                "pss_at_peak_mb": k.pss_at_total_peak_kb / 1024,
                "own_peak_pss_mb": k.peak_pss_kb / 1024,
                "max_hwm_mb": k.peak_hwm_kb / 1024,
            }
            for kind, k in sorted(tree.kinds.items(), key=lambda kv: -kv[1].peak_pss_kb)
            if k.seen
        },
        "load_after": machine_line(),
    }


def report(r: dict[str, Any]) -> str:
    paid = PaidCalls(**r["paid"])
    table = fmt_table(
        [
            "process kind",
            "seen",
            "most at once",
            "PSS at the peak MB",
            "own peak PSS MB",
            "largest VmHWM MB",
        ],
        [
            [
                kind,
                k["seen"],
                k["most_at_once"],
                f"{k['pss_at_peak_mb']:.0f}",
                f"{k['own_peak_pss_mb']:.0f}",
                f"{k['max_hwm_mb']:.0f}",
            ]
            for kind, k in r["kinds"].items()
        ],
    )
    return (
        f"{r['scenes']} scenes, C={r['limit']}, L={r['latency']:g} s, portraits"
        f" {'on' if r['portraits'] else 'off'}: {r['wall']:.1f} s; {paid.line(r['limit'])}\n"
        f"peak of the summed PSS {r['peak_total_pss_mb']:.0f} MB (target <="
        f" {TARGET_GIB * 1024:.0f} MB), summed RSS peak {r['peak_total_rss_mb']:.0f} MB, at most"
        f" {r['peak_processes']} processes ({r['samples']} samples)\n{table}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "the target case", scenes=SCENES, limit=LIMIT, latency=LATENCY)
    parser.add_argument(
        "--local-compute-logs",
        action="store_true",
        help="Dagster's default compute log manager (a tail -F helper per step)",
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()

    print(f"machine: {machine_line()}", flush=True)
    r = measure(
        args.scenes, args.limit, args.latency, args.portraits == "on", args.local_compute_logs
    )
    print(report(r))
    print(f"machine after: {r['load_after']}")
    peak_gib = r["peak_total_pss_mb"] / 1024
    target = Target(
        f"5. memory {r['scenes']} scenes C={r['limit']}: peak of the summed PSS",
        f"<= {TARGET_GIB:g} GiB",
        f"{peak_gib:.2f} GiB ({r['peak_processes']} processes at most)",
        peak_gib <= TARGET_GIB,
    )
    return finish("memory", args.json, [target], **r)


if __name__ == "__main__":
    sys.exit(main())
