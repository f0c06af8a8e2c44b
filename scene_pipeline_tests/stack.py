"""docker-compose.yml's Dagster services as local processes (no Docker daemon here).

What compose would do, read from the files themselves: each service's `command` and
`environment` from docker-compose.yml (the `x-` anchors merged by YAML, `${VAR:-default}` and
`${VAR:?message}` interpolated from a `.env`-like mapping, variables listed without a value
taken from it or left unset), the image's `ENV` from the Dockerfile, the instance config the
image installs (deploy/dagster.yaml copied into DAGSTER_HOME) and the workspace the webserver
and the daemon read (deploy/workspace.yaml). Only the container network is translated: host
names become 127.0.0.1 and ports become free local ports.

Each service runs in its own process group (a run of the code server, its forkserver and its
step processes are in the code server's group), with stdout and stderr in files; `stop`
sends SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
# Where the Dockerfile puts the repository (WORKDIR, COPY deploy ./deploy).
CONTAINER_APP = "/opt/dagster/app"

T = TypeVar("T")


class ComposeError(AssertionError):
    """docker-compose.yml asks for something compose itself would refuse."""


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))


_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, dotenv: Mapping[str, str]) -> str:
    """Compose's interpolation of `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?error}`, `${VAR?error}` and `$$` against `dotenv` (.env and the shell)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group() == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        current = dotenv.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise ComposeError(f"compose refuses to start: {name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def service_environment(service: Mapping[str, Any], dotenv: Mapping[str, str]) -> dict[str, str]:
    """The variables compose sets in the service's container (before the image's ENV)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # the `- NAME=value` / `- NAME` form
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    env: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:  # passed through from .env or the shell, unset when neither has it
            if name in dotenv:
                env[name] = dotenv[name]
            continue
        env[name] = interpolate(str(value), dotenv)
    return env


def image_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The `ENV name=value ...` instructions of the Dockerfile."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text("utf-8"))
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.strip().startswith("ENV "):
            for pair in shlex.split(line.strip()[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with the value after `flag` replaced (the flag must be there)."""
    if flag not in argv:
        raise AssertionError(f"{flag} not in the compose command {argv}")
    index = argv.index(flag) + 1
    return [*argv[:index], value, *argv[index + 1 :]]


def host_path(container_path: str) -> Path:
    """A path of the image's application folder, in this checkout."""
    if not container_path.startswith(CONTAINER_APP + "/"):
        raise AssertionError(f"{container_path} is not under the image's {CONTAINER_APP}")
    return REPO / container_path.removeprefix(CONTAINER_APP + "/")


def executable(name: str) -> str:
    """A console script of the image, from this virtualenv."""
    path = BIN / name
    if not path.is_file():
        raise AssertionError(f"{name} is not installed in {BIN}")
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """One compose service as a process group, its output in `logs/<name>.out|.err`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def stdout(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def stderr(self) -> Path:
        return self.logs / f"{self.name}.err"

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def output(self) -> str:
        return "".join(
            p.read_text("utf-8", "replace") for p in (self.stdout, self.stderr) if p.exists()
        )

    def tail(self, lines: int = 25) -> str:
        text = self.output().splitlines()[-lines:]
        return f"--- {self.name} (last {len(text)} lines) ---\n" + "\n".join(text)

    def stop(self, grace_seconds: float = 20) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace_seconds`."""
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _group_alive(pgid):
            self.process.poll()  # reap the leader, else it stays a zombie of the group
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (of this user) whose environment has `name=value`: what a stack with a
    DAGSTER_HOME of its own may have left behind outside its process groups."""
    marker = f"{name}={value}".encode() + b"\0"
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        if pid == os.getpid():
            continue
        try:
            if marker in environ.read_bytes() + b"\0":
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(pid)
        except OSError:
            continue
    return found


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    services: Iterable[Service] = (),
    interval: float = 0.5,
) -> T:
    """Poll `check` until it returns something other than None/False; fail after `timeout`
    seconds saying what was awaited (`what`), or at once when a service process exited,
    with the tail of every service's output."""
    services = list(services)
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        dead = [s for s in services if s.exited() is not None]
        if dead or time.monotonic() > deadline:
            described = what() if callable(what) else what
            reason = (
                f"{', '.join(f'{s.name} exited {s.exited()}' for s in dead)} while waiting for"
                if dead
                else f"timed out after {timeout:g} s waiting for"
            )
            tails = "\n".join(s.tail() for s in services)
            raise AssertionError(f"{reason} {described}\n{tails}")
        time.sleep(interval)
