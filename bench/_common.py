"""Shared helpers of the benchmarks: fake servers, scripts, temporary Dagster homes, CLI runs,
event-log analysis and process-tree sampling. Network only to 127.0.0.1."""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(REPO) not in sys.path:  # scene_pipeline_tests is not installed, only importable from here
    sys.path.insert(0, str(REPO))

from scene_pipeline_tests.fakes.kling import FakeKlingServer  # noqa: E402
from scene_pipeline_tests.fakes.openai import FakeOpenAIServer  # noqa: E402
from scene_pipeline_tests.resilience import script_document, write_script  # noqa: E402,F401

CLI = str(Path(sys.executable).with_name("scene-pipeline"))

# Every setting that could switch a run to real services or another folder: never inherited.
PIPELINE_ENV = (
    "S3_BUCKET_NAME",
    "AWS_ENDPOINT_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "OPENAI_IMAGES_API_KEY",
    "OPENAI_IMAGES_BASE_URL",
    "KLING_ACCESS_KEY",
    "KLING_SECRET_KEY",
    "KLING_API_BASE_URL",
    "KLING_MAX_CONCURRENCY",
    "KLING_POLL_INTERVAL_SECONDS",
    "KLING_TASK_TIMEOUT_SECONDS",
    "SCENE_PIPELINE_IMAGE_PROVIDER",
    "SCENE_PIPELINE_LOCAL_DIR",
    "SCENE_PIPELINE_INBOX_PREFIX",
    "SCENE_PIPELINE_INBOX_MAX_PER_TICK",
    "SCENE_PIPELINE_INBOX_INTERVAL_SECONDS",
    "DAGSTER_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)

NOOP_COMPUTE_LOGS = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# -- machine ----------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_line() -> str:
    one, five, fifteen = load_average()
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.1f} GiB RAM,"
        f" load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"
    )


# -- scripts ----------------------------------------------------------------------------------


# -- fakes and environments -------------------------------------------------------------------


@contextmanager
def fake_providers(
    latency: float, limit: int
) -> Iterator[tuple[FakeKlingServer, FakeOpenAIServer]]:
    """The fake KLING (latency per task, account limit) and the fake OpenAI on 127.0.0.1."""
    with FakeKlingServer(task_latency_seconds=latency, concurrency_limit=limit) as kling:
        with FakeOpenAIServer() as openai:
            yield kling, openai


def provider_env(
    kling: FakeKlingServer,
    openai: FakeOpenAIServer,
    storage_dir: Path,
    concurrency: int,
    poll_interval: float,
    dagster_home: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    env = base_env(
        SCENE_PIPELINE_LOCAL_DIR=str(storage_dir),
        OPENAI_API_KEY=openai.api_key,
        OPENAI_BASE_URL=openai.base_url,
        KLING_ACCESS_KEY=kling.options.access_key,
        KLING_SECRET_KEY=kling.options.secret_key,
        KLING_API_BASE_URL=kling.url,
        KLING_MAX_CONCURRENCY=str(concurrency),
        KLING_POLL_INTERVAL_SECONDS=str(poll_interval),
        **extra,
    )
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def write_dagster_yaml(
    home: Path,
    pool_limit: int,
    max_concurrent_runs: int | None = None,
    noop_compute_logs: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """dagster.yaml of a temporary instance (JSON is YAML): the kling pool limit, run limit."""
    home.mkdir(parents=True, exist_ok=True)
    concurrency: dict[str, Any] = {"pools": {"default_limit": pool_limit, "granularity": "op"}}
    if max_concurrent_runs is not None:
        concurrency["runs"] = {"max_concurrent_runs": max_concurrent_runs}
    config: dict[str, Any] = {"concurrency": concurrency, "telemetry": {"enabled": False}}
    if noop_compute_logs:
        config["compute_logs"] = NOOP_COMPUTE_LOGS
    config.update(extra or {})
    path = home / "dagster.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
class TreeSample:
    """Peaks seen by a ProcessTreeSampler."""

    samples: int = 0
    peak_total_rss_kb: int = 0
    peak_total_pss_kb: int = 0
    peak_processes: int = 0
    # kind -> (peak VmHWM of one process in kB, most processes of this kind at once)
    kinds: dict[str, list[int]] = field(default_factory=dict)
    # pid -> (kind, VmHWM kB)
    hwm: dict[int, tuple[str, int]] = field(default_factory=dict)


class ProcessTreeSampler:
    """Samples the process tree under `root` every `interval` seconds from /proc: the sum of
    VmRSS (shared pages counted once per process), the sum of PSS (shared pages divided among
    the processes sharing them: the real footprint) and each process's VmHWM."""

    def __init__(self, root: int, interval: float = 0.25, pss: bool = True) -> None:
        self.root, self.interval, self.pss = root, interval, pss
        self.result = TreeSample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._kinds: dict[int, str] = {}

    def __enter__(self) -> ProcessTreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        pids = process_tree(self.root)
        total_rss = total_pss = 0
        counts: dict[str, int] = {}
        for pid in pids:
            status = _status(pid)
            if not status:
                continue
            kind = self._kinds.get(pid)
            if kind is None:
                parent = self._kinds.get(int(status.get("PPid", "0") or 0))
                kind = self._kinds[pid] = classify(_cmdline(pid), parent)
            rss, hwm = _kb(status.get("VmRSS", "")), _kb(status.get("VmHWM", ""))
            total_rss += rss
            if self.pss:
                total_pss += _pss_kb(pid)
            counts[kind] = counts.get(kind, 0) + 1
            previous = self.result.hwm.get(pid, (kind, 0))[1]
            self.result.hwm[pid] = (kind, max(previous, hwm))
            entry = self.result.kinds.setdefault(kind, [0, 0])
            entry[0] = max(entry[0], hwm)
        for kind, count in counts.items():
            entry = self.result.kinds.setdefault(kind, [0, 0])
            entry[1] = max(entry[1], count)
        r = self.result
        r.samples += 1
        r.peak_total_rss_kb = max(r.peak_total_rss_kb, total_rss)
        r.peak_total_pss_kb = max(r.peak_total_pss_kb, total_pss)
        r.peak_processes = max(r.peak_processes, len(pids))

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
    tree: TreeSample | None = None
    cpu: float | None = None  # user + system seconds of the whole process tree


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
    """`scene-pipeline run FILE` as a user runs it; killed with its process group on errors
    and Ctrl-C."""
    subreaper = become_subreaper()
    cpu_before = children_cpu()
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
    except BaseException:
        kill_group(proc)
        raise
    wall = time.perf_counter() - started
    if subreaper:
        reap_orphans()
    match = RUN_LINE.search(stderr)
    return CliRun(
        wall=wall,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        run_id=match.group(1) if match else None,
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
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
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


# -- event log --------------------------------------------------------------------------------


@dataclass
class StepTimes:
    key: str
    worker_starting: float | None = None  # parent: about to launch the step process
    worker_started: float | None = None  # child: the step process is running
    resource_init_started: float | None = None
    resource_init_success: float | None = None
    start: float | None = None  # STEP_START: the op's body begins
    success: float | None = None  # STEP_SUCCESS

    @property
    def kind(self) -> str:
        return self.key.split("[", 1)[0].rsplit(".", 1)[-1]


@dataclass
class RunTimes:
    run_start: float | None
    run_end: float | None
    steps: dict[str, StepTimes]

    def of_kind(self, kind: str) -> list[StepTimes]:
        return [s for s in self.steps.values() if s.kind == kind]


def read_run_times(dagster_home: Path, run_id: str) -> RunTimes:
    """Per-step timestamps from the run's event log (instance at `dagster_home`)."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.all_logs(run_id)
    steps: dict[str, StepTimes] = {}
    run_start = run_end = None
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        ts = record.timestamp
        kind = event.event_type
        if kind == DagsterEventType.RUN_START:
            run_start = ts
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            run_end = ts
        key = event.step_key
        if not key:
            continue
        step = steps.setdefault(key, StepTimes(key))
        if kind == DagsterEventType.STEP_WORKER_STARTING:
            step.worker_starting = step.worker_starting or ts
        elif kind == DagsterEventType.STEP_WORKER_STARTED:
            step.worker_started = step.worker_started or ts
        elif kind == DagsterEventType.RESOURCE_INIT_STARTED:
            step.resource_init_started = step.resource_init_started or ts
        elif kind == DagsterEventType.RESOURCE_INIT_SUCCESS:
            step.resource_init_success = ts
        elif kind == DagsterEventType.STEP_START:
            step.start = step.start or ts
        elif kind == DagsterEventType.STEP_SUCCESS:
            step.success = ts
    return RunTimes(run_start, run_end, steps)


def _gaps(steps: Sequence[StepTimes], a: str, b: str) -> list[float]:
    out = []
    for s in steps:
        x, y = getattr(s, a), getattr(s, b)
        if x is not None and y is not None:
            out.append(y - x)
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class StepOverhead:
    """Medians (seconds) of the phases of the mapped steps of one kind."""

    kind: str
    count: int
    spawn: float  # STEP_WORKER_STARTING -> STEP_WORKER_STARTED: process start (forkserver)
    init: float  # STEP_WORKER_STARTED -> STEP_START: job load, resource init, input load
    body: float  # STEP_START -> STEP_SUCCESS: the op itself (incl. input/output handling)
    total: float  # STEP_WORKER_STARTING -> STEP_SUCCESS (a pool slot is held this long)


def step_overhead(times: RunTimes, kind: str) -> StepOverhead:
    steps = times.of_kind(kind)
    return StepOverhead(
        kind=kind,
        count=len(steps),
        spawn=median(_gaps(steps, "worker_starting", "worker_started")),
        init=median(_gaps(steps, "worker_started", "start")),
        body=median(_gaps(steps, "start", "success")),
        total=median(_gaps(steps, "worker_starting", "success")),
    )


def account_bound(scenes: int, limit: int, latency: float) -> float:
    """The KLING account's bound: ceil(N/C) waves of L seconds."""
    return math.ceil(scenes / limit) * latency


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


def emit_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Write a benchmark's results for run_all.py (`--json PATH`)."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
