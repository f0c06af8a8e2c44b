"""The per-script assets: `script_document` (external, from the intake) and the five assets
of the `scenes` graph. Every asset is partitioned by script id."""

from scene_pipeline.assets.graph import script_assets
from scene_pipeline.assets.script import script_document

all_assets = [script_document, script_assets]

__all__ = ["all_assets", "script_assets", "script_document"]
