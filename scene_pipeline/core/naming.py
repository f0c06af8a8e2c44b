"""Names of generations and of the provider tasks that draw them."""

from __future__ import annotations

from datetime import datetime

from scene_pipeline.core.hashing import stable_hash


def generation_name(now: datetime, content_hash: str, run_id: str) -> str:
    """Unique and sortable: a UTC timestamp (to the millisecond, so that two generations of
    one second still sort by time), the content hash, and the run that made it."""
    stamp = f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{content_hash}-{run_id.replace('-', '')[:8]}"


def content_hash_of(generation: str) -> str:
    return generation.split("-")[1]


def external_task_id(script_id: str, subject: str, generation: str) -> str:
    """Our idempotency key at the image provider: one per generation, stable across retries.

    Per generation, not per content: KLING requires ids to be unique per account, so a forced
    redraw of unchanged content is a new generation and needs a new id."""
    return "sp-" + stable_hash(["image-task", script_id, subject, generation], length=32)
