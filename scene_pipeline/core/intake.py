"""Accepting a dropped script: validate the bytes, keep the newest version, or say why not.

Shared by the inbox sensor and `scene-pipeline run`, so that a script is accepted by the same
rules whichever way it arrives (../shared/contract/script-input.md).

Which version wins: the accepted copy (`pipeline/scripts/<id>.json`) holds the version with
the latest `source_last_modified` (the inbox object's LastModified). An older version that
is processed late (dropped late, or retried after a read failure) does not replace a newer
copy. Tie rule: at an equal LastModified the version processed later replaces the stored one.
S3 only lists the latest object of a key, so an overwrite of the same key in the same second
is always the newer one; for two different keys in the same second the order is the inbox
sensor's (LastModified, then key). A stored copy without a LastModified (older code) never
blocks a new version. `scene-pipeline run FILE` passes `keep_newer=False`: the user asked
for that file, so it replaces whatever is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from scene_pipeline.constants import MAX_SCRIPT_BYTES
from scene_pipeline.contract.outputs import RejectionReport, SourceRef, utc_now
from scene_pipeline.contract.script import Script
from scene_pipeline.contract.script_parsing import (
    ContractError,
    ScriptRejected,
    ScriptShape,
    parse_script,
)
from scene_pipeline.models import AcceptedScript
from scene_pipeline.storage import Bucket, StorageError, layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A valid version. `kept` is the newer stored copy that this version did not replace;
    `new`: no copy was stored before, so nothing of the script can have been drawn yet."""

    accepted: AcceptedScript
    kept: AcceptedScript | None = None
    changed: bool = True
    new: bool = False

    @property
    def stored(self) -> bool:
        return self.kept is None

    @property
    def script_id(self) -> str:
        return self.accepted.script.script_id


def validate_bytes(
    data: bytes, source: SourceRef, last_modified: datetime | None
) -> AcceptedScript | RejectionReport:
    """Parse `data` against the contract; nothing is read or written."""
    try:
        script, shape = parse_script(data)
    except ScriptRejected as err:
        return rejection(source, err.errors)
    return accepted_script(script, shape, source, last_modified)


def accepted_script(
    script: Script, shape: ScriptShape, source: SourceRef, last_modified: datetime | None
) -> AcceptedScript:
    return AcceptedScript(
        script=script,
        source=source,
        shape=shape,
        accepted_at=utc_now(),
        source_last_modified=last_modified,
    )


def rejection(source: SourceRef, errors: list[ContractError]) -> RejectionReport:
    return RejectionReport(source=source, rejected_at=utc_now(), errors=errors)


def oversize_rejection(source: SourceRef, size: int) -> RejectionReport:
    """The report of an object too large to parse, decided from its listed size alone."""
    return rejection(
        source,
        [ContractError(path="$", message=f"object is {size} bytes; the limit is 5 MiB")],
    )


def is_oversize(size: int) -> bool:
    return size > MAX_SCRIPT_BYTES


def read_stored(bucket: Bucket, script_id: str) -> AcceptedScript | None:
    """The stored accepted copy; None when there is none or it no longer parses.

    A transient read failure raises StorageError: the caller must not take it for "absent".
    """
    key = layout.accepted_script_key(script_id)
    data = bucket.read_bytes_if_present(key)
    if data is None:
        return None
    try:
        return AcceptedScript.model_validate_json(data)
    except ValidationError:
        logger.warning("%s is not a valid accepted copy; the new version replaces it", key)
        return None


def is_newer(stored: AcceptedScript, last_modified: datetime | None) -> bool:
    """True when `stored` came from a strictly later inbox object (the tie rule above)."""
    if stored.source_last_modified is None or last_modified is None:
        return False
    return stored.source_last_modified > last_modified


def store_accepted(
    bucket: Bucket, accepted: AcceptedScript, *, keep_newer: bool = True
) -> Accepted:
    """Write the accepted copy unless (with `keep_newer`) a newer version is stored.

    `changed` tells whether the stored script differs from the new one: an identical
    re-drop needs no run when its scenes are already drawn."""
    stored = read_stored(bucket, accepted.script.script_id)
    if keep_newer and stored is not None and is_newer(stored, accepted.source_last_modified):
        return Accepted(accepted=accepted, kept=stored, changed=False)
    bucket.write_model(layout.accepted_script_key(accepted.script.script_id), accepted)
    return Accepted(
        accepted=accepted,
        changed=stored is None or stored.script != accepted.script,
        new=stored is None,
    )


def accept_bytes(
    bucket: Bucket,
    data: bytes,
    source: SourceRef,
    last_modified: datetime | None,
    *,
    keep_newer: bool = True,
) -> Accepted | RejectionReport:
    """Validate `data`; if valid, store the accepted copy (see the module docstring).

    Returns the RejectionReport of an invalid script without writing it: where a report goes
    depends on where the script came from (the sensor writes it, the CLI prints it).

    Raises:
        StorageError: reading or writing the accepted copy failed; nothing was decided.
    """
    result = validate_bytes(data, source, last_modified)
    if isinstance(result, RejectionReport):
        return result
    return store_accepted(bucket, result, keep_newer=keep_newer)


def write_rejection_once(bucket: Bucket, key: str, report: RejectionReport) -> bool:
    """Write the report unless one for the same object (key and ETag) is already there.

    The inbox sensor's seen set already prevents a second report; this check keeps it so
    after a tick whose cursor was not saved. Returns True if the report was written.
    """
    try:
        existing = bucket.read_model(key, RejectionReport)
    except StorageError:
        existing = None  # unreadable: replace it
    if existing is not None and existing.source == report.source:
        return False
    bucket.write_rejection(key, report)
    return True


def read_accepted(bucket: Bucket, script_id: str) -> AcceptedScript | None:
    """The accepted copy of a script, for runs and commands (StorageError if unreadable)."""
    return bucket.read_model(layout.accepted_script_key(script_id), AcceptedScript)
