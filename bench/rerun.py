"""Small runs of an already drawn script, through the real CLI (a subprocess; wall time from
its start to its exit), against the fake KLING and the fake OpenAI, with a temporary
DAGSTER_HOME (the repository's dagster.yaml).

First the script of N scenes is drawn (with a short KLING latency: only its result matters),
then:

- target 3, the unchanged script: `scene-pipeline run FILE` again (R times). Target: wall <=
  3 s; no paid call (the fake KLING's tasks and the fake OpenAI's chat calls do not change);
  no run started (the CLI says "up to date ... no run started" and no new run appears in the
  DAGSTER_HOME instance).
- target 2, one scene again: `scene-pipeline run FILE --scenes 1 --force` with the fake
  KLING's latency set to L = 8 s. Target: wall - L <= 5 s. Also printed: the new KLING tasks
  (1) and chat calls (0: the prompt is reused), whether the run executed in-process (it draws
  one image), and the phases from its event log.

    python bench/rerun.py                 # --quick: N = 24, L = 8 s, R = 3 (about 1 minute)
    python bench/rerun.py --latency 2     # a smoke test
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    CliRun,
    Target,
    bench_parser,
    cli_phases,
    cli_setup,
    finish,
    machine_line,
    median,
    phases_line,
    read_run_times,
    run_ids,
    script_document,
    single_steps_line,
    step_overhead,
    stop_on_sigterm,
)

SCENES, LIMIT, LATENCY, POLL, PREPARE_LATENCY = 24, 4, 8.0, 0.25, 0.25
UNCHANGED_WALL, RERUN_OVER_L = 3.0, 5.0


def last_error(run: CliRun) -> str:
    lines = [line for line in run.stderr.splitlines() if "ERROR" in line or "Error" in line]
    return (lines or run.stderr.splitlines()[-1:] or [""])[-1][-300:]


def measure(
    scenes: int, limit: int, latency: float, poll: float, repeats: int, portraits: bool
) -> dict[str, Any]:
    document = script_document(f"bench-rerun-{scenes}", scenes)
    with cli_setup(
        "rerun",
        document,
        latency=PREPARE_LATENCY,
        limit=limit,
        poll=poll,
        portraits=portraits,
    ) as setup:
        home = setup.home
        first = setup.run()
        first.check("the first run (drawing every scene)")
        print(f"drawn: {scenes} scenes in {first.wall:.1f} s (L = {PREPARE_LATENCY:g} s)")

        unchanged = []
        for _ in range(repeats):
            paid, runs = setup.paid(), run_ids(home)
            run = setup.run(timeout=300, sample_memory=True)
            after = setup.paid()
            assert run.tree is not None
            unchanged.append(
                {
                    "wall": run.wall,
                    "returncode": run.returncode,
                    "says_up_to_date": run.up_to_date,
                    "new_runs": len(set(run_ids(home)) - set(runs)),
                    "new_kling_tasks": after.kling_tasks - paid.kling_tasks,
                    "new_chat_calls": after.chat_calls - paid.chat_calls,
                    # processes seen under the CLI (sampled every 0.25 s), the CLI aside
                    "other_processes": sorted(
                        {kind for kind in run.tree.pids.values() if kind != "cli"}
                    ),
                }
            )

        setup.kling.options.task_latency_seconds = latency
        paid, runs = setup.paid(), run_ids(home)
        rerun = setup.run("--scenes", "1", "--force", timeout=900)
        after = setup.paid()
        new_runs = len(set(run_ids(home)) - set(runs))
        times = read_run_times(home, rerun.run_id) if rerun.run_id else None
    result: dict[str, Any] = {
        "scenes": scenes,
        "limit": limit,
        "latency": latency,
        "poll_interval": poll,
        "portraits": portraits,
        "first_wall": first.wall,
        "unchanged": unchanged,
        "unchanged_median_wall": median([u["wall"] for u in unchanged]),
        "rerun": {
            "wall": rerun.wall,
            "over_latency": rerun.wall - latency,
            "returncode": rerun.returncode,
            "error": last_error(rerun) if rerun.returncode else "",
            "new_runs": new_runs,
            "new_kling_tasks": after.kling_tasks - paid.kling_tasks,
            "new_chat_calls": after.chat_calls - paid.chat_calls,
            "refused_1303": after.refused_1303 - paid.refused_1303,
            "in_process": times.in_process if times else None,
            "failures": times.failures if times else [],
            "phases": cli_phases(rerun, times) if times else {},
            "render_step": vars(step_overhead(times, "render_scene")) if times else None,
            "single_steps": single_steps_line(times) if times else "",
            "cpu": rerun.cpu,
        },
        "load_after": machine_line(),
    }
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"3. unchanged script, {len(r['unchanged'])} CLI runs:"]
    for u in r["unchanged"]:
        lines.append(
            f"  wall {u['wall']:.2f} s, exit {u['returncode']}, says up to date / no run started:"
            f" {'yes' if u['says_up_to_date'] else 'NO'}, new runs in the instance"
            f" {u['new_runs']}, new KLING tasks {u['new_kling_tasks']}, new chat calls"
            f" {u['new_chat_calls']}, other processes: {', '.join(u['other_processes']) or 'none'}"
        )
    x = r["rerun"]
    lines += [
        f"2. one scene again (--scenes 1 --force), L = {r['latency']:g} s: wall {x['wall']:.1f} s,"
        f" wall - L = {x['over_latency']:.1f} s, exit {x['returncode']}"
        + (f" ({x['error']})" if x["error"] else ""),
        f"  new KLING tasks {x['new_kling_tasks']}, new chat calls {x['new_chat_calls']},"
        f" 429/1303 {x['refused_1303']}, new runs {x['new_runs']}, executed in-process:"
        f" {x['in_process']}",
        "  " + phases_line(x["phases"]),
        *(f"  FAILED: {m}" for m in x["failures"]),
    ]
    if x["render_step"]:
        body = x["render_step"]["body"][0]
        lines.append(
            f"  render step body {body:.2f} s (body - L = {body - r['latency']:.2f} s);"
            f" {x['single_steps']}"
        )
    if x["cpu"] is not None:
        lines.append(f"  CPU of the rerun's process tree: {x['cpu']:.1f} s")
    return "\n".join(lines)


def targets_of(r: dict[str, Any]) -> list[Target]:
    u, x = r["unchanged"], r["rerun"]
    walls = [v["wall"] for v in u]
    unpaid = all(v["new_kling_tasks"] == 0 and v["new_chat_calls"] == 0 for v in u)
    no_run = all(
        v["says_up_to_date"] and v["new_runs"] == 0 and not v["other_processes"] for v in u
    )
    return [
        Target(
            f"2. rerun one scene (N={r['scenes']}, L={r['latency']:g}s): wall - L",
            f"<= {RERUN_OVER_L:g} s",
            f"{x['over_latency']:.1f} s (wall {x['wall']:.1f} s, exit {x['returncode']},"
            f" {x['new_kling_tasks']} task)",
            x["over_latency"] <= RERUN_OVER_L and x["returncode"] == 0,
        ),
        Target(
            f"3. unchanged script (N={r['scenes']}): wall, median of {len(walls)}",
            f"<= {UNCHANGED_WALL:g} s",
            f"{median(walls):.2f} s (max {max(walls):.2f} s)",
            median(walls) <= UNCHANGED_WALL and all(v["returncode"] == 0 for v in u),
        ),
        Target(
            "3. unchanged script: paid calls",
            "0 KLING tasks, 0 chat calls",
            f"{sum(v['new_kling_tasks'] for v in u)} tasks,"
            f" {sum(v['new_chat_calls'] for v in u)} chat calls",
            unpaid,
        ),
        Target(
            "3. unchanged script: run started",
            "none (CLI output, instance, processes)",
            "none" if no_run else "a run was started",
            no_run,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__, "the same, 5 unchanged runs", scenes=SCENES, limit=LIMIT, latency=LATENCY
    )
    parser.add_argument("--poll", type=float, default=POLL, help="KLING_POLL_INTERVAL_SECONDS")
    parser.add_argument("--repeats", type=int, help="unchanged runs (default 3, full 5)")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    repeats = args.repeats or (5 if args.full else 3)

    print(f"machine: {machine_line()}", flush=True)
    r = measure(args.scenes, args.limit, args.latency, args.poll, repeats, args.portraits == "on")
    print(report(r))
    print(f"machine after: {r['load_after']}")
    return finish("rerun", args.json, targets_of(r), **r)


if __name__ == "__main__":
    sys.exit(main())
