"""One tick of the inbox: what is new under the prefix, and what becomes of it.

Each tick lists the inbox prefix (paginated, sub-folders included) and handles the objects
whose (key, ETag) it has not seen, oldest LastModified first, at most `max_per_tick`, and
stops starting new reads once it has used `budget_seconds` (well under the daemon's 60 s
sensor timeout); the rest wait for the next tick, nothing is skipped:

- larger than 5 MiB by its listed size: rejected without being downloaded;
- valid: the accepted copy is stored (the newest version of a script wins, core/intake.py),
  and a run is asked for unless the script is already up to date;
- invalid: the report goes to `scripts/rejected/{name}.error.json`, once;
- unreadable for now: no report, the object stays unseen and is retried next tick (objects
  that keep failing are queued after fresh ones, so they never block them).

An object is recorded with the ETag of the bytes actually read, so an object overwritten
between the listing and the read is not handled twice with the same bytes.
The tick never writes, moves or deletes anything under the inbox.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from scene_pipeline.contract.outputs import RejectionReport, SourceRef
from scene_pipeline.core.inbox_state import InboxCursor, SeenSet, next_failures, seen_digest
from scene_pipeline.core.intake import (
    is_oversize,
    oversize_rejection,
    store_accepted,
    validate_bytes,
    write_rejection_once,
)
from scene_pipeline.models import AcceptedScript
from scene_pipeline.settings import RESERVED_PREFIXES
from scene_pipeline.storage import Bucket, ObjectInfo, StorageError, layout

READ_WORKERS = 16
CHUNK = 64
MAX_RUN_KEY_CHARS = 200


def run_key_for(key: str, etag: str) -> str:
    run_key = f"{key}:{etag.strip(chr(34))}"
    if len(run_key) > MAX_RUN_KEY_CHARS:
        return "inbox-sha256:" + hashlib.sha256(run_key.encode()).hexdigest()
    return run_key


def is_inbox_object(info: ObjectInfo, prefix: str) -> bool:
    return (
        info.key.startswith(prefix)
        and not info.key.endswith("/")
        and not any(info.key.startswith(r) for r in RESERVED_PREFIXES)
    )


@dataclass(frozen=True)
class Acceptance:
    """A script version this tick stored."""

    accepted: AcceptedScript
    key: str
    etag: str
    run_needed: bool
    why: str


@dataclass
class TickOutcome:
    cursor: str = ""
    skip_message: str | None = None
    accepted: list[Acceptance] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (etag, why)
    deferred: int = 0
    summary: str = ""


@dataclass(frozen=True)
class _Read:
    info: ObjectInfo
    etag: str
    result: AcceptedScript | RejectionReport | StorageError


def evaluate_inbox(
    bucket: Bucket,
    prefix: str,
    raw_cursor: str | None,
    log: Any,
    *,
    max_per_tick: int,
    budget_seconds: float,
    needs_run: Callable[[AcceptedScript], tuple[bool, str]],
) -> TickOutcome:
    """Everything one tick decides; the sensor turns it into a SensorResult.

    `needs_run(accepted)`: (whether a run is due, why); `log` has info and warning.
    """
    started = time.monotonic()
    cursor = InboxCursor.from_json(raw_cursor)
    listing = [i for i in bucket.list(prefix) if is_inbox_object(i, prefix)]
    if seen_digest((i.key, i.etag) for i in listing) == cursor.digest:
        message = f"{len(listing)} inbox objects under {prefix}, all handled before"
        return TickOutcome(cursor=raw_cursor or cursor.to_json(), skip_message=message)

    seen = SeenSet.load(bucket)
    if seen is None:
        if cursor.generation > 0:
            log.warning(
                f"{layout.INBOX_SEEN_KEY} is missing or unreadable: every inbox object is handled"
                " again (run keys prevent duplicate runs, existing reports are not rewritten)"
            )
        seen = SeenSet()
    committed = seen.committed(cursor.generation)
    new = [i for i in listing if committed.get(i.key) != i.etag]
    # Fresh objects first, oldest first; objects whose reads keep failing go last.
    new.sort(key=lambda i: (cursor.failures_of(i) > 0, i.last_modified, i.key))
    batch = new[:max_per_tick]
    # The budget counts from the tick's start, but a slow listing (a huge S3 inbox) still
    # leaves a quarter of it for reading, so that the inbox always makes progress.
    deadline = max(started + budget_seconds, time.monotonic() + budget_seconds / 4)
    reads = _read_within_budget(bucket, batch, deadline)

    outcome = TickOutcome(deferred=len(new) - len(reads))
    done = _decide(bucket, prefix, reads, outcome, log, needs_run)
    _commit(bucket, prefix, cursor, seen, listing, done, outcome)
    outcome.summary = (
        f"{len(listing)} inbox objects, {len(new)} new: {len(outcome.accepted)} accepted"
        f" ({sum(1 for a in outcome.accepted if a.run_needed)} need a run),"
        f" {len(outcome.rejected)} rejected, {len(outcome.superseded)} older than the stored"
        f" version, {len(outcome.failed)} failed (retried next tick),"
        f" {outcome.deferred} left for the next ticks ({time.monotonic() - started:.1f} s)"
    )
    return outcome


def _read_within_budget(
    bucket: Bucket, batch: Sequence[ObjectInfo], deadline: float
) -> list[_Read]:
    def read(info: ObjectInfo) -> _Read:
        source = SourceRef(key=info.key, etag=info.etag)
        if is_oversize(info.size):
            return _Read(info, info.etag, oversize_rejection(source, info.size))
        try:
            data, etag = bucket.read_object(info.key)
        except StorageError as err:  # ObjectNotFound too: deleted since the listing
            return _Read(info, info.etag, err)
        # The ETag of the bytes read: an overwrite since the listing is recorded as what it is.
        return _Read(
            info, etag, validate_bytes(data, SourceRef(key=info.key, etag=etag), info.last_modified)
        )

    reads: list[_Read] = []
    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        for start in range(0, len(batch), CHUNK):
            if time.monotonic() >= deadline:
                break
            reads.extend(pool.map(read, batch[start : start + CHUNK]))
    return reads


def _decide(
    bucket: Bucket,
    prefix: str,
    reads: list[_Read],
    outcome: TickOutcome,
    log: Any,
    needs_run: Callable[[AcceptedScript], tuple[bool, str]],
) -> dict[str, str]:
    """Store accepted copies, write reports; returns key -> ETag of the objects handled."""
    versions, reports = _group_reads(reads, outcome)
    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        accepted = list(pool.map(lambda g: _accept(bucket, g, needs_run), versions.values()))
        written = list(pool.map(lambda item: _reject(bucket, prefix, item), reports))
    done: dict[str, str] = {}
    _note_accepted(accepted, outcome, done)
    _note_rejected(written, outcome, done, log)
    return done


def _group_reads(
    reads: list[_Read], outcome: TickOutcome
) -> tuple[dict[str, list[_Read]], list[_Read]]:
    """The valid reads by script id and the rejected ones; failed reads go to `outcome`."""
    versions: dict[str, list[_Read]] = {}
    reports: list[_Read] = []
    for item in reads:
        if isinstance(item.result, StorageError):
            outcome.failed[item.info.key] = (item.info.etag, f"read failed: {item.result}")
        elif isinstance(item.result, RejectionReport):
            reports.append(item)
        else:
            versions.setdefault(item.result.script.script_id, []).append(item)
    return versions, reports


def _accept(
    bucket: Bucket,
    group: list[_Read],
    needs_run: Callable[[AcceptedScript], tuple[bool, str]],
) -> tuple[list[_Read], Acceptance | None | StorageError]:
    # Of one script's versions in this tick only the newest is stored (and run).
    newest = max(group, key=lambda r: (r.info.last_modified, r.info.key))
    assert isinstance(newest.result, AcceptedScript)
    try:
        stored = store_accepted(bucket, newest.result)
        if not stored.stored:
            return group, None
        # A new script has nothing drawn: it is due without reading what a run would reuse.
        due, why = (True, "a new script") if stored.new else needs_run(newest.result)
        return group, Acceptance(newest.result, newest.info.key, newest.etag, due, why)
    except StorageError as err:
        return group, err


def _reject(bucket: Bucket, prefix: str, item: _Read) -> tuple[_Read, bool | StorageError]:
    assert isinstance(item.result, RejectionReport)
    try:
        key = layout.rejected_key(item.info.key, prefix)
        return item, write_rejection_once(bucket, key, item.result)
    except StorageError as err:
        return item, err


def _note_accepted(
    accepted: list[tuple[list[_Read], Acceptance | None | StorageError]],
    outcome: TickOutcome,
    done: dict[str, str],
) -> None:
    for group, result in accepted:
        if isinstance(result, StorageError):
            for item in group:
                outcome.failed[item.info.key] = (item.info.etag, f"storing failed: {result}")
            continue
        for item in group:
            done[item.info.key] = item.etag
            if result is None or item.info.key != result.key:
                outcome.superseded.append(item.info.key)
        if result is not None:
            outcome.accepted.append(result)


def _note_rejected(
    written: list[tuple[_Read, bool | StorageError]],
    outcome: TickOutcome,
    done: dict[str, str],
    log: Any,
) -> None:
    for item, result in written:
        if isinstance(result, StorageError):
            outcome.failed[item.info.key] = (item.info.etag, f"writing the report failed: {result}")
            continue
        done[item.info.key] = item.etag
        outcome.rejected.append(item.info.key)
        report = item.result
        if result and isinstance(report, RejectionReport) and report.errors:
            first = report.errors[0]
            log.info(f"rejected {item.info.key}: {len(report.errors)} error(s), first {first}")


def _commit(
    bucket: Bucket,
    prefix: str,
    cursor: InboxCursor,
    seen: SeenSet,
    listing: list[ObjectInfo],
    done: dict[str, str],
    outcome: TickOutcome,
) -> None:
    """Write the next generation of the seen set (when it changed) and make the cursor."""
    listed = {i.key for i in listing}
    next_generation = cursor.generation + 1
    # The committed entries still listed, plus what this tick handled. Entries of a tick
    # whose result was never stored (generation > the cursor's) are dropped.
    entries = {
        k: (e, g)
        for k, (e, g) in seen.entries.items()
        if g <= cursor.generation and k in listed and k not in done
    }
    entries.update({k: (etag, next_generation) for k, etag in done.items()})
    generation = cursor.generation
    if done or len(entries) != len(seen.committed(cursor.generation)):
        SeenSet(next_generation, entries).save(bucket, prefix)
        generation = next_generation
    failures = next_failures(cursor, outcome.failed, listed, set(done))
    outcome.cursor = InboxCursor(
        generation=generation,
        seen=len(entries),
        digest=seen_digest((k, e) for k, (e, _) in entries.items()),
        failures=failures,
    ).to_json()
