"""Drawing one character's reference portrait: the plain function behind the `draw_portrait`
step. Which portraits a run draws is decided in core/portraits.py.
"""

from __future__ import annotations

from scene_pipeline.contract.outputs import PortraitRecord, utc_now
from scene_pipeline.core import generations
from scene_pipeline.core.hashing import look_hash
from scene_pipeline.core.outcomes import AccountStops, Attempt, Failed, StoppingSlots, guarded
from scene_pipeline.core.portraits import (
    PORTRAIT_ASPECT_RATIO,
    PORTRAIT_NEGATIVE_PROMPT,
    portrait_prompt,
    reference_problem,
)
from scene_pipeline.core.rendering import Tools
from scene_pipeline.models import Portrait, PortraitPlan
from scene_pipeline.providers.base import ImageRequest, SlotGate
from scene_pipeline.providers.errors import SceneRejectedError
from scene_pipeline.storage import StoredTaskJournal, layout


def draw_portrait(plan: PortraitPlan, tools: Tools, attempt: Attempt) -> Portrait:
    """Draw one character's reference portrait (a failed portrait is returned, not raised)."""
    stops = AccountStops(tools.bucket, attempt.run_id)
    pending = Portrait(
        name=plan.name,
        character_key=plan.character_key,
        content_hash=plan.content_hash,
        generation=plan.generation,
    )
    stopped = stops.reason("image_maker")
    if stopped:
        return pending.model_copy(update={"status": "failed", "error": f"not attempted: {stopped}"})
    slots = StoppingSlots(tools.slots, stops, "image_maker")
    drawn = guarded(lambda: _draw_portrait(plan, tools, slots), attempt, stops, "image_maker")
    if isinstance(drawn, Failed):
        error = drawn.message if drawn.attempted else f"not attempted: {drawn.message}"
        return pending.model_copy(update={"status": "failed", "error": error})
    return drawn


def _draw_portrait(plan: PortraitPlan, tools: Tools, slots: SlotGate) -> Portrait:
    bucket, subject = tools.bucket, ("characters", plan.character_key)
    journal = StoredTaskJournal(
        bucket,
        layout.task_key(plan.script_id, subject, plan.content_hash),
        plan.generation,
        own_only=plan.forced,
    )
    prompt = portrait_prompt(plan.look, plan.style)
    image = tools.maker.make_image(_portrait_request(plan, prompt), journal, slots)
    problem = reference_problem(*generations.image_size(image.pngs[0]))
    if problem:
        # Every scene of the character would be refused with it: the portrait fails instead.
        journal.clear()
        raise SceneRejectedError(f"the drawn portrait cannot be a reference: {problem}")
    keys, uris, _ = generations.store_images(
        bucket, plan.script_id, subject, plan.generation, image.pngs
    )
    record = PortraitRecord(
        script_id=plan.script_id,
        generation=plan.generation,
        content_hash=plan.content_hash,
        image_prompt=prompt,
        negative_prompt=PORTRAIT_NEGATIVE_PROMPT,
        image_key=keys[0],
        image_s3url=uris[0],
        candidates=uris,
        image=image.provenance,
        created_at=utc_now(),
        name=plan.name,
        character_key=plan.character_key,
        source="drawn",
        look_hash=look_hash(plan.look, plan.style),
    )
    generations.write_record(bucket, subject, record)
    journal.clear()
    return Portrait(
        name=plan.name,
        character_key=plan.character_key,
        content_hash=plan.content_hash,
        generation=plan.generation,
        image_key=keys[0],
        uri=uris[0],
        created_at=record.created_at,
    )


def _portrait_request(plan: PortraitPlan, prompt: str) -> ImageRequest:
    return ImageRequest(
        script_id=plan.script_id,
        kind="portrait",
        subject=f"portrait of {plan.name}",
        content_hash=plan.content_hash,
        prompt=prompt,
        negative_prompt=PORTRAIT_NEGATIVE_PROMPT,
        aspect_ratio=PORTRAIT_ASPECT_RATIO,
        external_task_id=plan.external_task_id,
    )
