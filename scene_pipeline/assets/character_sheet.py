"""character_sheet: one canonical English look per character, written once per script version."""

import time

from dagster import (
    AssetExecutionContext,
    Backoff,
    Failure,
    Jitter,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)

from scene_pipeline.constants import ASSET_GROUP, PROMPT_STEP_MAX_RETRIES, RETRY_DELAY_SECONDS
from scene_pipeline.contract.outputs import PromptProvenance
from scene_pipeline.hashing import character_sheet_hash
from scene_pipeline.models import AcceptedScript, CharacterSheet
from scene_pipeline.partitions import script_partitions
from scene_pipeline.providers.errors import AccountError, ProviderError, TransientProviderError
from scene_pipeline.providers.offline import TemplatePromptWriter
from scene_pipeline.resources.providers import PromptWriterResource
from scene_pipeline.resources.storage import StorageResource


@asset(
    partitions_def=script_partitions,
    group_name=ASSET_GROUP,
    kinds={"openai"},
    retry_policy=RetryPolicy(
        max_retries=PROMPT_STEP_MAX_RETRIES,
        delay=RETRY_DELAY_SECONDS,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
)
def character_sheet(
    context: AssetExecutionContext,
    script_document: AcceptedScript,
    prompt_writer: PromptWriterResource,
    storage: StorageResource,
) -> Output[CharacterSheet]:
    """Canonical English looks of the characters, so that each looks the same in every scene."""
    script = script_document.script
    writer = prompt_writer.get_writer()
    bucket = storage.get_bucket()
    input_hash = character_sheet_hash(script, writer.identity)

    sheet = bucket.read_character_sheet(script.script_id, input_hash)
    status = "reused"
    if sheet is None:
        started = time.monotonic()
        try:
            written = writer.write_character_sheet(script)
            status = "written"
        except AccountError as err:
            raise Failure(
                description=f"prompt writer account error: {err}", allow_retries=False
            ) from err
        except TransientProviderError:
            if context.retry_number < PROMPT_STEP_MAX_RETRIES:
                raise
            written = None
            reason = "prompt writer unavailable after retries"
        except ProviderError as err:
            written = None
            reason = str(err)
        if written is None:
            # Scenes can still be drawn from the script's own descriptions; not cached, so the
            # next run tries the writer again.
            context.log.warning(f"character sheet falls back to the template: {reason}")
            written = TemplatePromptWriter().write_character_sheet(script)
            status = "template fallback"
        sheet = CharacterSheet(
            script_id=script.script_id,
            input_hash=input_hash,
            looks=written.looks,
            provenance=PromptProvenance(
                provider=writer.identity.provider,
                model=written.model,
                writer_version=writer.identity.version,
                offline=writer.identity.offline or status == "template fallback",
                usage=written.usage,
                input_hash=input_hash,
                duration_seconds=round(time.monotonic() - started, 3),
            ),
        )
        if status == "written":
            bucket.write_character_sheet(sheet)

    if sheet.provenance.offline:
        context.log.warning(
            "OFFLINE prompt writer: character looks come from a template, not an LLM."
        )
    return Output(
        sheet,
        metadata={
            "status": status,
            "characters": len(sheet.looks),
            "looks": MetadataValue.md(
                "\n".join(f"- **{look.name}**: {look.look}" for look in sheet.looks) or "(none)"
            ),
            "provider": sheet.provenance.provider,
            "model": sheet.provenance.model,
            "tokens": sheet.provenance.usage.total_tokens if sheet.provenance.usage else 0,
        },
    )
