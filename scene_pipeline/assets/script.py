"""script_document: the latest accepted version of a script, validated and normalised."""

from dagster import AssetExecutionContext, Failure, MetadataValue, Output, asset

from scene_pipeline.constants import ASSET_GROUP
from scene_pipeline.models import AcceptedScript
from scene_pipeline.partitions import script_partitions
from scene_pipeline.resources.storage import StorageResource
from scene_pipeline.storage import layout


@asset(partitions_def=script_partitions, group_name=ASSET_GROUP, kinds={"json"})
def script_document(
    context: AssetExecutionContext, storage: StorageResource
) -> Output[AcceptedScript]:
    """The validated, normalised script of this partition (accepted by the sensor or the CLI)."""
    script_id = layout.script_segment(context.partition_key)
    accepted = storage.get_bucket().read_accepted(script_id)
    if accepted is None:
        raise Failure(
            description=f"No accepted script {script_id}: drop it into the inbox or run"
            " `scene-pipeline run FILE`.",
            allow_retries=False,
        )
    script = accepted.script
    return Output(
        accepted,
        metadata={
            "title": script.title,
            "scenes": len(script.scenes),
            "characters": len(script.script_metadata.characters),
            "style": script.options.style or "(default)",
            "aspect_ratio": script.options.aspect_ratio,
            "source": MetadataValue.text(accepted.source.key),
            "source_etag": MetadataValue.text(accepted.source.etag or ""),
            "shape": accepted.shape,
        },
    )
