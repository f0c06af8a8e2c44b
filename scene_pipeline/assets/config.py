"""What an operator can ask of one run, in the Launchpad (or `scene-pipeline run/redraw`):

```yaml
ops:
  scenes:
    ops:
      plan_script:
        config:
          scene_ids: ["3"]            # empty: every scene that needs work
          force: true                 # redraw them even if unchanged (a new generation)
          candidates: 3               # images per scene (1-4) for this run
          prompt_overrides: {"3": "A rainy bus stop at night, ..."}
          clear_prompt_overrides: ["5"]
          picks: {"4": 2}             # show candidate 2 of scene 4 (costs nothing)
          redraw_portraits: ["할아버지"]
          portrait_uploads: {"할아버지": "uploads/grandpa.png"}
```
Overrides, picks and portraits are kept for later runs (operator state); the selection and
`candidates` apply to this run only.
"""

from dagster import Config
from pydantic import Field


class ScriptRunConfig(Config):
    """Which scenes a run works on, and the operators' changes it applies first."""

    scene_ids: list[str] = Field(
        default_factory=list,
        description="Scene ids to (re)generate; empty: every scene that needs work.",
    )
    force: bool = Field(
        default=False,
        description="Redraw the selected scenes even if unchanged: one new generation each;"
        " older images stay in the bucket.",
    )
    refresh_stale: bool = Field(
        default=False,
        description="Also redraw scenes that are stale only because the providers or the"
        " reference mode changed (paid; off by default, see SCENE_PIPELINE_REDRAW_STALE).",
    )
    candidates: int | None = Field(
        default=None,
        ge=1,
        le=4,
        description="Images per scene in this run (one task of n); default"
        " SCENE_PIPELINE_CANDIDATES. Not part of the content hash.",
    )
    prompt_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="scene id -> the exact image prompt to draw it with; kept until cleared.",
    )
    clear_prompt_overrides: list[str] = Field(
        default_factory=list,
        description="Scene ids whose override is removed (their written prompt is used again).",
    )
    picks: dict[str, int] = Field(
        default_factory=dict, description="scene id -> which candidate (from 1) is shown."
    )
    redraw_portraits: list[str] = Field(
        default_factory=list, description="Character names whose portrait is drawn anew."
    )
    portrait_uploads: dict[str, str] = Field(
        default_factory=dict,
        description="character name -> key under uploads/ of a PNG/JPEG to pin as portrait.",
    )
    note: str = Field(default="", description="Kept with the overrides and picks made here.")
