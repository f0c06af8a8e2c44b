"""The character sheet: one canonical English look per character, kept per character.

A look is reused while its character's own data (name, gender, description), the style and
the writer are unchanged, so a new version of a script that changes one character's
description rewrites that look only, and redraws only that character's scenes. When looks are
missing the writer is asked once for the whole sheet (it sees every character, for
coherence) and only the missing looks are taken from its answer.

When the writer fails for good, the missing looks come from the template (marked `fallback`,
and stored as such): scenes can still be drawn, and the next run asks the writer again; the
prompt hashes cover the looks, so scenes drawn from a fallback look are redrawn once a real
look exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from scene_pipeline.contract.outputs import PromptProvenance
from scene_pipeline.contract.script import Script
from scene_pipeline.core.hashing import look_input_hash
from scene_pipeline.models import CharacterSheet, SheetLook
from scene_pipeline.providers.base import PromptWriter, ProviderIdentity
from scene_pipeline.providers.offline import template_look
from scene_pipeline.storage import Bucket
from scene_pipeline.storage.layout import character_sheet_key


@dataclass(frozen=True)
class SheetResult:
    sheet: CharacterSheet
    written: int
    reused: int


def stored_sheet(bucket: Bucket, script_id: str) -> CharacterSheet | None:
    return bucket.read_model(character_sheet_key(script_id), CharacterSheet)


def current_looks(
    script: Script, stored: CharacterSheet | None, writer: ProviderIdentity
) -> dict[str, SheetLook]:
    """The stored looks still valid for this script version (not fallbacks), by name."""
    if stored is None:
        return {}
    by_name = {look.name: look for look in stored.looks}
    valid: dict[str, SheetLook] = {}
    for character in script.script_metadata.characters:
        look = by_name.get(character.name)
        wanted = look_input_hash(character, script.options.style, writer)
        if look is not None and not look.fallback and look.input_hash == wanted:
            valid[character.name] = look
    return valid


def ensure_sheet(
    bucket: Bucket, script: Script, writer: PromptWriter, *, write: bool = True
) -> SheetResult:
    """The sheet for `script`, writing the missing looks (one writer call at most).

    `write=False`: the writer gave up (see core/outcomes.py); missing looks come from the
    template, marked as fallbacks, and no call is made.

    Raises:
        ProviderError: from the writer (the caller decides: retry, or `write=False`).
        StorageError: reading or writing the stored sheet failed.
    """
    characters = script.script_metadata.characters
    if not characters:
        sheet = CharacterSheet(script_id=script.script_id, looks=[], status="no characters")
        return SheetResult(sheet=sheet, written=0, reused=0)
    stored = stored_sheet(bucket, script.script_id)
    valid = current_looks(script, stored, writer.identity)
    if len(valid) == len(characters) and stored is not None:
        looks = [valid[c.name] for c in characters]
        sheet = CharacterSheet(
            script_id=script.script_id, looks=looks, provenance=stored.provenance, status="reused"
        )
        if looks != stored.looks:
            bucket.write_model(character_sheet_key(script.script_id), sheet)
        return SheetResult(sheet=sheet, written=0, reused=len(looks))

    started = time.monotonic()
    written = writer.write_character_sheet(script) if write else None
    answers = {look.name: look.look for look in written.looks} if written else {}
    fallback = written is None
    looks = _merged_looks(script, valid, answers, writer.identity, fallback=fallback)
    provenance = PromptProvenance(
        provider=writer.identity.provider,
        model=written.model if written else writer.identity.model,
        writer_version=writer.identity.version,
        offline=writer.identity.offline or fallback,
        usage=written.usage if written else None,
        input_hash=",".join(look.input_hash for look in looks),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    sheet = CharacterSheet(
        script_id=script.script_id,
        looks=looks,
        provenance=provenance,
        status="template fallback" if fallback else "written",
    )
    bucket.write_model(character_sheet_key(script.script_id), sheet)
    return SheetResult(sheet=sheet, written=len(characters) - len(valid), reused=len(valid))


def _merged_looks(
    script: Script,
    valid: dict[str, SheetLook],
    answers: dict[str, str],
    writer: ProviderIdentity,
    *,
    fallback: bool,
) -> list[SheetLook]:
    """Every character's look: the still valid one, else the writer's answer, else the
    template's (marked as a fallback)."""
    looks: list[SheetLook] = []
    for character in script.script_metadata.characters:
        if character.name in valid:
            looks.append(valid[character.name])
            continue
        text = answers.get(character.name)
        looks.append(
            SheetLook(
                name=character.name,
                look=text or template_look(character),
                input_hash=look_input_hash(character, script.options.style, writer),
                fallback=fallback or text is None,
            )
        )
    return looks
