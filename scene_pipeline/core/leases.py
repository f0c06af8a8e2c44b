"""One holder per script at a time, whatever started the run (CLI, sensor, UI, schedule).

A lease is an object at `pipeline/leases/{script_id}.json`, created with a conditional PUT
(`If-None-Match: *`) and taken over only when expired (`If-Match` on the expired one's
ETag), so two processes can never both believe they hold it. Holders renew it while they
work (a background renewal every minute); one that was killed stops renewing and its lease
expires after `LEASE_SECONDS`, so nothing is blocked for ever. A CLI lease names its host and
process: on the same host, a lease whose process is gone is taken over at once.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from scene_pipeline.contract.outputs import utc_now
from scene_pipeline.storage import Bucket, StorageError, layout

# Longer than any quiet stretch of a live holder: renewals come at least every minute.
LEASE_SECONDS = 600
RENEW_EVERY_SECONDS = 60


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True)

    script_id: str
    token: str
    holder: str  # what holds it, for operators: "cli pid 4711 on host-a", "run 3f2a..."
    acquired_at: datetime
    expires_at: datetime
    host: str | None = None  # a CLI's host and process id: a dead one frees the lease
    pid: int | None = None
    run_id: str | None = None  # a Dagster run's root run id: a finished one frees the lease

    def dead_here(self) -> bool:
        """Held by a process of this host that no longer exists."""
        if self.host != socket.gethostname() or not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@dataclass(frozen=True)
class Busy:
    """The script is held by someone else."""

    lease: Lease

    def message(self) -> str:
        held = self.lease
        return (
            f"script {held.script_id} is busy: {held.holder} holds it since"
            f" {held.acquired_at:%Y-%m-%dT%H:%M:%SZ} (until {held.expires_at:%H:%M:%SZ} unless"
            " renewed)"
        )


def new_token() -> str:
    return secrets.token_hex(8)


def describe_cli_holder() -> str:
    return f"scene-pipeline pid {os.getpid()} on {socket.gethostname()}"


def acquire(
    bucket: Bucket,
    script_id: str,
    token: str,
    holder: str,
    now: datetime | None = None,
    *,
    this_process: bool = False,
    run_id: str | None = None,
    finished: Callable[[Lease], bool] | None = None,
) -> Lease | Busy:
    """Take the script's lease for `token` (or renew it when `token` already holds it).

    `this_process`: the lease names this host and process (a CLI); `run_id`: the Dagster run
    that holds it; `finished(lease)`: whether another holder is known to be over (its run
    ended), so that its lease is taken over at once rather than when it expires."""
    now = now or utc_now()
    key = layout.lease_key(script_id)
    lease = Lease(
        script_id=script_id,
        token=token,
        holder=holder,
        acquired_at=now,
        expires_at=now + timedelta(seconds=LEASE_SECONDS),
        host=socket.gethostname() if this_process else None,
        pid=os.getpid() if this_process else None,
        run_id=run_id,
    )
    for _ in range(4):
        current, etag = bucket.read_model_versioned(key, Lease)
        if current is None:
            if bucket.put_if_absent(key, lease):
                return lease
            continue
        if current.token == token:
            # A renewal (by the holder or a step of its run) keeps who holds it.
            renewed = current.model_copy(update={"expires_at": lease.expires_at})
            if bucket.replace_if_unchanged(key, renewed, etag or ""):
                return renewed
            continue
        over = current.dead_here() or (finished is not None and finished(current))
        if current.expires_at > now and not over:
            return Busy(current)
        if bucket.replace_if_unchanged(key, lease, etag or ""):
            return lease
    raise StorageError(f"{key}: the lease kept changing while it was being taken")


def release(bucket: Bucket, script_id: str, token: str) -> None:
    """Give the lease up, if `token` still holds it."""
    key = layout.lease_key(script_id)
    current, etag = bucket.read_model_versioned(key, Lease)
    if current is not None and current.token == token:
        expired = current.model_copy(update={"expires_at": utc_now() - timedelta(seconds=1)})
        bucket.replace_if_unchanged(key, expired, etag or "")


def holder(bucket: Bucket, script_id: str) -> Lease | None:
    """The live lease of a script, if any."""
    current = bucket.read_model(layout.lease_key(script_id), Lease)
    if current is None or current.expires_at <= utc_now():
        return None
    return current
