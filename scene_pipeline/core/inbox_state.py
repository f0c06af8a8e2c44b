"""The inbox sensor's memory: a small cursor (stored by Dagster with every tick) and the set of
handled objects (in the bucket, `pipeline/inbox/seen.json`).

- The seen set, every handled key with its ETag, is about 80 bytes per object (780 kB for
  10,000). It is not in the cursor because Dagster stores the cursor with every tick.
- The cursor stays under a few hundred bytes: a generation number, the size and a digest of
  the committed seen set, and the objects whose reads are failing right now.
- A tick whose listing has the cursor's digest has nothing new: one listing and a hash.
- A new generation of the seen set only counts once Dagster has stored the tick's cursor.
  Entries stamped with a later generation come from a tick whose result was lost; they are
  handled again (run keys prevent a second run; reports are not rewritten).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from scene_pipeline.storage import Bucket, ObjectInfo, layout

# The cursor never tracks more failing objects than this (the oldest are then forgotten and
# simply retried as fresh objects).
MAX_TRACKED_FAILURES = 200


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
    def from_json(cls, raw: str | None) -> InboxCursor:
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
    """key -> (etag, generation that added it)."""

    generation: int = 0
    entries: dict[str, tuple[str, int]] = field(default_factory=dict)

    def committed(self, cursor_generation: int) -> dict[str, str]:
        """key -> etag of the entries whose tick's result Dagster has stored."""
        return {k: e for k, (e, g) in self.entries.items() if g <= cursor_generation}

    @classmethod
    def load(cls, bucket: Bucket) -> SeenSet | None:
        """None when there is none or it is unreadable; StorageError when the read failed."""
        data = bucket.read_bytes_if_present(layout.INBOX_SEEN_KEY)
        if data is None:
            return None
        try:
            value = json.loads(data)
            return cls(
                generation=int(value["generation"]),
                entries={str(k): (str(e), int(g)) for k, (e, g) in value["objects"].items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def save(self, bucket: Bucket, prefix: str) -> None:
        body = {
            "version": 1,
            "about": "inbox objects the script_inbox_sensor has handled (key: [etag, generation])",
            "prefix": prefix,
            "generation": self.generation,
            "objects": {k: list(v) for k, v in sorted(self.entries.items())},
        }
        bucket.write_bytes(
            layout.INBOX_SEEN_KEY,
            json.dumps(body, separators=(",", ":")).encode(),
            "application/json",
        )


def next_failures(
    cursor: InboxCursor,
    failed: dict[str, tuple[str, str]],
    listed: set[str],
    done: set[str],
) -> dict[str, tuple[str, int]]:
    """The failing objects to remember: this tick's (count + 1) and earlier ones still failing.

    `failed`: key -> (etag, why) of this tick's read failures."""
    failures: dict[str, tuple[str, int]] = {}
    for key, (etag, _) in failed.items():
        previous_etag, count = cursor.failures.get(key, ("", 0))
        failures[key] = (etag, (count if previous_etag == etag else 0) + 1)
    for key, value in cursor.failures.items():
        if key in listed and key not in done and key not in failures:
            failures[key] = value
    if len(failures) > MAX_TRACKED_FAILURES:
        failures = dict(sorted(failures.items(), key=lambda kv: -kv[1][1])[:MAX_TRACKED_FAILURES])
    return failures
