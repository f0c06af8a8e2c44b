"""IO managers: every asset and step output is stored as JSON in the bucket, never pickled.

- `JsonIOManager` keeps asset outputs at `pipeline/dagster/assets/{asset}/{partition}.json`
  and step outputs at `pipeline/dagster/runs/{run_id}/{step_key}/{output}[/{mapping_key}].json`
  (so that re-execution from failure can load a parent run's outputs). Values are rebuilt with
  the type annotation of the output that produced them.
- `ScriptDocumentIOManager` loads the external `script_document` asset: the accepted copy that
  the inbox sensor or the CLI stored at `pipeline/scripts/{script_id}.json`.
- `ManifestIOManager` writes the `manifest` asset to the contract's key,
  `results/{script_id}/manifest.json`, in one conditional PUT that keeps operators' picks made
  while the run was going (core/manifests.py).

No `from __future__ import annotations` here: Dagster reads the field annotations at class
creation to build the config schema, and string annotations break that.
"""

import json
import re
from typing import Any

from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from pydantic import Field, TypeAdapter
from pydantic_core import to_json

from scene_pipeline.contract.outputs import Manifest
from scene_pipeline.core.intake import read_accepted
from scene_pipeline.core.manifests import apply_picks, publish
from scene_pipeline.models import AcceptedScript
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.storage import layout

_STEP_SEGMENT = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,200}$")


def _safe(segment: str) -> str:
    if not _STEP_SEGMENT.match(segment) or ".." in segment:
        raise layout.UnsafeKeyError(f"{segment[:80]!r} cannot be part of a storage key")
    return segment


def _script_id(context: InputContext | OutputContext) -> str:
    # Partition keys can be typed into the UI: they must still be valid script ids.
    return layout.script_segment(context.asset_partition_key)


def _python_type(context: InputContext | OutputContext) -> Any:
    if isinstance(context, InputContext) and context.upstream_output is not None:
        return context.upstream_output.dagster_type.typing_type
    return context.dagster_type.typing_type


class JsonIOManager(ConfigurableIOManager):
    """Stores outputs as JSON objects in the pipeline's bucket."""

    bucket: ResourceDependency[BucketResource]
    prefix: str = Field(
        default=layout.IO_PREFIX.rstrip("/"), description="Key prefix for stored outputs."
    )

    def _key(self, context: InputContext | OutputContext) -> str:
        if context.has_asset_key:
            path = "/".join(_safe(part) for part in context.asset_key.path)
            partition = _script_id(context) if context.has_asset_partitions else "__all__"
            return f"{self.prefix}/assets/{path}/{partition}.json"
        segments = [_safe(str(s)) for s in context.get_identifier()]
        return f"{self.prefix}/runs/{'/'.join(segments)}.json"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        key = self._key(context)
        bucket = self.bucket.get_bucket()
        bucket.write_bytes(key, to_json(obj, indent=1), "application/json")
        if context.has_asset_key:
            context.add_output_metadata({"stored_at": MetadataValue.path(bucket.uri(key))})

    def load_input(self, context: InputContext) -> Any:
        data = self.bucket.get_bucket().read_bytes(self._key(context))
        python_type = _python_type(context)
        if python_type in (Any, object, None):
            return json.loads(data)
        return TypeAdapter(python_type).validate_json(data)


class ScriptDocumentIOManager(ConfigurableIOManager):
    """Loads a script's accepted copy (written by the sensor or the CLI, never by a run)."""

    bucket: ResourceDependency[BucketResource]

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        raise NotImplementedError("script_document is written by the intake, not by a run")

    def load_input(self, context: InputContext) -> AcceptedScript:
        script_id = _script_id(context)
        accepted = read_accepted(self.bucket.get_bucket(), script_id)
        if accepted is None:
            raise FileNotFoundError(
                f"No accepted script {script_id}: drop it into the inbox or run"
                " `scene-pipeline run FILE`."
            )
        return accepted


class ManifestIOManager(ConfigurableIOManager):
    """Writes each script's manifest to `results/{script_id}/manifest.json`, in one PUT."""

    bucket: ResourceDependency[BucketResource]

    def handle_output(self, context: OutputContext, obj: Manifest) -> None:
        bucket = self.bucket.get_bucket()
        written = publish(
            bucket,
            obj.script_id,
            # Picks made while the run was going are applied again at the moment of writing.
            lambda state, _current: obj.model_copy(
                update={"scenes": apply_picks(obj.scenes, state)}
            ),
        )
        context.add_output_metadata(
            {
                "manifest": MetadataValue.path(bucket.uri(layout.manifest_key(obj.script_id))),
                "picked_scenes": sum(1 for e in written.scenes if (e.picked or 1) > 1),
            }
        )

    def load_input(self, context: InputContext) -> Manifest:
        script_id = _script_id(context)
        manifest = self.bucket.get_bucket().read_manifest(script_id)
        if manifest is None:
            raise FileNotFoundError(f"no manifest for script {script_id}")
        return manifest
