"""`script_inbox_sensor`: turns every new object in the inbox into an accepted script and a run.

Each tick lists the inbox prefix (paginated, sub-folders included) and handles every object
whose (key, ETag) it has not seen before, oldest LastModified first, at most
`max_per_tick` of them per tick (the rest wait for the next ticks; nothing is skipped):

- larger than 5 MiB by its listed size: rejected without being downloaded;
- valid: the accepted copy is written (see scene_pipeline/intake.py for which version wins)
  and the tick's one `SensorResult` adds the script ids to the `scripts` partitions and asks
  for one run per script, `run_key = "<key>:<etag>"` (a SHA-256 of it when longer than 200
  characters), so that Dagster never starts two runs for one inbox object;
- invalid: the rejection report goes to `scripts/rejected/<name>.error.json`, once;
- unreadable for now (throttling, 5xx, timeout, after the S3 client's own retries): a warning,
  no report, and the object stays unseen, so the next tick tries it again. Objects that keep
  failing are counted in the cursor and queued after fresh objects, so they never block them.

The sensor only lists and GETs under the inbox; it never writes, moves or deletes there.
Keys under `results/`, `pipeline/` and `scripts/rejected/` are never treated as inbox objects,
and folder markers (keys ending in "/") are ignored.

Seen set and cursor (the trade-off):

- The seen set, every handled key with its ETag, lives in the bucket at
  `pipeline/inbox/seen.json` (about 80 bytes per object: 780 kB for 10,000). It is not in the
  cursor because Dagster stores the cursor with every tick: 10,000 keys would be copied into
  the database every 30 seconds.
- The cursor stays under a few hundred bytes: a generation number, the size and a SHA-256
  digest of the committed seen set, and the objects whose reads are failing right now.
- A tick whose listing has the cursor's digest has nothing new and stops there: one paginated
  listing and a hash, no GET. Otherwise it reads the seen set (one GET), handles the new
  objects and writes the next generation of the seen set, each entry stamped with the
  generation that added it.
- The new generation only counts once Dagster has stored the tick's result with its cursor.
  Entries stamped with a later generation than the cursor's come from a tick whose result
  was lost; they are treated as unseen and handled again (Dagster skips a run key it has
  already used, and `write_rejection_once` does not rewrite a report for the same object).
- A LastModified watermark was not used: it cannot find an old key overwritten in place
  without a second structure, and an object can show up in a listing after a later
  watermark was recorded (a multipart upload's LastModified is when the upload started).
  The exact seen set finds both, at the cost of one object and one GET per tick with work.
- One sensor per bucket writes the seen set. If it is deleted, every inbox object is handled
  again, with the same run keys and without second reports.

Settings, read from the environment when the code location loads:
SCENE_PIPELINE_INBOX_PREFIX (default "scripts/incoming/"),
SCENE_PIPELINE_INBOX_MAX_PER_TICK (default 100), SCENE_PIPELINE_INBOX_INTERVAL_SECONDS
(default 30). With the local storage backend the same keys are read under
SCENE_PIPELINE_LOCAL_DIR: the `storage` resource hides the difference.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from scene_pipeline.bucket import Bucket
from scene_pipeline.constants import DEFAULT_INBOX_PREFIX, TAG_LAUNCHED_BY
from scene_pipeline.contract.outputs import RejectionReport, SourceRef
from scene_pipeline.environment import ConfigurationError, env_int
from scene_pipeline.intake import (
    Accepted,
    is_oversize,
    oversize_rejection,
    store_accepted,
    validate_bytes,
    write_rejection_once,
)
from scene_pipeline.jobs import scene_job
from scene_pipeline.models import AcceptedScript
from scene_pipeline.partitions import script_partitions
from scene_pipeline.resources.storage import StorageResource
from scene_pipeline.storage import ObjectInfo, ObjectNotFound, ObjectStore, StorageError, layout

INBOX_PREFIX_ENV = "SCENE_PIPELINE_INBOX_PREFIX"
MAX_PER_TICK_ENV = "SCENE_PIPELINE_INBOX_MAX_PER_TICK"
INTERVAL_ENV = "SCENE_PIPELINE_INBOX_INTERVAL_SECONDS"
DEFAULT_MAX_PER_TICK = 100
DEFAULT_INTERVAL_SECONDS = 30

SEEN_KEY = f"{layout.PIPELINE_PREFIX}inbox/seen.json"
# Prefixes the pipeline writes itself: never inbox, whatever the inbox prefix is.
RESERVED_PREFIXES = (layout.RESULTS_PREFIX, layout.PIPELINE_PREFIX, layout.REJECTED_PREFIX)
# S3 GETs are latency-bound; a few at once keep a 100-object tick short.
READ_WORKERS = 8
MAX_RUN_KEY_CHARS = 200
# The cursor never tracks more failing objects than this (the oldest are then forgotten and
# simply retried as fresh objects).
MAX_TRACKED_FAILURES = 200

TAG_INBOX_KEY = "scene_pipeline/inbox_key"
TAG_INBOX_ETAG = "scene_pipeline/inbox_etag"


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxSettings:
    prefix: str = DEFAULT_INBOX_PREFIX
    max_per_tick: int = DEFAULT_MAX_PER_TICK
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "InboxSettings":
        prefix = env.get(INBOX_PREFIX_ENV, "").strip() or DEFAULT_INBOX_PREFIX
        return cls(
            prefix=check_inbox_prefix(prefix),
            max_per_tick=env_int(env, MAX_PER_TICK_ENV, DEFAULT_MAX_PER_TICK, minimum=1),
            interval_seconds=env_int(env, INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS, minimum=1),
        )


def check_inbox_prefix(prefix: str) -> str:
    """The prefix, or ConfigurationError if it could make the sensor read the pipeline's own
    objects (or everything in the bucket)."""
    problem = None
    segments = prefix.split("/")[:-1]
    if not prefix.endswith("/"):
        problem = 'must end with "/"'
    elif prefix.startswith("/") or any(s in ("", ".", "..") for s in segments):
        problem = 'must be a relative key prefix such as "scripts/incoming/"'
    else:
        for reserved in RESERVED_PREFIXES:
            if prefix.startswith(reserved) or reserved.startswith(prefix):
                problem = f"overlaps {reserved!r}, where the pipeline writes its own objects"
                break
    if problem:
        raise ConfigurationError(f"{INBOX_PREFIX_ENV}={prefix!r} {problem}")
    return prefix


# -- cursor and seen set ----------------------------------------------------------------------


def seen_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """Order-independent digest of a set of (key, etag)."""
    h = hashlib.sha256()
    for key, etag in sorted(pairs):
        h.update(key.encode())
        h.update(b"\x00")
        h.update(etag.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class InboxCursor:
    """What Dagster stores per tick: small, whatever the size of the inbox."""

    generation: int = 0
    seen: int = 0
    digest: str = ""
    # key -> (etag, consecutive read failures) of objects that are failing right now.
    failures: dict[str, tuple[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "generation": self.generation,
                "seen": self.seen,
                "digest": self.digest,
                "failures": {k: list(v) for k, v in sorted(self.failures.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | None) -> "InboxCursor":
        """Parse a cursor; an empty or unknown one starts over (every object is unseen)."""
        if not raw:
            return cls()
        try:
            value = json.loads(raw)
            if value.get("v") != 1:
                return cls()
            return cls(
                generation=int(value["generation"]),
                seen=int(value["seen"]),
                digest=str(value["digest"]),
                failures={str(k): (str(e), int(n)) for k, (e, n) in value["failures"].items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def failures_of(self, info: ObjectInfo) -> int:
        etag, count = self.failures.get(info.key, ("", 0))
        return count if etag == info.etag else 0


@dataclass
class SeenSet:
    """`pipeline/inbox/seen.json`: key -> (etag, generation that added it)."""

    generation: int = 0
    entries: dict[str, tuple[str, int]] = field(default_factory=dict)

    def committed(self, cursor_generation: int) -> dict[str, str]:
        """key -> etag of the entries whose tick's result Dagster has stored."""
        return {k: e for k, (e, g) in self.entries.items() if g <= cursor_generation}

    @classmethod
    def load(cls, store: ObjectStore) -> "SeenSet | None":
        """None when there is none or it is unreadable; StorageError when the read failed."""
        try:
            value = json.loads(store.get(SEEN_KEY))
            return cls(
                generation=int(value["generation"]),
                entries={str(k): (str(e), int(g)) for k, (e, g) in value["objects"].items()},
            )
        except ObjectNotFound:
            return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def save(self, store: ObjectStore, prefix: str) -> None:
        body = {
            "version": 1,
            "about": "inbox objects the script_inbox_sensor has handled (key: [etag, generation])",
            "prefix": prefix,
            "generation": self.generation,
            "objects": {k: list(v) for k, v in sorted(self.entries.items())},
        }
        store.put(SEEN_KEY, json.dumps(body, separators=(",", ":")).encode(), "application/json")


# -- one tick ---------------------------------------------------------------------------------


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


@dataclass
class TickOutcome:
    """What one tick decided, in the terms of the inbox (keys), before it becomes a result."""

    cursor: str = ""
    skip_message: str | None = None
    run_requests: list[RunRequest] = field(default_factory=list)
    partition_keys: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> why
    deferred: int = 0
    summary: str = ""


def evaluate_inbox(
    store: ObjectStore, settings: InboxSettings, raw_cursor: str | None, log: Any
) -> TickOutcome:
    """Everything one tick decides; the sensor turns it into a SensorResult.

    `log` is Dagster's `context.log` or a `logging.Logger` (info and warning are used).
    """
    out = log
    cursor = InboxCursor.from_json(raw_cursor)
    listing = [i for i in store.list(settings.prefix) if is_inbox_object(i, settings.prefix)]
    listing_digest = seen_digest((i.key, i.etag) for i in listing)
    if listing_digest == cursor.digest:
        message = f"{len(listing)} inbox objects under {settings.prefix}, all handled before"
        return TickOutcome(cursor=raw_cursor or cursor.to_json(), skip_message=message)

    seen = SeenSet.load(store)
    if seen is None:
        if cursor.generation > 0:
            out.warning(
                f"{SEEN_KEY} is missing or unreadable: every inbox object is handled again"
                " (run keys prevent duplicate runs, existing reports are not rewritten)"
            )
        seen = SeenSet()
    committed = seen.committed(cursor.generation)
    new = [i for i in listing if committed.get(i.key) != i.etag]
    # Fresh objects first, oldest first; objects whose reads keep failing go last.
    new.sort(key=lambda i: (cursor.failures_of(i) > 0, i.last_modified, i.key))
    batch, deferred = new[: settings.max_per_tick], len(new) - settings.max_per_tick

    outcome = _handle_batch(Bucket(store), settings.prefix, batch, out)
    outcome.deferred = max(0, deferred)

    done = set(outcome.accepted) | set(outcome.rejected) | set(outcome.superseded)
    listed = {i.key for i in listing}
    next_generation = cursor.generation + 1
    # The next seen set: the committed entries still listed, plus what this tick handled.
    # Entries of a tick whose result was never stored (generation > cursor's) are dropped.
    entries = {
        k: (e, g)
        for k, (e, g) in seen.entries.items()
        if g <= cursor.generation and k in listed and k not in done
    }
    by_key = {i.key: i for i in batch}
    entries.update({k: (by_key[k].etag, next_generation) for k in done})
    if done or len(entries) != len(committed):
        SeenSet(next_generation, entries).save(store, settings.prefix)
        generation = next_generation
    else:
        generation = cursor.generation  # nothing changed: keep the stored generation

    failures = {}
    for key, why in outcome.failed.items():
        info = by_key[key]
        count = cursor.failures_of(info) + 1
        failures[key] = (info.etag, count)
        out.warning(
            f"inbox object {key}: {why} ({count} tick(s) in a row); it stays unseen and is"
            " retried on the next tick"
        )
    # Keep the counts of failing objects that were not in this tick's batch.
    for key, value in cursor.failures.items():
        if key in listed and key not in done and key not in failures:
            failures[key] = value
    if len(failures) > MAX_TRACKED_FAILURES:
        failures = dict(sorted(failures.items(), key=lambda kv: -kv[1][1])[:MAX_TRACKED_FAILURES])

    outcome.cursor = InboxCursor(
        generation=generation,
        seen=len(entries),
        digest=seen_digest((k, e) for k, (e, _) in entries.items()),
        failures=failures,
    ).to_json()
    outcome.summary = (
        f"{len(listing)} inbox objects, {len(new)} new: {len(outcome.accepted)} accepted,"
        f" {len(outcome.rejected)} rejected, {len(outcome.superseded)} older than the stored"
        f" version, {len(outcome.failed)} failed (retried next tick),"
        f" {outcome.deferred} left for the next ticks"
    )
    return outcome


def _handle_batch(
    bucket: Bucket, prefix: str, batch: Sequence[ObjectInfo], out: Any
) -> TickOutcome:
    outcome = TickOutcome()
    reports: list[tuple[ObjectInfo, RejectionReport]] = []
    valid: dict[str, list[tuple[ObjectInfo, AcceptedScript]]] = {}

    to_read = []
    for info in batch:
        source = SourceRef(key=info.key, etag=info.etag)
        if is_oversize(info.size):
            reports.append((info, oversize_rejection(source, info.size)))
        else:
            to_read.append(info)

    def read(info: ObjectInfo) -> bytes | StorageError:
        try:
            return bucket.store.get(info.key)
        except StorageError as err:  # ObjectNotFound too: deleted since the listing
            return err

    with ThreadPoolExecutor(max_workers=READ_WORKERS) as pool:
        for info, data in zip(to_read, pool.map(read, to_read), strict=True):
            if isinstance(data, StorageError):
                outcome.failed[info.key] = f"read failed: {data}"
                continue
            source = SourceRef(key=info.key, etag=info.etag)
            result = validate_bytes(data, source, info.last_modified)
            if isinstance(result, RejectionReport):
                reports.append((info, result))
            else:
                valid.setdefault(result.script.script_id, []).append((info, result))

        def accept(versions: list[tuple[ObjectInfo, AcceptedScript]]) -> Accepted | StorageError:
            # Of one script's versions in this tick only the newest is stored (and run).
            _, newest = max(versions, key=lambda v: (v[0].last_modified, v[0].key))
            try:
                return store_accepted(bucket, newest)
            except StorageError as err:
                return err

        def reject(item: tuple[ObjectInfo, RejectionReport]) -> bool | StorageError:
            info, report = item
            try:
                return write_rejection_once(bucket, layout.rejected_key(info.key, prefix), report)
            except StorageError as err:
                return err

        groups = list(valid.values())
        accepted = list(pool.map(accept, groups))
        written = list(pool.map(reject, reports))

    for versions, result in zip(groups, accepted, strict=True):
        if isinstance(result, StorageError):
            for info, _ in versions:
                outcome.failed[info.key] = f"storing the accepted copy failed: {result}"
            continue
        winner_key = result.accepted.source.key
        for info, _ in versions:
            if info.key != winner_key or not result.stored:
                outcome.superseded.append(info.key)
        if not result.stored:
            kept = result.kept.source if result.kept else None
            out.info(
                f"{winner_key} is older than the stored version of script {result.script_id}"
                f" ({kept.key if kept else '?'}): not stored, no run"
            )
            continue
        winner = next(info for info, _ in versions if info.key == winner_key)
        outcome.accepted.append(winner_key)
        outcome.partition_keys.append(result.script_id)
        outcome.run_requests.append(
            RunRequest(
                partition_key=result.script_id,
                run_key=run_key_for(winner.key, winner.etag),
                tags={
                    TAG_LAUNCHED_BY: "sensor",
                    TAG_INBOX_KEY: winner.key,
                    TAG_INBOX_ETAG: winner.etag.strip('"'),
                },
            )
        )
    for (info, report), result in zip(reports, written, strict=True):
        if isinstance(result, StorageError):
            outcome.failed[info.key] = f"writing the rejection report failed: {result}"
            continue
        outcome.rejected.append(info.key)
        if result:
            first = report.errors[0] if report.errors else None
            out.info(
                f"rejected {info.key}: {len(report.errors)} error(s)"
                + (f", first {first.path}: {first.message}" if first else "")
            )
    return outcome


# -- the sensor -------------------------------------------------------------------------------


def build_script_inbox_sensor(env: Mapping[str, str]) -> SensorDefinition:
    """The inbox sensor with the settings in `env` (ConfigurationError on a bad value)."""
    settings = InboxSettings.from_env(env)

    @sensor(
        name="script_inbox_sensor",
        job=scene_job,
        minimum_interval_seconds=settings.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Accepts new script objects under {settings.prefix} (at most"
            f" {settings.max_per_tick} per tick): one scene_job run per new or changed object,"
            " a report under scripts/rejected/ for an invalid one."
        ),
    )
    def script_inbox_sensor(context: SensorEvaluationContext, storage: StorageResource):
        """Accept new inbox objects and request one run per new script version."""
        outcome = evaluate_inbox(storage.get_store(), settings, context.cursor, context.log)
        if outcome.skip_message is not None:
            return SensorResult(skip_reason=outcome.skip_message, cursor=outcome.cursor)
        context.log.info(outcome.summary)
        partition_keys = list(dict.fromkeys(outcome.partition_keys))
        return SensorResult(
            run_requests=outcome.run_requests,
            dynamic_partitions_requests=(
                [script_partitions.build_add_request(partition_keys)] if partition_keys else []
            ),
            cursor=outcome.cursor,
            skip_reason=None if outcome.run_requests else outcome.summary,
        )

    return script_inbox_sensor
