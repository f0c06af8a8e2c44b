"""The per-script asset graph, one graph of steps behind five assets:

```
script_document ─► character_sheet ─► character_portraits ─┐
  (external)            │                                    ├─► scene_images ─► manifest
                        └──────────────► scene_prompts ─────┘
```

Steps: `plan_script` (the sheet's missing looks, the missing portraits drawn in parallel, the
plan) ─► `render_scene` × scenes to render ─► `publish_script`. A scene's prompt and picture
are one step (its picture starts as soon as its prompt exists), and a run of an unchanged
script is not started at all (see the CLI and the sensor).
"""

from __future__ import annotations

from dagster import AssetCheckSpec, AssetKey, AssetsDefinition, GraphIn, GraphOut, graph

from scene_pipeline.assets.plan import plan_script
from scene_pipeline.assets.publish import CHECKS, publish_script
from scene_pipeline.assets.render import render_scene
from scene_pipeline.constants import ASSET_GROUP
from scene_pipeline.partitions import script_partitions

OUTPUTS = ("character_sheet", "character_portraits", "scene_prompts", "scene_images", "manifest")


@graph(
    ins={"script_document": GraphIn()},
    out={
        **{name: GraphOut() for name in OUTPUTS},
        **{f"manifest_{name}": GraphOut() for name in CHECKS},
    },
)
def scenes(script_document):  # type: ignore[no-untyped-def]
    sheet, portraits, scenes_todo, carried = plan_script(script_document)
    outcomes = scenes_todo.map(lambda plan: render_scene(plan, portraits)).collect()
    prompts, images, manifest, *check_outputs = publish_script(
        script_document, carried, outcomes, portraits
    )
    return {
        "character_sheet": sheet,
        "character_portraits": portraits,
        "scene_prompts": prompts,
        "scene_images": images,
        "manifest": manifest,
        **{f"manifest_{name}": out for name, out in zip(CHECKS, check_outputs, strict=True)},
    }


DESCRIPTIONS = {
    "character_sheet": "One canonical English look per character, kept per character"
    " (pipeline/character-sheets/{script_id}.json).",
    "character_portraits": "One reference portrait per character who appears in a scene"
    " (results/{script_id}/characters/{character_key}/); drawn once per look, or uploaded.",
    "scene_prompts": "One English image prompt per scene, written from the sheet or an"
    " operator's override.",
    "scene_images": "One picture (or several candidates) per scene, stored at"
    " results/{script_id}/scenes/{scene_id}/; the gallery shows them all.",
    "manifest": "The backend's answer: results/{script_id}/manifest.json.",
}

script_assets = AssetsDefinition.from_graph(
    scenes,
    keys_by_input_name={"script_document": AssetKey("script_document")},
    keys_by_output_name={name: AssetKey(name) for name in OUTPUTS},
    internal_asset_deps={
        "character_sheet": {AssetKey("script_document")},
        "character_portraits": {AssetKey("character_sheet")},
        "scene_prompts": {AssetKey("character_sheet"), AssetKey("script_document")},
        "scene_images": {AssetKey("scene_prompts"), AssetKey("character_portraits")},
        "manifest": {AssetKey("scene_images")},
    },
    partitions_def=script_partitions,
    group_name=ASSET_GROUP,
    descriptions_by_output_name=DESCRIPTIONS,
    check_specs=[
        AssetCheckSpec(name, asset="manifest", description=text) for name, text in CHECKS.items()
    ],
)
