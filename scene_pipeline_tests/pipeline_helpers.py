"""Helpers that run the real assets on a real Dagster instance, with chosen resources."""

import json
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, materialize

from scene_pipeline.assets import all_assets
from scene_pipeline.bucket import Bucket
from scene_pipeline.constants import SCRIPT_PARTITIONS_NAME
from scene_pipeline.contract.outputs import Manifest, SourceRef, utc_now
from scene_pipeline.contract.script import parse_script
from scene_pipeline.io_managers import JsonIOManager, ManifestIOManager
from scene_pipeline.models import AcceptedScript
from scene_pipeline.resources.providers import (
    ImageMakerResource,
    OfflineImageMakerResource,
    OfflinePromptWriterResource,
)
from scene_pipeline.resources.storage import StorageResource


def accept(storage: StorageResource, document: Any, instance: DagsterInstance) -> str:
    """What the sensor and the CLI do before a run: store the accepted copy, add the partition."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    script, shape = parse_script(data)
    storage.get_bucket().write_accepted(
        AcceptedScript(
            script=script, source=SourceRef(key="test"), shape=shape, accepted_at=utc_now()
        )
    )
    instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, [script.script_id])
    return script.script_id


def resources(storage: StorageResource, image_maker: ImageMakerResource | None = None) -> dict:
    return {
        "storage": storage,
        "prompt_writer": OfflinePromptWriterResource(),
        "image_maker": image_maker or OfflineImageMakerResource(long_side=128),
        "io_manager": JsonIOManager(storage=storage),
        "manifest_io_manager": ManifestIOManager(storage=storage),
    }


def run_script(
    instance: DagsterInstance,
    storage: StorageResource,
    script_id: str,
    *,
    scene_ids: list[str] | None = None,
    force: bool = False,
    image_maker: ImageMakerResource | None = None,
) -> Manifest:
    result = materialize(
        all_assets,
        partition_key=script_id,
        instance=instance,
        resources=resources(storage, image_maker),
        run_config={
            "ops": {
                "scenes": {
                    "ops": {
                        "plan_scenes": {"config": {"scene_ids": scene_ids or [], "force": force}}
                    }
                }
            }
        },
    )
    assert result.success
    manifest = storage.get_bucket().read_manifest(script_id)
    assert manifest is not None
    return manifest


def keys(bucket: Bucket, prefix: str) -> list[str]:
    return [info.key for info in bucket.store.list(prefix)]


def png_size(data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as image:
        image.verify()
    with Image.open(BytesIO(data)) as image:
        return image.size


def example(name: str) -> Any:
    return json.loads((Path(__file__).resolve().parents[1] / "examples" / name).read_text("utf-8"))
