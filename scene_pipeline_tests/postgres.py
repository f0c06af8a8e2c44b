"""A throwaway PostgreSQL server for the tests marked `postgres`.

`initdb` into a temporary folder, `pg_ctl start` on a free port of 127.0.0.1 with password
authentication (so the tests go through the password path of deploy/dagster.yaml, like the
deployment), and everything removed afterwards. One server per test session; each test makes
its own database on it.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` system user
(Debian's package creates it), else as `nobody`.

Without PostgreSQL binaries the tests are skipped, unless SCENE_PIPELINE_REQUIRE_POSTGRES is
set (.ci/run sets it): then they fail, so that CI cannot go green by skipping them.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "SCENE_PIPELINE_REQUIRE_POSTGRES"
# Debian and Ubuntu keep the server binaries out of PATH, one folder per major version.
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
SUPERUSER = "dagster"
START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return name

    def dagster_env(self, dbname: str) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads, pointing at `dbname` on this server."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": dbname,
        }


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: from PATH, else the newest Debian one."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = [p for p in DEBIAN_BIN_DIRS.glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], user: tuple[int, int] | None, **kwargs: Any) -> None:
    as_user: dict[str, Any] = (
        {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    )
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, **as_user, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a fresh server, yield it, stop it and delete its files."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = (
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under"
            f" {DEBIAN_BIN_DIRS}/*/bin; install them (apt-get install postgresql)"
        )
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but there are {reason}", pytrace=False)
        pytest.skip(reason)

    user = _server_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server may run
    # as another user.
    root = Path(tempfile.mkdtemp(prefix="scene-pipeline-pg-", dir="/tmp" if user else None))
    data, log = root / "data", root / "server.log"
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    if user:
        os.chown(root, *user)
        os.chown(root / "pwfile", *user)
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                SUPERUSER,
                f"--pwfile={root / 'pwfile'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            user,
        )
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-h 127.0.0.1 -p {port} -k {root}"
                # A test database: durability is not wanted, speed is.
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                # Every run and step process of a run opens its own connections.
                " -c max_connections=300"
            )
            try:
                _run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "--pgdata",
                        str(data),
                        "--log",
                        str(log),
                        "--wait",
                        f"--timeout={START_TIMEOUT_SECONDS}",
                        "-o",
                        options,
                        "start",
                    ],
                    user,
                )
            except RuntimeError:
                # Another process may have taken the port between probing and binding.
                if attempt == 2:
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{tail}") from None
                continue
            started = True
            break
        yield PostgresServer(host="127.0.0.1", port=port, user=SUPERUSER, password=password)
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "--pgdata", str(data), "-m", "immediate", "stop"], user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[PostgresServer]:
    """The `postgres` fixture: a test module imports this function to use it (one server per
    module and pytest process; each test makes its own database on it)."""
    with running_postgres() as server:
        yield server
