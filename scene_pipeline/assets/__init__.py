"""The per-script asset graph: script_document -> character_sheet -> scene_prompts ->
scene_images -> manifest, every asset partitioned by script id."""

from scene_pipeline.assets.character_sheet import character_sheet
from scene_pipeline.assets.manifest import manifest
from scene_pipeline.assets.scenes import scenes
from scene_pipeline.assets.script import script_document

all_assets = [script_document, character_sheet, scenes, manifest]

__all__ = ["all_assets", "character_sheet", "manifest", "scenes", "script_document"]
