"""Shared helpers of the benchmarks: fake servers, scripts, temporary Dagster homes, CLI runs,
event-log analysis, the fake KLING's view, process-tree sampling and the targets table.
Network only to 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(REPO) not in sys.path:  # scene_pipeline_tests is not installed, only importable from here
    sys.path.insert(0, str(REPO))

from scene_pipeline.settings import variable_names  # noqa: E402
from scene_pipeline_tests.fakes.kling import FakeKlingServer  # noqa: E402
from scene_pipeline_tests.fakes.openai import FakeOpenAIServer  # noqa: E402
from scene_pipeline_tests.resilience import (  # noqa: E402,F401 (script_document: re-exported)
    fake_env,
    script_document,
    write_script,
)

BIN = Path(sys.executable).parent
CLI = str(BIN / "scene-pipeline")
DAEMON = str(BIN / "dagster-daemon")
INBOX = "scripts/incoming/"
RENDER = "render_scene"  # the kind of the per-scene steps (`scenes.render_scene[<scene>]`)
SINGLE_STEPS = ("plan_script", "publish_script")  # one each per run
REFERENCE_SIDE = 640

# Every setting the pipeline reads (the settings model's own list) and anything that could
# send a request elsewhere: never inherited from the caller's environment.
PIPELINE_ENV = (
    *variable_names(),
    "DAGSTER_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# -- machine ----------------------------------------------------------------------------------


def machine_line() -> str:
    one, five, fifteen = os.getloadavg()
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.1f} GiB RAM,"
        f" load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"
    )


# -- fakes and environments -------------------------------------------------------------------


@contextmanager
def fake_providers(
    latency: float, limit: int
) -> Iterator[tuple[FakeKlingServer, FakeOpenAIServer]]:
    """The fake KLING (latency per task, account limit) and the fake OpenAI on 127.0.0.1.
    KLING's pictures are 640 px on the long side: a portrait must be at least 300 px on each
    side to be sent back as a reference (the fake's default, 48 px, is refused with 1201)."""
    with FakeKlingServer(
        task_latency_seconds=latency, concurrency_limit=limit, image_long_side=REFERENCE_SIDE
    ) as kling:
        with FakeOpenAIServer() as openai:
            yield kling, openai


def provider_env(
    kling: FakeKlingServer,
    openai: FakeOpenAIServer,
    storage_dir: Path,
    concurrency: int,
    poll_interval: float,
    *,
    portraits: bool = False,
    dagster_home: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of the CLI or the daemon: the real clients against the fakes, local
    storage, KLING_MAX_CONCURRENCY = C (also the `kling` pool's limit, set by every run),
    character reference portraits on or off."""
    env = base_env(
        **fake_env(
            openai,
            kling,
            SCENE_PIPELINE_LOCAL_DIR=str(storage_dir),
            KLING_MAX_CONCURRENCY=str(concurrency),
            KLING_POLL_INTERVAL_SECONDS=str(poll_interval),
            SCENE_PIPELINE_CHARACTER_REFERENCES="on" if portraits else "off",
            **extra,
        )
    )
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def write_dagster_yaml(
    home: Path, max_concurrent_runs: int | None = None, local_compute_logs: bool = False
) -> dict[str, Any]:
    """dagster.yaml of a temporary instance: the repository's own `dagster.yaml` (run queue
    with one run per script, run monitoring, managed loggers, no captured step output; no
    `kling` pool limit: every run sets it from KLING_MAX_CONCURRENCY), written as JSON (which
    is YAML). `local_compute_logs`: Dagster's default compute log manager instead (as the
    deployed instance has), for a comparison."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    if local_compute_logs:
        config.pop("compute_logs", None)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(json.dumps(config, indent=2))
    return config


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class PaidCalls:
    """What the fakes were paid for so far, and what the fake KLING refused."""

    kling_tasks: int
    kling_images: int  # sum of n over the tasks (a task of n candidates holds n slots)
    chat_calls: int
    max_in_flight: int
    refused_1303: int  # 429/1303: a submit over the account's limit

    @classmethod
    def of(cls, kling: FakeKlingServer, openai: FakeOpenAIServer) -> PaidCalls:
        tasks = kling.tasks
        return cls(
            kling_tasks=len(tasks),
            kling_images=sum(t.n for t in tasks),
            chat_calls=openai.calls["chat"],
            max_in_flight=kling.max_in_flight,
            refused_1303=kling.answers[(429, 1303)],
        )

    def line(self, limit: int) -> str:
        return (
            f"KLING: {self.kling_tasks} tasks, max in flight {self.max_in_flight} (limit {limit}),"
            f" {self.refused_1303} refusals 429/1303; OpenAI: {self.chat_calls} chat calls"
        )


def kling_slot_share(kling: FakeKlingServer, limit: int, start: float, end: float) -> float:
    """Share of the account's `limit` slots busy between the wall-clock times `start` and
    `end`, from the fake's own task times (a task holds n slots from submit to finish)."""
    if end <= start:
        return float("nan")
    busy = 0.0
    for task in kling.tasks:
        finishes = task.finishes_mono if task.finishes_mono is not None else time.monotonic()
        t0 = task.created_at
        t1 = t0 + (finishes - task.created_mono)
        busy += task.n * max(0.0, min(t1, end) - max(t0, start))
    return busy / (limit * (end - start))


# -- processes --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc/<pid>/task/<tid>/children)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += _children(pid)
    return seen


def _status(pid: int) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                values[name] = value.strip()
    except OSError:
        pass
    return values


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kb(value: str) -> int:
    return int(value.split()[0]) if value else 0


def classify(cmdline: str, parent_kind: str | None = None) -> str:
    """A process's role from its command line; the step processes are forked by the
    forkserver and keep its command line, so they are told apart by their parent."""
    if "watch_orphans" in cmdline:
        return "watch_orphans"
    if cmdline.startswith("tail "):
        return "tail -F"
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    if "forkserver" in cmdline:
        return "step" if parent_kind in ("forkserver", "step") else "forkserver"
    if "multiprocessing" in cmdline:
        return "step"
    if "scene-pipeline" in cmdline:
        return "cli"
    if "execute_run" in cmdline:
        return "run worker"
    if "grpc" in cmdline or "code-server" in cmdline:
        return "code server"
    if "dagster-daemon" in cmdline or "dagster._daemon" in cmdline:
        return "daemon"
    return cmdline.split(" ")[0].rsplit("/", 1)[-1] or "?"


@dataclass
class KindPeak:
    """One kind of process as a ProcessTreeSampler saw it."""

    seen: int = 0  # processes of this kind over the whole run
    most_at_once: int = 0
    peak_pss_kb: int = 0  # highest summed PSS of this kind in one sample
    pss_at_total_peak_kb: int = 0  # its summed PSS in the sample of the highest total
    peak_hwm_kb: int = 0  # highest VmHWM (own peak RSS) of one process of this kind


@dataclass
class TreeSample:
    """Peaks seen by a ProcessTreeSampler."""

    samples: int = 0
    peak_total_rss_kb: int = 0
    peak_total_pss_kb: int = 0
    peak_processes: int = 0
    kinds: dict[str, KindPeak] = field(default_factory=dict)
    pids: dict[int, str] = field(default_factory=dict)  # every process seen -> its kind


class ProcessTreeSampler:
    """Samples the process tree under `root` every `interval` seconds from /proc: the sum of
    VmRSS (shared pages counted once per process), the sum of PSS (shared pages divided among
    the processes sharing them: the real footprint), per kind of process, and each process's
    VmHWM."""

    def __init__(self, root: int, interval: float = 0.25, pss: bool = True) -> None:
        self.root, self.interval, self.pss = root, interval, pss
        self.result = TreeSample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._cmdlines: dict[int, str] = {}

    def __enter__(self) -> ProcessTreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        r = self.result
        total_rss = total_pss = 0
        counts: dict[str, int] = {}
        pss_of: dict[str, int] = {}
        pids = process_tree(self.root)
        for pid in pids:
            status = _status(pid)
            if not status:
                continue
            kind = self._kind(pid, status)
            peak = r.kinds[kind]
            peak.peak_hwm_kb = max(peak.peak_hwm_kb, _kb(status.get("VmHWM", "")))
            total_rss += _kb(status.get("VmRSS", ""))
            pss = _pss_kb(pid) if self.pss else 0
            total_pss += pss
            counts[kind] = counts.get(kind, 0) + 1
            pss_of[kind] = pss_of.get(kind, 0) + pss
        for kind, count in counts.items():
            peak = r.kinds[kind]
            peak.most_at_once = max(peak.most_at_once, count)
            peak.peak_pss_kb = max(peak.peak_pss_kb, pss_of[kind])
        if total_pss > r.peak_total_pss_kb:
            for kind, peak in r.kinds.items():
                peak.pss_at_total_peak_kb = pss_of.get(kind, 0)
        r.samples += 1
        r.peak_total_rss_kb = max(r.peak_total_rss_kb, total_rss)
        r.peak_total_pss_kb = max(r.peak_total_pss_kb, total_pss)
        r.peak_processes = max(r.peak_processes, len(pids))

    def _kind(self, pid: int, status: Mapping[str, str]) -> str:
        """The process's kind; classified again when its command line changes (a process
        caught between fork and exec shows its parent's). An exiting process has none: it
        keeps its kind ("?", not counted as seen, when it never had one)."""
        cmdline = _cmdline(pid)
        known = self._cmdlines.get(pid)
        kinds = self.result.kinds
        if known is not None and (known == cmdline or not cmdline):
            return self.result.pids[pid]
        if not cmdline:
            kinds.setdefault("?", KindPeak())
            return "?"
        if known is not None:
            kinds[self.result.pids[pid]].seen -= 1
        parent = self.result.pids.get(int(status.get("PPid", "0") or 0))
        kind = self.result.pids[pid] = classify(cmdline, parent)
        self._cmdlines[pid] = cmdline
        kinds.setdefault(kind, KindPeak()).seen += 1
        return kind

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


@dataclass
class CliRun:
    wall: float
    returncode: int
    stdout: str
    stderr: str
    run_id: str | None
    started_at: float  # wall clock (time.time()) at the CLI's start: event-log time base
    ended_at: float
    tree: TreeSample | None = None
    cpu: float | None = None  # user + system seconds of the whole process tree

    @property
    def up_to_date(self) -> bool:
        """The CLI said the script is up to date and started no run."""
        return bool(re.search(r"up to date .*no run started", self.stderr))

    def check(self, what: str) -> None:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}:\n{self.stderr[-3000:]}")


_SUBREAPER = False


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER), so
    that the CPU time of every process a run starts (the forkserver, step processes, their
    helpers) ends up in RUSAGE_CHILDREN once they are reaped."""
    global _SUBREAPER
    if not _SUBREAPER:
        try:
            import ctypes

            _SUBREAPER = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _SUBREAPER = False
    return _SUBREAPER


def reap_orphans(wait: float = 2.0) -> None:
    """Reap adopted descendants that have exited (waits up to `wait` s for stragglers)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


RUN_LINE = re.compile(r"^run ([0-9a-f-]{36}) ", re.M)


def run_cli(
    script_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    *args: str,
    timeout: float = 900,
    sample_memory: bool = False,
) -> CliRun:
    """`scene-pipeline run FILE [args]` as a user runs it (wall time from the process start to
    its exit); killed with its process group on errors and Ctrl-C."""
    subreaper = become_subreaper()
    cpu_before = children_cpu()
    started_at = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [CLI, "run", str(script_path), "--log-level", "INFO", *args],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler: ProcessTreeSampler | None = None
    try:
        with ExitStack() as stack:
            if sample_memory:
                sampler = stack.enter_context(ProcessTreeSampler(proc.pid))
            stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        _, stderr = proc.communicate()
        raise RuntimeError(
            f"scene-pipeline run {' '.join(args)}: no exit after {timeout:.0f} s:\n{stderr[-3000:]}"
        ) from None
    except BaseException:
        kill_group(proc)
        raise
    wall = time.perf_counter() - started
    ended_at = started_at + wall
    # Step processes that outlived the CLI (none expected): the group is ended all the same.
    kill_group(proc, grace=0)
    if subreaper:
        reap_orphans()
    match = RUN_LINE.search(stderr)
    return CliRun(
        wall=wall,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        run_id=match.group(1) if match else None,
        started_at=started_at,
        ended_at=ended_at,
        tree=sampler.result if sampler else None,
        cpu=children_cpu() - cpu_before if subreaper else None,
    )


def kill_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """End a `start_new_session` child and everything left in its process group: SIGTERM to
    the group, up to `grace` s for the leader to exit, then SIGKILL to whatever is left (code
    servers and step processes that outlive their parent)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def stop_on_sigterm() -> None:
    """Turn SIGTERM (and SIGINT, which a shell ignores for background jobs) into
    KeyboardInterrupt, so that `finally` blocks stop servers and remove temporary folders."""

    def interrupt(signum: int, frame: object) -> None:
        del frame
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


@dataclass
class CliSetup:
    """A script file, the fakes, local storage and a DAGSTER_HOME for `scene-pipeline run`."""

    tmp: Path
    home: Path
    env: dict[str, str]
    script: Path
    kling: FakeKlingServer
    openai: FakeOpenAIServer

    def run(self, *args: str, timeout: float = 1800, sample_memory: bool = False) -> CliRun:
        return run_cli(
            self.script, self.env, self.tmp, *args, timeout=timeout, sample_memory=sample_memory
        )

    def paid(self) -> PaidCalls:
        return PaidCalls.of(self.kling, self.openai)


@contextmanager
def cli_setup(
    name: str,
    document: dict[str, Any],
    *,
    latency: float,
    limit: int,
    poll: float,
    portraits: bool,
    local_compute_logs: bool = False,
) -> Iterator[CliSetup]:
    """Everything a CLI benchmark needs, in a temporary folder removed at the end: the fakes
    (stopped at the end), the script file, local storage, a DAGSTER_HOME with the repository's
    dagster.yaml, and the environment of the CLI."""
    with temp_dir(f"bench-{name}-") as tmp, fake_providers(latency, limit) as (kling, openai):
        home = tmp / "dagster_home"
        write_dagster_yaml(home, local_compute_logs=local_compute_logs)
        env = provider_env(
            kling, openai, tmp / "storage", limit, poll, portraits=portraits, dagster_home=home
        )
        script = write_script(tmp / "script.json", document)
        yield CliSetup(tmp, home, env, script, kling, openai)


# -- the Dagster instance and the event log ---------------------------------------------------


@contextmanager
def open_instance(dagster_home: Path) -> Iterator[Any]:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


def run_ids(dagster_home: Path) -> list[str]:
    """Every run of the instance at `dagster_home` (none when it has no storage yet)."""
    if not (dagster_home / "history").exists():
        return []
    with open_instance(dagster_home) as instance:
        return [r.run_id for r in instance.get_runs()]


@dataclass
class StepTimes:
    key: str
    worker_starting: float | None = None  # parent: about to launch the step process
    worker_started: float | None = None  # child: the step process is running
    start: float | None = None  # STEP_START: the op's body begins
    success: float | None = None  # STEP_SUCCESS

    @property
    def kind(self) -> str:
        return self.key.split("[", 1)[0].rsplit(".", 1)[-1]


@dataclass
class RunTimes:
    run_start: float | None
    run_end: float | None
    enqueued: float | None  # RUN_ENQUEUED: in the run queue (daemon runs)
    starting: float | None  # RUN_STARTING: taken off the queue, being launched
    steps: dict[str, StepTimes]
    failures: list[str]  # the messages of STEP_FAILURE and RUN_FAILURE events

    def of_kind(self, kind: str) -> list[StepTimes]:
        return [s for s in self.steps.values() if s.kind == kind]

    @property
    def in_process(self) -> bool:
        """No step ran in a process of its own."""
        return all(s.worker_starting is None for s in self.steps.values())


def read_run_times(dagster_home: Path, run_id: str) -> RunTimes:
    """Per-step timestamps from the run's event log (instance at `dagster_home`)."""
    from dagster import DagsterEventType as E

    with open_instance(dagster_home) as instance:
        records = instance.all_logs(run_id)
    steps: dict[str, StepTimes] = {}
    run: dict[str, float] = {}
    failures: list[str] = []
    firsts = {
        E.STEP_WORKER_STARTING: "worker_starting",
        E.STEP_WORKER_STARTED: "worker_started",
        E.STEP_START: "start",
    }
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        ts, kind = record.timestamp, event.event_type
        if kind == E.RUN_START:
            run["start"] = ts
        elif kind in (E.RUN_SUCCESS, E.RUN_FAILURE):
            run["end"] = ts
        elif kind in (E.RUN_ENQUEUED, E.RUN_STARTING):
            run.setdefault(kind.value, ts)
        if kind in (E.STEP_FAILURE, E.RUN_FAILURE):
            failures.append(f"{event.step_key or 'run'}: {_failure_text(event, record.message)}")
        if not event.step_key:
            continue
        step = steps.setdefault(event.step_key, StepTimes(event.step_key))
        if kind in firsts and getattr(step, firsts[kind]) is None:
            setattr(step, firsts[kind], ts)
        elif kind == E.STEP_SUCCESS:
            step.success = ts
    return RunTimes(
        run.get("start"),
        run.get("end"),
        run.get(E.RUN_ENQUEUED.value),
        run.get(E.RUN_STARTING.value),
        steps,
        failures,
    )


def _failure_text(event: Any, message: str | None) -> str:
    """The error of a STEP_FAILURE (its innermost cause), else the event's message."""
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    text = error.message if error is not None else message or ""
    return " ".join(text.split())[:300]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _gaps(steps: Sequence[StepTimes], a: str, b: str) -> list[float]:
    out = []
    for s in steps:
        x, y = getattr(s, a), getattr(s, b)
        if x is not None and y is not None:
            out.append(y - x)
    return out


@dataclass
class StepOverhead:
    """Median and max (seconds) of the phases of the steps of one kind."""

    kind: str
    count: int
    spawn: tuple[float, float]  # STEP_WORKER_STARTING -> STEP_WORKER_STARTED: process start
    init: tuple[float, float]  # STEP_WORKER_STARTED -> STEP_START: job, resources, inputs
    body: tuple[float, float]  # STEP_START -> STEP_SUCCESS: the op itself

    def line(self) -> str:
        def pair(name: str, values: tuple[float, float]) -> str:
            return f"{name} {values[0]:.2f} (max {values[1]:.2f})"

        return (
            f"{self.kind} steps ({self.count}), median (max) s: {pair('spawn', self.spawn)},"
            f" {pair('init', self.init)}, {pair('body', self.body)}"
        )


def single_steps_line(times: RunTimes) -> str:
    """spawn / init / body of the steps a run has once (plan, collect, publish)."""
    parts = []
    for kind in SINGLE_STEPS:
        o = step_overhead(times, kind)
        if o.count:
            values = (o.spawn[0], o.init[0], o.body[0])
            shown = " / ".join("-" if math.isnan(v) else f"{v:.1f}" for v in values)
            parts.append(f"{kind} {shown}")
    return "other steps, spawn / init / body s (- in-process): " + ", ".join(parts)


def step_overhead(times: RunTimes, kind: str) -> StepOverhead:
    steps = times.of_kind(kind)

    def stat(a: str, b: str) -> tuple[float, float]:
        gaps = _gaps(steps, a, b)
        return median(gaps), max(gaps, default=float("nan"))

    return StepOverhead(
        kind=kind,
        count=len(steps),
        spawn=stat("worker_starting", "worker_started"),
        init=stat("worker_started", "start"),
        body=stat("start", "success"),
    )


def cli_phases(run: CliRun, times: RunTimes, kind: str = RENDER) -> dict[str, float]:
    """Where a CLI run's wall time went: CLI start -> run start -> first `kind` step start ->
    last `kind` step success -> run end -> CLI exit (seconds; they add up to the wall time)."""
    steps = [s for s in times.of_kind(kind) if s.start is not None and s.success is not None]
    if not steps or times.run_start is None or times.run_end is None:
        return {}
    first = min(s.start for s in steps)  # type: ignore[type-var]
    last = max(s.success for s in steps)  # type: ignore[type-var]
    return {
        "cli_start_to_run_start": times.run_start - run.started_at,
        "run_start_to_first_render": first - times.run_start,  # type: ignore[operator]
        "render_phase": last - first,  # type: ignore[operator]
        "last_render_to_run_end": times.run_end - last,  # type: ignore[operator]
        "run_end_to_cli_exit": run.ended_at - times.run_end,
        "first_render_start": first,  # type: ignore[dict-item]
        "last_render_success": last,  # type: ignore[dict-item]
    }


def phases_line(phases: Mapping[str, float]) -> str:
    if not phases:
        return "phases: not in the event log"
    return (
        f"phases (s): CLI start -> run start {phases['cli_start_to_run_start']:.1f}, -> first"
        f" render step start {phases['run_start_to_first_render']:.1f}, -> last render step"
        f" success {phases['render_phase']:.1f}, -> run end"
        f" {phases['last_render_to_run_end']:.1f}, -> CLI exit"
        f" {phases['run_end_to_cli_exit']:.1f}"
    )


def account_bound(images: int, limit: int, latency: float) -> float:
    """The KLING account's bound: ceil(images/C) waves of L seconds."""
    return math.ceil(images / limit) * latency


# -- options, targets and output --------------------------------------------------------------


def bench_parser(
    doc: str,
    full_help: str,
    *,
    scenes: int | None = None,
    limit: int | None = None,
    latency: float | None = None,
    portraits: Sequence[str] = ("off", "on"),
    portraits_default: str | None = "off",
) -> argparse.ArgumentParser:
    """The options every benchmark has: --quick (its target case, the default) or --full,
    --json PATH (for run_all.py), and those of its case that it names: N (--scenes), C
    (--limit), L (--latency) with their defaults, and --portraits."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the target case (default)")
    mode.add_argument("--full", action="store_true", help=full_help)
    if scenes is not None:
        parser.add_argument("--scenes", type=int, default=scenes, help=f"N (default {scenes})")
    if limit is not None:
        parser.add_argument("--limit", type=int, default=limit, help=f"C (default {limit})")
    if latency is not None:
        parser.add_argument(
            "--latency", type=float, default=latency, help=f"L in s (default {latency:g})"
        )
    if portraits_default is not None:
        parser.add_argument(
            "--portraits",
            choices=portraits,
            default=portraits_default,
            help=f"character reference portraits (default {portraits_default})",
        )
    parser.add_argument("--json", help="write the results here (for run_all.py)")
    return parser


@dataclass
class Target:
    """One target of the issue: what it bounds, the bound, what this run measured."""

    name: str
    bound: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


def targets_table(targets: Sequence[Target]) -> str:
    return fmt_table(
        ["target", "bound", "measured", "verdict"],
        [[t.name, t.bound, t.measured, t.verdict] for t in targets],
    )


def finish(benchmark: str, json_path: str | None, targets: Sequence[Target], **details: Any) -> int:
    """Print the targets table with the machine's load, write the results for run_all.py
    (`--json PATH`); exit status 0 when every target is met, else 1."""
    machine = machine_line()
    print(f"\n{benchmark} targets ({machine}):")
    print(targets_table(targets), flush=True)
    if json_path:
        payload = {
            "benchmark": benchmark,
            "machine": machine,
            "targets": [asdict(t) for t in targets],
            **details,
        }
        Path(json_path).write_text(json.dumps(payload, indent=2, default=str))
    return 0 if all(t.passed for t in targets) else 1
