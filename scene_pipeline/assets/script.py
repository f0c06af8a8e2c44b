"""`script_document`: the latest accepted version of a script, validated and normalised.

An external asset: the inbox sensor and the CLI write the accepted copy and report its
materialization (with the source object and its ETag), so that a run does not spend a step
on it; runs load it with the `script_io_manager`.
"""

from __future__ import annotations

from dagster import AssetMaterialization, AssetSpec, MetadataValue

from scene_pipeline.constants import ASSET_GROUP
from scene_pipeline.models import AcceptedScript
from scene_pipeline.partitions import script_partitions

script_document = AssetSpec(
    "script_document",
    partitions_def=script_partitions,
    group_name=ASSET_GROUP,
    kinds={"json"},
    description="The validated, normalised script of a partition, as accepted from the inbox"
    " (or `scene-pipeline run`); stored at pipeline/scripts/{script_id}.json.",
).with_io_manager_key("script_io_manager")


def accepted_event(accepted: AcceptedScript) -> AssetMaterialization:
    """The materialization the intake reports for a newly accepted version."""
    script = accepted.script
    return AssetMaterialization(
        asset_key="script_document",
        partition=script.script_id,
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
