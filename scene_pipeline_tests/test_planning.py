"""What a run must pay for, decided by plain functions (no Dagster): the hashes cover exactly
what a picture is made from, so a change redraws exactly the scenes it touches, and nothing
else costs a paid image.

Each test makes one offline run of a script with the core functions a run's steps call
(`prepare`, `draw_portrait`, `render_scene`, `finish`, `publish`) on a real local bucket, then
asks `assess` (what the CLI, the sensor and the nightly schedule ask) or `prepare` (what the
run's plan step asks) what a next run would draw.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scene_pipeline.constants import KLING_MAX_REFERENCES
from scene_pipeline.contract.outputs import Manifest, SourceRef
from scene_pipeline.contract.script import Script
from scene_pipeline.contract.script_parsing import parse_script
from scene_pipeline.core import actions
from scene_pipeline.core.assessment import Assessment, assess, load_view
from scene_pipeline.core.intake import accepted_script, store_accepted
from scene_pipeline.core.manifests import publish
from scene_pipeline.core.operator import read_state, stamp
from scene_pipeline.core.outcomes import Attempt
from scene_pipeline.core.planning import Selection
from scene_pipeline.core.planning_inputs import Providers
from scene_pipeline.core.portrait_drawing import draw_portrait
from scene_pipeline.core.portraits import character_key
from scene_pipeline.core.rendering import Tools, render_scene
from scene_pipeline.core.runs import Prepared, finish, prepare
from scene_pipeline.models import AcceptedScript
from scene_pipeline.providers.base import (
    CharacterLook,
    GeneratedImage,
    ImageRequest,
    NoSlots,
    ProviderIdentity,
    ScenePromptRequest,
    SlotGate,
    TaskJournal,
    WrittenPrompt,
    WrittenSheet,
)
from scene_pipeline.providers.errors import SceneRejectedError
from scene_pipeline.providers.offline import PlaceholderImageMaker, TemplatePromptWriter
from scene_pipeline.storage import Bucket
from scene_pipeline.storage.local import LocalObjectStore

from .pipeline_helpers import example

CAP = 1500
RUN_IDS = (f"{n:08x}-0000-0000-0000-000000000000" for n in itertools.count(1))


class SheetWriter(TemplatePromptWriter):
    """A writer whose looks differ from the template's (as a real model's do); it can leave
    characters out of its answer, which makes their looks template fallbacks."""

    identity = ProviderIdentity(provider="test", model="sheet-writer", version="1")

    def __init__(self, omit: set[str] | None = None) -> None:
        self.omit = omit or set()
        self.scene_calls = 0

    def write_character_sheet(self, script: Script) -> WrittenSheet:
        looks = [
            CharacterLook(name=c.name, look=f"the drawn look of {c.name}: {c.description}")
            for c in script.script_metadata.characters
            if c.name not in self.omit
        ]
        return WrittenSheet(looks=looks, model=self.identity.model)

    def write_scene_prompt(self, request: ScenePromptRequest) -> WrittenPrompt:
        self.scene_calls += 1
        return super().write_scene_prompt(request)


class Maker(PlaceholderImageMaker):
    """The offline maker, small, refusing the listed scenes (`refused`: for their content)."""

    def __init__(self, refuse: set[str] | None = None, moderation: bool = True) -> None:
        # 480: portraits (2:3) keep the 300 px a side that a reference image needs.
        super().__init__(long_side=480)
        self.refuse = refuse or set()
        self.moderation = moderation

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        if request.subject.removeprefix("scene ") in self.refuse:
            raise SceneRejectedError("moderation: refused", refused=self.moderation)
        return super().make_image(request, journal, slots)


def providers_for(writer: Any, maker: Any, references: bool = True) -> Providers:
    return Providers(
        writer=writer.identity,
        maker=maker.identity,
        references_on=references,
        max_references=KLING_MAX_REFERENCES if references else 0,
        prompt_cap=CAP,
    )


def store(bucket: Bucket, document: dict[str, Any]) -> AcceptedScript:
    script, shape = parse_script(_json(document))
    accepted = accepted_script(script, shape, SourceRef(key="test"), datetime.now(UTC))
    return store_accepted(bucket, accepted, keep_newer=False).accepted


def _json(document: dict[str, Any]) -> bytes:
    import json

    return json.dumps(document, ensure_ascii=False).encode()


def plan(
    bucket: Bucket,
    accepted: AcceptedScript,
    writer: Any,
    maker: Any,
    selection: Selection | None = None,
) -> Prepared:
    """What the run's plan step decides (it writes the sheet when looks are missing)."""
    return prepare(
        bucket,
        accepted,
        lambda: writer,
        providers_for(writer, maker),
        selection or Selection(),
        Attempt(run_id=next(RUN_IDS), retry_number=0, max_retries=2),
        root_run_id=next(RUN_IDS),
        now=datetime.now(UTC),
    )


def offline_run(
    bucket: Bucket,
    accepted: AcceptedScript,
    writer: Any,
    maker: Any,
    selection: Selection | None = None,
) -> Manifest:
    """A whole run with the functions the steps call, in the steps' order."""
    prepared = plan(bucket, accepted, writer, maker, selection)
    attempt = Attempt(run_id=next(RUN_IDS), retry_number=0, max_retries=2)
    tools = Tools(
        bucket=bucket, writer=lambda: writer, maker=maker, slots=NoSlots(), prompt_cap=CAP
    )
    portraits = {p.name: p for p in prepared.portraits}
    for todo in prepared.assessment.portraits.to_draw:
        portraits[todo.name] = draw_portrait(todo, tools, attempt)
    outcomes = [
        render_scene(todo, portraits, tools, attempt)
        for todo in prepared.assessment.scenes.to_render
    ]
    manifest = finish(
        accepted,
        [*prepared.carried_scenes, *(o.entry for o in outcomes)],
        list(portraits.values()),
        providers_for(writer, maker),
        read_state(bucket, accepted.script.script_id),
    )
    return publish(bucket, accepted.script.script_id, lambda _state, _current: manifest)


def assessment(
    bucket: Bucket, script_id: str, writer: Any, maker: Any, selection: Selection | None = None
) -> Assessment:
    """What the CLI's "up to date?", the sensor and the nightly schedule ask."""
    return assess(
        bucket,
        load_view(bucket, script_id),
        providers_for(writer, maker),
        selection or Selection(),
        run_id="assess",
        now=datetime.now(UTC),
    )


def due_scenes(found: Assessment) -> list[str]:
    return [p.scene.scene_id for p in found.scenes.to_render]


def due_portraits(found: Assessment) -> list[str]:
    return [p.name for p in found.portraits.to_draw]


@pytest.fixture
def bucket(tmp_path: Path) -> Bucket:
    return Bucket(LocalObjectStore(tmp_path / "bucket"))


@pytest.fixture
def rooftop() -> dict[str, Any]:
    """Scenes 1 and 2 involve 지우, scene 3-key the cat (고양이)."""
    return example("rooftop_cat.json")


@pytest.fixture
def drawn(bucket: Bucket, rooftop: dict[str, Any]) -> Manifest:
    """The script after one complete offline run."""
    manifest = offline_run(bucket, store(bucket, rooftop), SheetWriter(), Maker())
    assert manifest.status == "complete"
    return manifest


# -- nothing changed: nothing to pay ----------------------------------------------------------


def test_an_unchanged_script_is_up_to_date_with_no_paid_image(bucket, drawn) -> None:
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert found.up_to_date and found.paid_images == 0
    assert due_scenes(found) == [] and due_portraits(found) == []
    assert not found.scenes.stale and not found.scenes.refused
    # The plan step of a run agrees, and writes no prompt for it.
    writer = SheetWriter()
    prepared = plan(bucket, store(bucket, example("rooftop_cat.json")), writer, Maker())
    assert prepared.assessment.paid_images == 0 and writer.scene_calls == 0
    assert sorted(e.scene_id for e in prepared.carried_scenes) == ["1", "2", "3-key"]


def test_the_first_assessment_of_a_script_counts_every_scene_and_portrait(bucket, rooftop):
    store(bucket, rooftop)
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["1", "2", "3-key"]
    assert due_portraits(found) == ["지우", "고양이"]
    assert found.paid_images == 5


# -- what each change redraws -----------------------------------------------------------------


def test_a_style_change_makes_every_scene_and_portrait_due(bucket, drawn, rooftop) -> None:
    changed = copy.deepcopy(rooftop)
    changed["options"]["style"] = "pixar"
    store(bucket, changed)
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["1", "2", "3-key"]
    assert due_portraits(found) == ["지우", "고양이"]
    assert found.paid_images == 5


@pytest.mark.parametrize(
    ("name", "scenes"), [("지우", ["1", "2"]), ("고양이", ["3-key"])], ids=["jiwoo", "cat"]
)
def test_a_character_description_change_redraws_only_that_characters_scenes(
    bucket, drawn, rooftop, name: str, scenes: list[str]
) -> None:
    changed = copy.deepcopy(rooftop)
    for character in changed["script_metadata"]["characters"]:
        if character["name"] == name:
            character["description"] += " 오늘은 모자를 썼다."
    store(bucket, changed)
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == scenes
    assert due_portraits(found) == [name]
    # The run's own plan (which rewrites that look) draws the same.
    prepared = plan(bucket, store(bucket, changed), SheetWriter(), Maker())
    assert due_scenes(prepared.assessment) == scenes
    assert due_portraits(prepared.assessment) == [name]


def test_a_scene_text_change_redraws_that_scene_only(bucket, drawn, rooftop) -> None:
    changed = copy.deepcopy(rooftop)
    changed["scenes"][1]["audios"][1]["text"] = "오늘은 비가 오네."  # scene 2 (지우 speaks)
    store(bucket, changed)
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["2"] and due_portraits(found) == []


def test_a_template_fallback_look_is_corrected_once_a_real_look_exists(bucket, rooftop) -> None:
    accepted = store(bucket, rooftop)
    # The writer's answer leaves the cat out: its look falls back to the template.
    first = offline_run(bucket, accepted, SheetWriter(omit={"고양이"}), Maker())
    assert first.status == "complete"
    sheet = plan(bucket, accepted, SheetWriter(omit={"고양이"}), Maker()).sheet.sheet
    assert [(look.name, look.fallback) for look in sheet.looks] == [
        ("지우", False),
        ("고양이", True),
    ]

    # The writer still cannot write it: nothing is redrawn from the same template look.
    again = plan(bucket, accepted, SheetWriter(omit={"고양이"}), Maker())
    assert again.assessment.paid_images == 0

    # Now it can: the cat's scene (and portrait) are due, the others are not.
    fixed = plan(bucket, accepted, SheetWriter(), Maker())
    assert [(look.name, look.fallback) for look in fixed.sheet.sheet.looks] == [
        ("지우", False),
        ("고양이", False),
    ]
    assert due_scenes(fixed.assessment) == ["3-key"]
    assert due_portraits(fixed.assessment) == ["고양이"]


# -- stale: the providers changed, the content did not ----------------------------------------


class NewModel(Maker):
    identity = Maker.identity.model_copy(update={"model": "placeholder-v2"})


def test_a_provider_change_makes_scenes_stale_not_due(bucket, drawn) -> None:
    found = assessment(bucket, "rooftop-cat", SheetWriter(), NewModel())
    assert due_scenes(found) == []
    assert sorted(found.scenes.stale) == ["1", "2", "3-key"]
    assert "providers" in found.scenes.stale["1"]
    carried = {e.scene_id: e for e in found.scenes.carried}
    assert {sid: e.generation for sid, e in carried.items()} == {
        e.scene_id: e.generation for e in drawn.scenes
    }


@pytest.mark.parametrize(
    ("selection", "due"),
    [
        (Selection(refresh_stale=True), ["1", "2", "3-key"]),
        (Selection(scene_ids=frozenset({"2"})), ["2"]),
        (Selection(scene_ids=frozenset({"3-key"}), force=True), ["3-key"]),
        (Selection(force=True), ["1", "2", "3-key"]),
    ],
    ids=["refresh-stale", "selected", "selected-forced", "forced"],
)
def test_stale_scenes_are_redrawn_when_asked(bucket, drawn, selection, due) -> None:
    found = assessment(bucket, "rooftop-cat", SheetWriter(), NewModel(), selection)
    assert due_scenes(found) == due
    carried = sorted(e.scene_id for e in found.scenes.carried)
    assert carried == sorted({"1", "2", "3-key"} - set(due))


def test_a_provider_change_alone_pays_for_nothing_until_asked(bucket, drawn) -> None:
    """Portraits too: the same look drawn by other providers is kept, not paid for again,
    while no scene would be drawn with a new one."""
    found = assessment(bucket, "rooftop-cat", SheetWriter(), NewModel())
    assert due_scenes(found) == [] and due_portraits(found) == []
    assert found.up_to_date and found.paid_images == 0
    assert sorted(found.portraits.stale) == ["고양이", "지우"]

    refreshed = assessment(
        bucket, "rooftop-cat", SheetWriter(), NewModel(), Selection(refresh_stale=True)
    )
    assert due_portraits(refreshed) == ["지우", "고양이"]
    assert refreshed.paid_images == 3 + 2


# -- refusals ---------------------------------------------------------------------------------


@pytest.fixture
def refused(bucket: Bucket, rooftop: dict[str, Any]) -> Manifest:
    """Scene 2 was refused for its content; the others were drawn."""
    manifest = offline_run(bucket, store(bucket, rooftop), SheetWriter(), Maker(refuse={"2"}))
    entry = next(e for e in manifest.scenes if e.scene_id == "2")
    assert entry.status == "failed" and entry.refused
    return manifest


def test_a_refused_scene_is_not_due_again_for_the_same_content(bucket, refused) -> None:
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == [] and found.scenes.refused == ["2"]
    assert found.up_to_date and found.paid_images == 0


def test_a_refused_scene_is_due_when_its_content_changes(bucket, refused, rooftop) -> None:
    changed = copy.deepcopy(rooftop)
    changed["scenes"][1]["audios"][1]["text"] = "안녕, 고양이야."
    store(bucket, changed)
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["2"] and found.scenes.refused == []


def test_a_refused_scene_is_due_when_an_operator_overrides_its_prompt(bucket, refused) -> None:
    accepted = store(bucket, example("rooftop_cat.json"))
    actions.set_override(
        bucket, accepted.script, "2", "A young woman greets a grey cat on a roof.", CAP, stamp()
    )
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["2"] and found.scenes.refused == []
    assert found.scenes.to_render[0].prompt is not None
    assert found.scenes.to_render[0].prompt.source == "override"


def test_a_refused_scene_is_due_when_an_operator_selects_it(bucket, refused) -> None:
    found = assessment(
        bucket, "rooftop-cat", SheetWriter(), Maker(), Selection(scene_ids=frozenset({"2"}))
    )
    assert due_scenes(found) == ["2"]


def test_a_scene_rejected_for_another_reason_is_due_at_the_next_run(bucket, rooftop) -> None:
    manifest = offline_run(
        bucket, store(bucket, rooftop), SheetWriter(), Maker(refuse={"2"}, moderation=False)
    )
    assert [e.status for e in manifest.scenes] == ["succeeded", "failed", "succeeded"]
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_scenes(found) == ["2"] and found.paid_images == 1


# -- portraits --------------------------------------------------------------------------------


def test_portraits_are_reused_across_runs_and_redrawn_when_asked(bucket, drawn) -> None:
    accepted = store(bucket, example("rooftop_cat.json"))
    actions.request_portrait_redraw(bucket, accepted.script, "고양이", stamp())
    found = assessment(bucket, "rooftop-cat", SheetWriter(), Maker())
    assert due_portraits(found) == ["고양이"]
    assert found.portraits.to_draw[0].character_key == character_key("고양이")
