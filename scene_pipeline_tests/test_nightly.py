"""core/nightly.py's plan of a night, as plain functions: which scripts are run, in which order,
and how the budgets of runs and paid images cut the list (the schedule's own tests run it over
real scripts; these cover the arithmetic)."""

from scene_pipeline.core.nightly import NightlyRequest, ScriptNeeds, plan_night


def ids(requests: list[NightlyRequest]) -> list[str]:
    return [r.script_id for r in requests]


def test_scripts_with_failed_scenes_come_first_then_by_id() -> None:
    needs = [
        ScriptNeeds("a-changed", other=["1"]),
        ScriptNeeds("m-failed", failed=["2"]),
        ScriptNeeds("b-failed", failed=["1"], other=["2"]),
    ]
    assert ids(plan_night(needs, max_runs=10, max_images=100)) == [
        "b-failed",
        "m-failed",
        "a-changed",
    ]
    assert ids(plan_night(needs, max_runs=2, max_images=100)) == ["b-failed", "m-failed"]


def test_scripts_with_nothing_to_draw_or_unreadable_are_not_requested() -> None:
    needs = [
        ScriptNeeds("done"),
        ScriptNeeds("refused", refused=2),
        ScriptNeeds("stale", stale=3),
        ScriptNeeds("broken", failed=["1"], unreadable="pipeline/scripts/broken.json: invalid"),
        ScriptNeeds("due", other=["1"]),
    ]
    assert ids(plan_night(needs, max_runs=10, max_images=100)) == ["due"]


def test_the_image_budget_counts_portraits_and_cuts_a_script_to_failed_scenes_first() -> None:
    needs = [
        ScriptNeeds("a", failed=["1"], portraits=2),  # 3 images
        ScriptNeeds("b", failed=["4", "9"], other=["1", "2"], portraits=1),  # 5 images
        ScriptNeeds("c", failed=["1"]),  # 1 image
    ]
    requests = plan_night(needs, max_runs=10, max_images=6)
    assert [(r.script_id, r.scene_ids, r.images) for r in requests] == [
        ("a", [], 3),  # fits: every due scene (no selection)
        ("b", ["4", "9"], 3),  # its portrait and 2 of its 4 scenes, the failed ones
    ]
    assert "2 scene(s) tonight (image budget)" in requests[1].reason
    # One more image: a changed scene joins, after the failed ones.
    more = plan_night(needs, max_runs=10, max_images=7)
    assert more[1].scene_ids == ["4", "9", "1"]
    # Enough for everyone: nobody is cut.
    assert [r.scene_ids for r in plan_night(needs, max_runs=10, max_images=9)] == [[], [], []]


def test_a_script_whose_portraits_do_not_fit_waits_for_another_night() -> None:
    needs = [
        ScriptNeeds("a", failed=["1"], portraits=1),
        ScriptNeeds("b", failed=["1"], portraits=4),
    ]
    assert ids(plan_night(needs, max_runs=10, max_images=3)) == ["a"]
    assert plan_night(needs, max_runs=10, max_images=0) == []
