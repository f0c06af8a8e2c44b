"""Script throughput: one script of N scenes through `scene-pipeline run` (the real CLI, a
subprocess) against the fake KLING (latency L per task, account limit C) and the fake OpenAI.

The bound is the KLING account's: ceil(N/C) waves of L seconds, plus the fixed cost of the
same command run again on the same storage (everything cached: nothing to draw, so it
measures Dagster and process overhead only). ratio = wall / bound.

Each run gets a temporary DAGSTER_HOME whose dagster.yaml sets the kling pool limit to C
(KLING_MAX_CONCURRENCY=C too, which also sets the executor's image-step limit).
KLING_POLL_INTERVAL_SECONDS is 0.25 s (the client polls at that steady interval), so that a
task is seen finished at most 0.25 s after it is done ("body - L" in the output).

    python bench/throughput.py                     # --quick: N=24 C=4 (the target case)
    python bench/throughput.py --full              # N = 24, 100, 200 x C = 4, 8 (~25 min)
    python bench/throughput.py --cases 100:8       # any N:C list
    python bench/throughput.py --noop-compute-logs # as `scene-pipeline run` without
                                                   # DAGSTER_HOME (no per-step log capture)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from _common import (
    FakeKlingServer,
    RunTimes,
    account_bound,
    emit_json,
    fake_providers,
    fmt_table,
    machine_line,
    median,
    provider_env,
    read_run_times,
    run_cli,
    script_document,
    step_overhead,
    stop_on_sigterm,
    temp_dir,
    write_dagster_yaml,
    write_script,
)

LATENCY = 4.0
POLL = 0.25
TARGET = 1.10
QUICK = [(24, 4)]
FULL = [(n, c) for n in (24, 100, 200) for c in (4, 8)]


def kling_utilisation(kling: FakeKlingServer, limit: int, latency: float) -> tuple[float, float]:
    """(seconds from the first submit to the last finish, share of the account's C slots
    busy over that span)."""
    tasks = kling.tasks
    if not tasks:
        return 0.0, 0.0
    start = min(t.created_mono for t in tasks)
    end = max(t.finishes_mono or t.created_mono for t in tasks)
    span = end - start
    return span, (len(tasks) * latency) / (limit * span) if span else 0.0


def image_phase(times: RunTimes, limit: int) -> dict[str, float]:
    """Where the kling slots went: launch of the first image step to the last image step's
    success; busy = claimed by a step (STEP_WORKER_STARTING to STEP_SUCCESS)."""
    steps = [
        s
        for s in times.of_kind("draw_scene_image")
        if s.worker_starting is not None and s.success is not None
    ]
    prompts = [s for s in times.of_kind("write_scene_prompt") if s.worker_starting]
    if not steps or times.run_start is None:
        return {}
    first = min(s.worker_starting for s in steps)  # type: ignore[type-var]
    last = max(s.success for s in steps)  # type: ignore[type-var]
    busy = sum(s.success - s.worker_starting for s in steps)  # type: ignore[operator]
    first_prompt = min((s.worker_starting for s in prompts), default=first)  # type: ignore[type-var]
    return {
        "run_start_to_first_prompt": first_prompt - times.run_start,  # type: ignore[operator]
        "first_prompt_to_first_image": first - first_prompt,  # type: ignore[operator]
        "image_phase": last - first,  # type: ignore[operator]
        "slot_utilisation": busy / (limit * (last - first)) if last > first else 0.0,  # type: ignore[operator]
        "after_last_image": (times.run_end - last) if times.run_end else float("nan"),  # type: ignore[operator]
    }


def measure(
    scenes: int,
    limit: int,
    latency: float = LATENCY,
    poll: float = POLL,
    noop_compute_logs: bool = False,
) -> dict[str, Any]:
    """One script of `scenes` scenes, then the same command again (fully cached).
    `noop_compute_logs`: the temporary instance captures no step stdout/stderr, as the CLI's
    own temporary instance (no DAGSTER_HOME) does."""
    with temp_dir("bench-throughput-") as tmp, fake_providers(latency, limit) as (kling, openai):
        home = tmp / "dagster_home"
        write_dagster_yaml(home, limit, noop_compute_logs=noop_compute_logs)
        env = provider_env(kling, openai, tmp / "storage", limit, poll, dagster_home=home)
        script = write_script(tmp / "script.json", script_document(f"bench-n{scenes}", scenes))
        first = run_cli(script, env, tmp, timeout=1800)
        if first.returncode != 0 or first.run_id is None:
            raise RuntimeError(f"run failed ({first.returncode}): {first.stderr[-3000:]}")
        tasks, max_in_flight = len(kling.tasks), kling.max_in_flight
        span, utilisation = kling_utilisation(kling, limit, latency)
        again = run_cli(script, env, tmp, timeout=600)
        if again.returncode != 0 or again.run_id is None:
            raise RuntimeError(f"re-run failed ({again.returncode}): {again.stderr[-3000:]}")
        if len(kling.tasks) != tasks:
            raise RuntimeError("the cached re-run submitted KLING tasks")
        times = read_run_times(home, first.run_id)
        cached = read_run_times(home, again.run_id)
    if tasks != scenes:
        raise RuntimeError(f"{tasks} KLING tasks for {scenes} scenes")
    if max_in_flight > limit:
        raise AssertionError(f"KLING tasks in flight {max_in_flight} > limit {limit}")
    bound_waves = account_bound(scenes, limit, latency)
    bound = bound_waves + again.wall
    image = step_overhead(times, "draw_scene_image")
    prompt = step_overhead(times, "write_scene_prompt")
    run_span = (times.run_end or 0) - (times.run_start or 0)
    cached_span = (cached.run_end or 0) - (cached.run_start or 0)
    return {
        "scenes": scenes,
        "limit": limit,
        "latency": latency,
        "poll_interval": poll,
        "noop_compute_logs": noop_compute_logs,
        "wall": first.wall,
        "fixed": again.wall,
        "cpu": first.cpu,
        "fixed_cpu": again.cpu,
        "cpu_per_scene": (first.cpu - again.cpu) / scenes if first.cpu and again.cpu else None,
        "fixed_run_span": cached_span,
        "fixed_steps": len(cached.steps),
        "bound_waves": bound_waves,
        "bound": bound,
        "ratio": first.wall / bound,
        "overhead_per_scene": (first.wall - bound) / scenes,
        "run_span": run_span,
        "cli_outside_run": first.wall - run_span,
        "kling_tasks": tasks,
        "max_in_flight": max_in_flight,
        "kling_span": span,
        "kling_utilisation": utilisation,
        "poll_overshoot": image.body - latency,
        "image_step": vars(image),
        "prompt_step": vars(prompt),
        "phases": image_phase(times, limit),
        "fixed_step_total_median": median(
            [
                s.success - s.worker_starting
                for s in cached.steps.values()
                if s.success and s.worker_starting
            ]  # fmt: skip
        ),
    }


def report(result: dict[str, Any]) -> str:
    r, im, pr, ph = result, result["image_step"], result["prompt_step"], result["phases"]
    cpu = (
        f"  CPU of the run's process tree: {r['cpu']:.1f} s, cached re-run {r['fixed_cpu']:.1f} s:"
        f" {r['cpu_per_scene']:.2f} CPU s per scene (less noisy than wall time on a shared"
        " machine)"
        if r.get("cpu_per_scene") is not None
        else "  CPU: not measured (no PR_SET_CHILD_SUBREAPER)"
    )
    lines = [
        f"N={r['scenes']} C={r['limit']} L={r['latency']:g}s: wall {r['wall']:.1f} s, bound"
        f" {r['bound_waves']:.0f} s + fixed {r['fixed']:.1f} s = {r['bound']:.1f} s, ratio"
        f" {r['ratio']:.2f} (target <= {TARGET} at N=24 C=4); overhead"
        f" {r['overhead_per_scene']:.2f} s/scene",
        f"  KLING: {r['kling_tasks']} tasks, max in flight {r['max_in_flight']} (limit"
        f" {r['limit']}), account busy {r['kling_utilisation']:.0%} of C x"
        f" {r['kling_span']:.1f} s from first submit to last finish",
        f"  CLI outside the run (imports, instance, accepted copy, summary):"
        f" {r['cli_outside_run']:.1f} s; run {r['run_span']:.1f} s; cached re-run: run"
        f" {r['fixed_run_span']:.1f} s of {r['fixed']:.1f} s, {r['fixed_steps']} steps, median"
        f" {r['fixed_step_total_median']:.2f} s per step",
    ]
    lines.append(cpu)
    if ph:
        lines.append(
            f"  phases: run start -> first prompt step {ph['run_start_to_first_prompt']:.1f} s,"
            f" -> first image step {ph['first_prompt_to_first_image']:.1f} s, image phase"
            f" {ph['image_phase']:.1f} s (kling slots held {ph['slot_utilisation']:.0%} of it),"
            f" after the last image {ph['after_last_image']:.1f} s"
        )
    for name, s in (("image step", im), ("prompt step", pr)):
        lines.append(
            f"  {name} (median of {s['count']}): spawn {s['spawn']:.2f} s"
            f" (STEP_WORKER_STARTING->STARTED), init {s['init']:.2f} s (->STEP_START: job"
            f" load, resources, inputs), body {s['body']:.2f} s (->STEP_SUCCESS), total"
            f" {s['total']:.2f} s"
        )
    lines.append(
        f"  image step body - L = {r['poll_overshoot']:.2f} s (poll overshoot, submit, download,"
        " write)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="N=24 C=4 (default)")
    mode.add_argument("--full", action="store_true", help="N = 24, 100, 200 x C = 4, 8")
    parser.add_argument("--cases", help="explicit N:C list, e.g. 24:4,100:8")
    parser.add_argument("--latency", type=float, default=LATENCY)
    parser.add_argument("--poll", type=float, default=POLL)
    parser.add_argument(
        "--noop-compute-logs",
        action="store_true",
        help="NoOpComputeLogManager in the temporary dagster.yaml (as the CLI's own temporary"
        " instance); default: Dagster's LocalComputeLogManager, as with a DAGSTER_HOME",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    stop_on_sigterm()

    print(f"machine: {machine_line()}")
    print(
        f"KLING latency {args.latency:g} s, KLING_POLL_INTERVAL_SECONDS={args.poll:g}, compute"
        f" logs: {'NoOp' if args.noop_compute_logs else 'Local (Dagster default)'}"
    )
    if args.cases:
        cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    else:
        cases = FULL if args.full else QUICK
    results: list[dict[str, Any]] = []
    for n, c in cases:
        print(f"\n== N={n} C={c} ({machine_line()})", flush=True)
        result = measure(n, c, args.latency, args.poll, args.noop_compute_logs)
        result["load_after"] = machine_line()
        results.append(result)
        print(report(result), flush=True)
        print(f"  machine after: {result['load_after']}", flush=True)
    rows = [
        [
            r["scenes"],
            r["limit"],
            f"{r['wall']:.1f}",
            f"{r['bound_waves']:g} + {r['fixed']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['overhead_per_scene']:.2f}",
            r["max_in_flight"],
            f"{r['kling_utilisation']:.0%}",
            f"{r['cpu_per_scene'] or float('nan'):.2f}",
        ]
        for r in results
    ]
    print(f"\nthroughput (L={args.latency:g}s, {machine_line()}):")
    print(
        fmt_table(
            [
                "N",
                "C",
                "wall s",
                "bound s",
                "ratio",
                "overhead s/scene",
                "max in flight",
                "account busy",
                "CPU s/scene",
            ],
            rows,
        )
    )
    emit_json(args.json, {"benchmark": "throughput", "machine": machine_line(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
