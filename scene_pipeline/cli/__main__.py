"""`python -m scene_pipeline.cli`: the same as `scene-pipeline`."""

from scene_pipeline.cli import entry

entry()
