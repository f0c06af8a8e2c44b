"""IO managers: every asset and step output is stored as JSON in the bucket, never pickled.

`JsonIOManager` keeps asset outputs at `pipeline/dagster/assets/<asset>/<partition>.json` and
step outputs at `pipeline/dagster/runs/<run_id>/<step_key>/<output>[/<mapping_key>].json`
(so that re-execution from failure can load a parent run's outputs). `ManifestIOManager`
writes the `manifest` asset to the contract's key, `results/<script_id>/manifest.json`.
Values are rebuilt with the type annotation of the output that produced them.
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
from scene_pipeline.resources.storage import StorageResource
from scene_pipeline.storage import layout

_STEP_SEGMENT = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,200}$")


def _safe(segment: str) -> str:
    if not _STEP_SEGMENT.match(segment) or ".." in segment:
        raise layout.UnsafeKeyError(f"{segment[:80]!r} cannot be part of a storage key")
    return segment


def _partition_segment(context: InputContext | OutputContext) -> str:
    # Partition keys can be typed into the UI: they must still be valid script ids.
    if context.has_asset_partitions:
        return layout.script_segment(context.asset_partition_key)
    return "__all__"


def _python_type(context: InputContext | OutputContext) -> Any:
    if isinstance(context, InputContext) and context.upstream_output is not None:
        return context.upstream_output.dagster_type.typing_type
    return context.dagster_type.typing_type


class JsonIOManager(ConfigurableIOManager):
    """Stores outputs as JSON objects in the pipeline's storage."""

    storage: ResourceDependency[StorageResource]
    prefix: str = Field(
        default=layout.IO_PREFIX.rstrip("/"), description="Key prefix for stored outputs."
    )

    def _key(self, context: InputContext | OutputContext) -> str:
        if context.has_asset_key:
            path = "/".join(_safe(part) for part in context.asset_key.path)
            return f"{self.prefix}/assets/{path}/{_partition_segment(context)}.json"
        segments = [_safe(str(s)) for s in context.get_identifier()]
        return f"{self.prefix}/runs/{'/'.join(segments)}.json"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        key = self._key(context)
        store = self.storage.get_store()
        store.put(key, to_json(obj, indent=1), "application/json")
        if context.has_asset_key:
            context.add_output_metadata({"stored_at": MetadataValue.path(store.uri(key))})

    def load_input(self, context: InputContext) -> Any:
        data = self.storage.get_store().get(self._key(context))
        python_type = _python_type(context)
        if python_type in (Any, object, None):
            return json.loads(data)
        return TypeAdapter(python_type).validate_json(data)


class ManifestIOManager(ConfigurableIOManager):
    """Writes each script's manifest to `results/<script_id>/manifest.json`, in one PUT."""

    storage: ResourceDependency[StorageResource]

    def handle_output(self, context: OutputContext, obj: Manifest) -> None:
        uri = self.storage.get_bucket().write_manifest(obj)
        context.add_output_metadata({"manifest": MetadataValue.path(uri)})

    def load_input(self, context: InputContext) -> Manifest:
        script_id = layout.script_segment(context.asset_partition_key)
        manifest = self.storage.get_bucket().read_manifest(script_id)
        if manifest is None:
            raise FileNotFoundError(f"no manifest for script {script_id}")
        return manifest
