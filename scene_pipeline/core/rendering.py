"""Rendering one scene (its prompt, then its picture): the plain functions behind the
`render_scene` step. Its `Tools` serve drawing a portrait too (core/portrait_drawing.py).

A scene's picture is drawn from its prompt and the portraits of the characters present in it
(most prominent first, at most the maker's limit). If its image hash already has a
generation (a rewritten prompt that came out the same), that generation is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scene_pipeline.contract.outputs import (
    GenerationRecord,
    PromptProvenance,
    SceneEntry,
    utc_now,
)
from scene_pipeline.core import generations
from scene_pipeline.core.hashing import image_hash
from scene_pipeline.core.manifests import entry_from_record
from scene_pipeline.core.naming import external_task_id, generation_name
from scene_pipeline.core.outcomes import AccountStops, Attempt, Failed, StoppingSlots, guarded
from scene_pipeline.core.planning_inputs import portrait_ids, reference_names
from scene_pipeline.models import (
    Portrait,
    PromptChoice,
    SceneOutcome,
    ScenePlan,
    StoredPrompt,
)
from scene_pipeline.providers.base import (
    ImageMaker,
    ImageRequest,
    PromptWriter,
    ScenePromptRequest,
    SlotGate,
)
from scene_pipeline.storage import Bucket, StoredTaskJournal, layout


@dataclass(frozen=True)
class Tools:
    """What rendering works with: storage, providers (the writer is built on first use) and
    the account's slots."""

    bucket: Bucket
    writer: Callable[[], PromptWriter]
    maker: ImageMaker
    slots: SlotGate
    prompt_cap: int


# -- scenes ----------------------------------------------------------------------------------


def render_scene(
    plan: ScenePlan,
    portraits: Mapping[str, Portrait],
    tools: Tools,
    attempt: Attempt,
) -> SceneOutcome:
    stops = AccountStops(tools.bucket, attempt.run_id)
    prompted = _scene_prompt(plan, tools, attempt, stops)
    if isinstance(prompted, SceneOutcome):
        return prompted
    prompt, prompt_status, tokens = prompted

    references = _references(plan, prompt, portraits, tools.maker.max_references)
    missing = [p for p in references if p.status != "succeeded" or not p.image_key]
    if missing:
        who = missing[0]
        why = who.error or "it was not drawn"
        return _failed(
            plan, prompt, f"reference portrait of {who.name} failed: {why}", prompt_status
        )
    i_hash = image_hash(
        prompt.image_prompt,
        prompt.negative_prompt,
        portrait_ids(references),
        tools.maker.identity,
        plan.aspect_ratio,
    )
    reused = _reused_entry(plan, i_hash, tools)
    if reused is not None:
        return SceneOutcome(
            entry=reused,
            prompt_status=prompt_status,
            tokens=tokens,
            thumbnails=_thumbnails(tools.bucket, plan.script_id, reused),
        )
    stopped = stops.reason("image_maker")
    if stopped:
        return _failed(plan, prompt, f"image not attempted: {stopped}", prompt_status)
    slots = StoppingSlots(tools.slots, stops, "image_maker")
    drawn = guarded(
        lambda: _draw_scene(plan, prompt, references, i_hash, tools, slots),
        attempt,
        stops,
        "image_maker",
    )
    if isinstance(drawn, Failed):
        what = "image:" if drawn.attempted else "image not attempted:"
        return _failed(plan, prompt, f"{what} {drawn.message}", prompt_status, drawn.refused)
    entry, thumbs = drawn
    return SceneOutcome(entry=entry, prompt_status=prompt_status, tokens=tokens, thumbnails=thumbs)


def _scene_prompt(
    plan: ScenePlan, tools: Tools, attempt: Attempt, stops: AccountStops
) -> tuple[PromptChoice, str, int] | SceneOutcome:
    """The scene's prompt, its status and the tokens spent writing it now; or, when it could
    not be written, the scene's failed outcome."""
    if plan.prompt is not None:
        return plan.prompt, "override" if plan.prompt.source == "override" else "reused", 0
    stopped = stops.reason("prompt_writer")
    if stopped:
        return _failed(plan, None, f"prompt not attempted: {stopped}", "not written")
    written = guarded(lambda: write_prompt(plan, tools), attempt, stops, "prompt_writer")
    if isinstance(written, Failed):
        return _failed(plan, None, f"prompt: {written.message}", "failed", written.refused)
    prompt, prompt_status = written
    tokens = 0
    if prompt.provenance and prompt.provenance.usage:
        tokens = prompt.provenance.usage.total_tokens
    return prompt, prompt_status, tokens


def _reused_entry(plan: ScenePlan, i_hash: str, tools: Tools) -> SceneEntry | None:
    """The entry of the generation this image hash already has (a rewritten prompt that came
    out the same), unless the scene is forced or its record is gone."""
    if plan.forced or i_hash not in plan.drawn:
        return None
    record = tools.bucket.read_model(plan.drawn[i_hash], GenerationRecord)
    if record is None:
        return None
    return entry_from_record(record, tools.maker.identity.offline)


def write_prompt(plan: ScenePlan, tools: Tools) -> tuple[PromptChoice, str]:
    """The scene's written prompt: from the prompt cache, else one writer call (then cached)."""
    key = layout.prompt_key(plan.script_id, plan.scene.scene_id, plan.prompt_hash)
    stored = tools.bucket.read_model(key, StoredPrompt)
    status = "reused"
    if stored is None:
        writer = tools.writer()
        started = utc_now()
        written = writer.write_scene_prompt(
            ScenePromptRequest(
                script_title=plan.script_title,
                scene=plan.scene,
                previous_scene=plan.previous_scene,
                next_scene=plan.next_scene,
                characters=plan.characters,
                looks=plan.looks,
                style=plan.style,
                aspect_ratio=plan.aspect_ratio,
                max_prompt_chars=tools.prompt_cap,
            )
        )
        stored = StoredPrompt(
            script_id=plan.script_id,
            scene_id=plan.scene.scene_id,
            prompt_hash=plan.prompt_hash,
            image_prompt=written.image_prompt,
            negative_prompt=written.negative_prompt,
            characters_present=written.characters_present,
            provenance=PromptProvenance(
                provider=writer.identity.provider,
                model=written.model,
                writer_version=writer.identity.version,
                offline=writer.identity.offline,
                usage=written.usage,
                input_hash=plan.prompt_hash,
                duration_seconds=round((utc_now() - started).total_seconds(), 3),
            ),
        )
        tools.bucket.write_model(key, stored)
        status = "written"
    choice = PromptChoice(
        image_prompt=stored.image_prompt,
        negative_prompt=stored.negative_prompt,
        characters_present=stored.characters_present,
        source="written",
        provenance=stored.provenance,
    )
    return choice, status


def _references(
    plan: ScenePlan, prompt: PromptChoice, portraits: Mapping[str, Portrait], limit: int
) -> list[Portrait]:
    limit = limit if plan.references_on else 0
    return [portraits[n] for n in reference_names(prompt.characters_present, portraits, limit)]


def _draw_scene(
    plan: ScenePlan,
    prompt: PromptChoice,
    references: list[Portrait],
    i_hash: str,
    tools: Tools,
    slots: SlotGate,
) -> tuple[SceneEntry, list[str]]:
    bucket, sid = tools.bucket, plan.scene.scene_id
    generation = generation_name(plan.planned_at, i_hash, plan.root_run_id)
    journal = StoredTaskJournal(
        bucket,
        layout.task_key(plan.script_id, ("scenes", sid), i_hash),
        generation,
        own_only=plan.forced,
    )
    request = _scene_request(plan, prompt, references, i_hash, generation, bucket)
    image = tools.maker.make_image(request, journal, slots)
    keys, uris, thumbs = generations.store_images(
        bucket, plan.script_id, ("scenes", sid), generation, image.pngs
    )
    record = GenerationRecord(
        script_id=plan.script_id,
        scene_id=sid,
        generation=generation,
        content_hash=i_hash,
        image_prompt=prompt.image_prompt,
        negative_prompt=prompt.negative_prompt,
        image_key=keys[0],
        image_s3url=uris[0],
        candidates=uris,
        prompt=prompt.provenance,
        image=image.provenance,
        created_at=utc_now(),
        prompt_source=prompt.source,
        source_hash=plan.source_hash,
        prompt_hash=plan.prompt_hash,
        config_hash=plan.config_hash,
        characters=prompt.characters_present,
        references=[p.uri or bucket.uri(p.image_key or "") for p in references],
        forced=plan.forced,
    )
    generations.write_record(bucket, ("scenes", sid), record)
    journal.clear()
    return entry_from_record(record, tools.maker.identity.offline), thumbs


def _scene_request(
    plan: ScenePlan,
    prompt: PromptChoice,
    references: list[Portrait],
    i_hash: str,
    generation: str,
    bucket: Bucket,
) -> ImageRequest:
    sid = plan.scene.scene_id
    return ImageRequest(
        script_id=plan.script_id,
        subject=f"scene {sid}",
        content_hash=i_hash,
        prompt=prompt.image_prompt,
        negative_prompt=prompt.negative_prompt,
        aspect_ratio=plan.aspect_ratio,
        external_task_id=external_task_id(plan.script_id, sid, generation),
        references=[bucket.read_bytes(p.image_key) for p in references if p.image_key],
        n=plan.candidates,
    )


def _failed(
    plan: ScenePlan,
    prompt: PromptChoice | None,
    error: str,
    prompt_status: str,
    refused: bool = False,
) -> SceneOutcome:
    entry = SceneEntry(
        scene_id=plan.scene.scene_id,
        status="failed",
        image_prompt=prompt.image_prompt if prompt else None,
        negative_prompt=prompt.negative_prompt if prompt else None,
        prompt_source=prompt.source if prompt else None,
        characters=prompt.characters_present if prompt else [],
        error=error,
        refused=refused,
        source_hash=plan.source_hash,
        prompt_hash=plan.prompt_hash,
        config_hash=plan.config_hash,
    )
    return SceneOutcome(entry=entry, prompt_status=prompt_status)  # type: ignore[arg-type]


def _thumbnails(bucket: Bucket, script_id: str, entry: SceneEntry) -> list[str]:
    uris = entry.candidates or ([entry.image_s3url] if entry.image_s3url else [])
    return generations.thumbnails(bucket, script_id, ("scenes", entry.scene_id), uris)
