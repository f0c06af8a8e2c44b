"""Memory: peak RSS of the processes of one `scene-pipeline run` of a big script.

The process tree of the CLI (the CLI/orchestrator, the forkserver, the step processes and
their `tail -F` / watch_orphans helpers) is sampled every 0.25 s from /proc (psutil is not a
dependency): the summed VmRSS (shared pages counted in every process that maps them), the
summed PSS (shared pages divided among their sharers: the real footprint) and each process's
VmHWM (its own peak RSS). Providers: the fake KLING (L = 0.2 s, C = 8) and the fake OpenAI.

    python bench/memory.py           # 200 scenes
    python bench/memory.py --quick   # 50 scenes (run_all's default, to stay in its budget:
                                     # the peak is set by the executor's max_concurrent,
                                     # C + 4 = 12 step processes, which 50 scenes reach)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from _common import (
    emit_json,
    fake_providers,
    fmt_table,
    machine_line,
    provider_env,
    run_cli,
    script_document,
    stop_on_sigterm,
    temp_dir,
    write_dagster_yaml,
)


def measure(scenes: int, limit: int = 8, latency: float = 0.2) -> dict[str, Any]:
    with temp_dir("bench-memory-") as tmp, fake_providers(latency, limit) as (kling, openai):
        home = tmp / "dagster_home"
        write_dagster_yaml(home, limit)
        env = provider_env(kling, openai, tmp / "storage", limit, 0.1, dagster_home=home)
        script = tmp / "script.json"
        import json

        script.write_text(json.dumps(script_document(f"mem-{scenes}", scenes), ensure_ascii=False))
        run = run_cli(script, env, tmp, sample_memory=True, timeout=1800)
        if run.returncode != 0:
            raise RuntimeError(f"run failed ({run.returncode}): {run.stderr[-3000:]}")
        tasks = len(kling.tasks)
    tree = run.tree
    assert tree is not None
    hwm_by_kind: dict[str, list[int]] = {}
    for kind, hwm in tree.hwm.values():
        hwm_by_kind.setdefault(kind, []).append(hwm)
    return {
        "scenes": scenes,
        "wall": run.wall,
        "kling_tasks": tasks,
        "samples": tree.samples,
        "peak_total_rss_mb": tree.peak_total_rss_kb / 1024,
        "peak_total_pss_mb": tree.peak_total_pss_kb / 1024,
        "peak_processes": tree.peak_processes,
        "kinds": {
            kind: {
                "processes_seen": len(values),
                "max_at_once": tree.kinds.get(kind, [0, 0])[1],
                "max_hwm_mb": max(values) / 1024,
                "median_hwm_mb": sorted(values)[len(values) // 2] / 1024,
            }
            for kind, values in sorted(hwm_by_kind.items())
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="50 scenes")
    mode.add_argument("--full", action="store_true", help="200 scenes (default)")
    parser.add_argument("--scenes", type=int)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    scenes = args.scenes or (50 if args.quick else 200)

    print(f"machine: {machine_line()}", flush=True)
    r = measure(scenes)
    print(
        f"{scenes} scenes in {r['wall']:.1f} s ({r['kling_tasks']} KLING tasks): peak"
        f" {r['peak_processes']} processes; summed RSS peak {r['peak_total_rss_mb']:.0f} MB,"
        f" summed PSS peak {r['peak_total_pss_mb']:.0f} MB ({r['samples']} samples)"
    )
    print(
        fmt_table(
            ["process", "seen", "max at once", "peak RSS (VmHWM) max MB", "median MB"],
            [
                [
                    kind,
                    k["processes_seen"],
                    k["max_at_once"],
                    f"{k['max_hwm_mb']:.0f}",
                    f"{k['median_hwm_mb']:.0f}",
                ]
                for kind, k in r["kinds"].items()
            ],
        )
    )
    print(f"machine after: {machine_line()}")
    emit_json(args.json, {"benchmark": "memory", "machine": machine_line(), **r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
