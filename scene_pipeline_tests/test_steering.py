"""Operators steer a picture: prompt overrides, candidates and picks, through `scene-pipeline`
(a subprocess) against the fake KLING and the fake OpenAI servers, and from the UI's run config.

- `redraw --prompt` draws one scene with exactly that prompt (no LLM call), and the override
  is kept by re-drops and by the nightly schedule until `--clear-prompt`, which goes back to
  the written prompt and its picture without paying; `redraw` alone rolls the dice again.
- `--candidates 3` is one task of n = 3 per scene, within the account's limit (tasks of 3
  images run one at a time under a limit of 3); the number of candidates is not content.
- `pick` shows another candidate without any paid call, rewriting only the manifest and the
  operators' state; a pick survives later runs, even one that was going when it was made.
- Every bad input is one line, exit 2, no paid call, nothing changed.

The first run of the 3-scene script is made once per test session (xdist workers share
it) and copied for each test that continues from it: a copy is the same bucket in another
folder, its URIs rewritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from scene_pipeline.constants import KLING_POOL, SCRIPT_PARTITIONS_NAME
from scene_pipeline.resources.bucket import LocalBucketResource
from scene_pipeline.resources.providers import OfflineImageMakerResource
from scene_pipeline.resources.slots import PoolSlots, ensure_pool_limit
from scene_pipeline.settings import Settings
from scene_pipeline.wiring import build_resources

from .cli_helpers import (
    clean_environment,
    generations,
    local_path,
    ok,
    once_per_session,
    peak_in_flight,
    scenes_of,
)
from .fakes.kling import FakeKlingServer, FakeTask
from .fakes.openai import FakeOpenAIServer
from .pipeline_helpers import accept, nightly_tick, run_script
from .resilience import write_script

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

CLI = str(Path(sys.executable).with_name("scene-pipeline"))
REPO = Path(__file__).resolve().parents[1]
SCRIPT_ID = "steer"
LIMIT = 3  # KLING_MAX_CONCURRENCY and the fake account's limit
CANDIDATES = 3
IMAGE_LONG_SIDE = 480  # reference portraits must be >= 300 px a side
CLI_TIMEOUT = 240
GRANNY = "할머니"
OVERRIDE = "An old woman with a red umbrella waits alone at a rainy bus stop at night, wide shot"
KOREAN = "비 오는 밤, 빨간 우산을 든 할머니가 버스 정류장에 홀로 서 있다. 넓은 화면."


def steer_document(thunder: bool = False) -> dict[str, Any]:
    """Three scenes; the grandmother speaks in scene 2 (drawn with her portrait). `thunder`:
    a later version in which she also speaks, startled, in scene 3."""
    scene3: list[dict[str, Any]] = [{"type": "sound", "text": "빗소리가 들린다."}]
    if thunder:
        scene3.append(
            {"type": "dialogue", "character": GRANNY, "text": "천둥이야!", "emotion": "startled"}
        )
    return {
        "script_metadata": {
            "script_id": SCRIPT_ID,
            "title": "정류장",
            "characters": [{"name": GRANNY, "gender": 1, "description": "백발, 빨간 우산"}],
        },
        "scenes": [
            {"scene_id": 1, "audios": [{"type": "narration", "text": "버스가 떠난다."}]},
            {
                "scene_id": 2,
                "audios": [
                    {
                        "type": "dialogue",
                        "character": GRANNY,
                        "text": "우산을 챙겨라.",
                        "emotion": "calm",
                    }
                ],
            },
            {"scene_id": 3, "audios": scene3},
        ],
        "options": {"style": "ghibli", "aspect_ratio": "9:16"},
    }


# -- running the CLI --------------------------------------------------------------------------


def fake_env(storage: Path, openai: FakeOpenAIServer, kling: FakeKlingServer) -> dict[str, str]:
    """The pipeline's variables for a run against the fakes (without the rest of the
    environment: also used to set up the in-process schedule and run)."""
    return {
        "SCENE_PIPELINE_LOCAL_DIR": str(storage),
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.base_url,
        "KLING_ACCESS_KEY": kling.options.access_key,
        "KLING_SECRET_KEY": kling.options.secret_key,
        "KLING_API_BASE_URL": kling.url,
        "KLING_MAX_CONCURRENCY": str(LIMIT),
        "KLING_POLL_INTERVAL_SECONDS": "0.2",
    }


def start_cli(*args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(**env),
        cwd=REPO,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> Any:
    """Wait (bounded) for a CLI process; whatever its group left running is killed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"{process.args} timed out:\n{err[-3000:]}") from None
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return finish(start_cli(*args, env=env))


# -- reading the bucket -----------------------------------------------------------------------


def manifest_of(storage: Path) -> dict[str, Any]:
    return json.loads((storage / "results" / SCRIPT_ID / "manifest.json").read_text("utf-8"))


def record_of(image_uri: str) -> dict[str, Any]:
    path = local_path(image_uri)
    stem = re.sub(r"-\d$", "", path.stem)  # candidate k of several: {generation}-{k}.png
    return json.loads(path.with_name(stem + ".json").read_text("utf-8"))


def task_of(image_uri: str, tasks: list[FakeTask]) -> FakeTask:
    task_id = record_of(image_uri)["image"]["task_id"]
    found = [t for t in tasks if t.task_id == task_id]
    assert len(found) == 1, (image_uri, task_id)
    return found[0]


def snapshot(storage: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(storage)): p.read_bytes()
        for p in sorted(storage.rglob("*"))
        if p.is_file()
    }


def copy_storage(source: Path, target: Path) -> Path:
    """The same bucket in another folder: objects copied, their file:// URIs rewritten."""
    shutil.copytree(source, target)
    old = (source.resolve().as_uri() + "/").encode()
    new = (target.resolve().as_uri() + "/").encode()
    for path in target.rglob("*.json"):
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))
    return target


def status_rows(stdout: str, scene_ids: list[str]) -> dict[str, dict[str, str]]:
    """The scenes table of `scene-pipeline status` (right-aligned columns) as dicts."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("scene_id "))
    header = lines[at]
    ends, position = [], 0
    for name in header.split():
        position = header.index(name, position) + len(name)
        ends.append((name, position))
    rows = {}
    for line in lines[at + 1 : at + 1 + len(scene_ids)]:
        cells, start = {}, 0
        for name, end in ends:
            cells[name] = line[start:end].strip()
            start = end
        rows[cells["scene_id"]] = cells
    assert sorted(rows) == sorted(scene_ids), stdout
    return rows


# -- the first run, once per session ----------------------------------------------------------


@dataclass(frozen=True)
class FirstRun:
    storage: Path
    tasks: list[FakeTask]
    answers: Counter[tuple[int, int]]


def make_first_run(folder: Path) -> FirstRun:
    """`scene-pipeline run` of the 3-scene script (the account limited to 3), then `redraw
    --scene 2 --candidates 3`: scene 2 has 3 candidates, the others one picture each."""
    script = write_script(folder / "steer.json", steer_document())
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(
            task_latency_seconds=0.5, concurrency_limit=LIMIT, image_long_side=IMAGE_LONG_SIDE
        ) as kling,
    ):
        env = fake_env(folder / "storage", openai, kling)
        ok(cli("run", script, env=env))
        ok(cli("redraw", SCRIPT_ID, "--scene", "2", "--candidates", str(CANDIDATES), env=env))
        return FirstRun(folder / "storage", kling.tasks, Counter(kling.answers))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first run's bucket (never changed by the tests: they copy it) and what the fakes saw."""
    return once_per_session(tmp_path_factory, "steer-first-run", make_first_run)


@dataclass
class Setup:
    """A test's own copy of the first run's bucket, with fresh fakes (counters at zero)."""

    storage: Path
    script: Path
    openai: FakeOpenAIServer
    kling: FakeKlingServer
    env: dict[str, str]

    def paid_nothing(self) -> bool:
        return self.kling.tasks == [] and sum(self.openai.calls.values()) == 0


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeKlingServer]]:
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(
            task_latency_seconds=0.3, concurrency_limit=LIMIT, image_long_side=IMAGE_LONG_SIDE
        ) as kling,
    ):
        yield openai, kling


@pytest.fixture
def drawn(
    first_run: FirstRun, tmp_path: Path, fakes: tuple[FakeOpenAIServer, FakeKlingServer]
) -> Setup:
    storage = copy_storage(first_run.storage, tmp_path / "storage")
    script = write_script(tmp_path / "steer.json", steer_document())
    openai, kling = fakes
    return Setup(storage, script, openai, kling, fake_env(storage, openai, kling))


# -- candidates -------------------------------------------------------------------------------


def test_candidates_are_one_task_of_n_images_stored_and_listed(first_run: FirstRun) -> None:
    manifest = manifest_of(first_run.storage)
    scene = scenes_of(manifest)["2"]
    # The redraw of scene 2 was one task of 3 images (after 4 tasks of one image each).
    assert [t.n for t in first_run.tasks] == [1, 1, 1, 1, CANDIDATES]
    assert task_of(scene["image_s3url"], first_run.tasks) is first_run.tasks[-1]
    generation = scene["generation"]
    folder = first_run.storage / "results" / SCRIPT_ID / "scenes" / "2"
    assert sorted(p.name for p in folder.glob(f"{generation}*.png")) == [
        f"{generation}-{k}.png" for k in (1, 2, 3)
    ]
    assert scene["candidates"] == [(folder / f"{generation}-{k}.png").as_uri() for k in (1, 2, 3)]
    assert scene["picked"] == 1 and scene["image_s3url"] == scene["candidates"][0]
    for scene_id in ("1", "3"):
        single = scenes_of(manifest)[scene_id]
        assert single["candidates"] == [single["image_s3url"]] and single["picked"] == 1
        assert local_path(single["image_s3url"]).name == f"{single['generation']}.png"


def pool_state(home: Path) -> str:
    """The `kling` pool and its claim gate on the instance at `home` (for a hung run)."""
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        return "\n".join(
            str(storage.get_concurrency_info(pool)) for pool in (KLING_POOL, "kling_claims")
        )


def test_tasks_of_n_candidates_run_one_at_a_time_within_the_account_limit(
    drawn: Setup, tmp_path: Path
) -> None:
    """Two scenes of 3 candidates each under an account limit of 3 (= KLING_MAX_CONCURRENCY):
    a task of n images holds n slots, so the tasks run one after the other."""
    before = manifest_of(drawn.storage)
    home = tmp_path / "dagster"  # a kept instance: its pool tells why a run would hang
    home.mkdir()
    run = start_cli(
        "run", drawn.script, "--scenes", "1,3", "--force", "--candidates", str(CANDIDATES),
        env={**drawn.env, "DAGSTER_HOME": str(home)},
    )  # fmt: skip
    try:
        ok(finish(run, timeout=150))
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pool_state(home)}") from None
    tasks = drawn.kling.tasks
    assert [t.n for t in tasks] == [CANDIDATES, CANDIDATES]
    # The limit was reached, and the fake (which refuses work over its limit with 429/1303)
    # refused nothing.
    assert drawn.kling.answers[(429, 1303)] == 0, drawn.kling.answers
    assert peak_in_flight(tasks) == LIMIT
    after = scenes_of(manifest_of(drawn.storage))
    for scene_id in ("1", "3"):
        assert len(after[scene_id]["candidates"]) == CANDIDATES and after[scene_id]["picked"] == 1
        assert task_of(after[scene_id]["image_s3url"], tasks).n == CANDIDATES
    assert after["2"] == scenes_of(before)["2"]


class _Stopped(Exception):
    pass


def test_a_slot_claim_is_granted_when_the_slot_it_waits_for_is_freed(tmp_path: Path) -> None:
    """Two steps of the account's pool (limit 1): the first frees its slot at the moment the
    second registers its claim (as two step processes do), and the second must then get it."""
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        ensure_pool_limit(instance, 1)
        storage = instance.event_log_storage
        stop, granted = threading.Event(), threading.Event()

        def poll(seconds: float) -> None:
            if stop.is_set():
                raise _Stopped
            time.sleep(seconds)

        first = PoolSlots(instance, "run-a", "scenes.render_scene[1]")
        second = PoolSlots(instance, "run-b", "scenes.render_scene[2]", sleep=poll)
        has_room = storage.has_unassigned_slots

        def freed_meanwhile(pool: str) -> bool:
            answer = has_room(pool)  # the second step sees the pool full...
            if pool == KLING_POOL:
                storage.has_unassigned_slots = has_room
                # ...and the first step's task ends right then: it frees its slot.
                (held,) = storage.get_concurrency_info(KLING_POOL).claimed_slots
                assert held.run_id == "run-a"
                storage.free_concurrency_slot_for_step("run-a", held.step_key)
            return answer

        def claim() -> None:
            try:
                with second.hold(1):
                    granted.set()
            except _Stopped:
                pass

        with first.hold(1):
            storage.has_unassigned_slots = freed_meanwhile
            waiter = threading.Thread(target=claim, daemon=True)
            waiter.start()
            got_it = granted.wait(5)
            pool = storage.get_concurrency_info(KLING_POOL)
            freed = not any(c.run_id == "run-a" for c in pool.claimed_slots)
        stop.set()
        waiter.join(10)
    assert freed, pool  # the first step's slot was freed while the second one registered
    assert got_it, f"the claim still waits on a pool with no slot taken: {pool}"


def test_another_candidate_count_does_not_redraw_an_unchanged_scene(drawn: Setup) -> None:
    before = manifest_of(drawn.storage)
    done = ok(cli("run", drawn.script, "--candidates", "2", env=drawn.env))
    assert "up to date" in done.stderr
    assert drawn.paid_nothing()
    assert manifest_of(drawn.storage) == before


# -- prompt overrides -------------------------------------------------------------------------


def nightly(
    env: dict[str, str], instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, Any]]:
    """One tick of the nightly schedule built from `env` (as definitions.py builds it), and
    the resources it was evaluated with."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the resources read their secrets as EnvVars
    settings = Settings.from_env(env)
    resources = build_resources(settings)
    return nightly_tick(instance, settings, resources), resources


def test_a_prompt_override_redraws_one_scene_and_is_kept_until_cleared(
    drawn: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = manifest_of(drawn.storage)
    written = scenes_of(base)["2"]["image_prompt"]
    assert written and written != OVERRIDE

    # The override: one task with exactly that prompt, no LLM call, the other scenes kept.
    ok(cli("redraw", SCRIPT_ID, "--scene", "2", "--prompt", OVERRIDE, env=drawn.env))
    assert [t.prompt for t in drawn.kling.tasks] == [OVERRIDE]
    assert drawn.kling.tasks[0].n == 1
    assert sum(drawn.openai.calls.values()) == 0
    overridden = manifest_of(drawn.storage)
    scene = scenes_of(overridden)["2"]
    assert scene["image_prompt"] == OVERRIDE and scene["prompt_source"] == "override"
    assert task_of(scene["image_s3url"], drawn.kling.tasks).prompt == OVERRIDE
    assert {s: g for s, g in generations(overridden).items() if s != "2"} == {
        s: g for s, g in generations(base).items() if s != "2"
    }
    status = ok(cli("status", SCRIPT_ID, env=drawn.env))
    assert status_rows(status.stdout, ["1", "2", "3"])["2"]["prompt_source"] == "override"
    assert "override scene 2 by" in status.stdout

    # A re-drop of the same file keeps it and pays nothing.
    again = ok(cli("run", drawn.script, env=drawn.env))
    assert "up to date" in again.stderr
    assert len(drawn.kling.tasks) == 1
    assert manifest_of(drawn.storage) == overridden

    # The nightly schedule keeps it too: scene 3 changed in a newer accepted version, the
    # night's run draws scene 3 alone and scene 2 still shows the override.
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(SCRIPT_PARTITIONS_NAME, [SCRIPT_ID])
        result, resources = nightly(drawn.env, instance, monkeypatch)
        assert not result.run_requests  # nothing to draw: the override is not "changed"
        accept(resources["bucket"], steer_document(thunder=True), instance)
        result, resources = nightly(drawn.env, instance, monkeypatch)
        assert [r.partition_key for r in result.run_requests] == [SCRIPT_ID]
        config = result.run_requests[0].run_config["ops"]["scenes"]["ops"]["plan_script"]
        assert "2" not in config["config"]["scene_ids"]
        run_script(
            instance,
            resources["bucket"],
            SCRIPT_ID,
            image_maker=resources["image_maker"],
            prompt_writer=resources["prompt_writer"],
            pipeline=resources["pipeline"],
            **config["config"],
        )
    night = manifest_of(drawn.storage)
    assert {s for s, g in generations(night).items() if g != generations(overridden)[s]} == {"3"}
    assert scenes_of(night)["2"] == scenes_of(overridden)["2"]
    assert len(drawn.kling.tasks) == 2 and drawn.kling.tasks[1].prompt != OVERRIDE
    assert task_of(scenes_of(night)["3"]["image_s3url"], drawn.kling.tasks) is drawn.kling.tasks[1]

    # Cleared: back to the written prompt and its picture, which exists: nothing is paid.
    ok(cli("redraw", SCRIPT_ID, "--scene", "2", "--clear-prompt", env=drawn.env))
    assert len(drawn.kling.tasks) == 2
    cleared = scenes_of(manifest_of(drawn.storage))["2"]
    assert cleared["prompt_source"] == "written" and cleared["image_prompt"] == written
    assert cleared["generation"] == scenes_of(base)["2"]["generation"]

    # A plain redraw: the same (written) prompt, one new task, a new picture.
    ok(cli("redraw", SCRIPT_ID, "--scene", "2", env=drawn.env))
    assert [t.prompt for t in drawn.kling.tasks[2:]] == [written]
    rerolled = scenes_of(manifest_of(drawn.storage))["2"]
    assert rerolled["generation"] != cleared["generation"]
    assert rerolled["prompt_source"] == "written"

    # A prompt from a UTF-8 file (Korean), as it is.
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(KOREAN + "\n", "utf-8")
    ok(cli("redraw", SCRIPT_ID, "--scene", "2", "--prompt-file", prompt_file, env=drawn.env))
    assert [t.prompt for t in drawn.kling.tasks[3:]] == [KOREAN]
    from_file = scenes_of(manifest_of(drawn.storage))["2"]
    assert from_file["image_prompt"] == KOREAN and from_file["prompt_source"] == "override"


# -- picks ------------------------------------------------------------------------------------


def test_a_pick_shows_another_candidate_without_paying_and_is_kept(
    drawn: Setup, tmp_path: Path
) -> None:
    before = snapshot(drawn.storage)
    scene = scenes_of(manifest_of(drawn.storage))["2"]
    home = tmp_path / "dagster"
    home.mkdir()

    done = ok(cli("pick", SCRIPT_ID, "2", "2", env={**drawn.env, "DAGSTER_HOME": str(home)}))
    assert "candidate 2 of 3" in done.stdout
    assert drawn.paid_nothing()
    # The UI's manifest asset shows the pick (a materialization without a run).
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("manifest"))
        assert event is not None and event.run_id == ""
        shown = event.asset_materialization
        assert shown.partition == SCRIPT_ID and "candidate 2 picked" in shown.description
        rows = {r.data["scene_id"]: r.data for r in shown.metadata["scenes"].value.records}
        assert rows["2"]["picked"] == 2
    picked = scenes_of(manifest_of(drawn.storage))["2"]
    assert picked["picked"] == 2 and picked["image_s3url"] == scene["candidates"][1]
    assert picked["candidates"] == scene["candidates"]
    after = snapshot(drawn.storage)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {f"results/{SCRIPT_ID}/manifest.json", f"pipeline/operator/{SCRIPT_ID}.json"}

    # A later run that draws another scene leaves the pick alone.
    ok(cli("run", drawn.script, "--scenes", "3", "--force", env=drawn.env))
    assert len(drawn.kling.tasks) == 1
    kept = scenes_of(manifest_of(drawn.storage))["2"]
    assert kept["picked"] == 2 and kept["image_s3url"] == scene["candidates"][1]

    status = ok(cli("status", SCRIPT_ID, env=drawn.env))
    rows = status_rows(status.stdout, ["1", "2", "3"])
    assert (rows["2"]["prompt_source"], rows["2"]["candidates"], rows["2"]["picked"]) == (
        "written",
        "3",
        "2",
    )
    assert (rows["3"]["candidates"], rows["3"]["picked"]) == ("1", "1")


def test_a_pick_made_while_a_run_is_going_is_kept(drawn: Setup) -> None:
    candidates = scenes_of(manifest_of(drawn.storage))["2"]["candidates"]
    drawn.kling.options.hang_all = True  # the run's task stays in flight until released
    run = start_cli("run", drawn.script, "--scenes", "3", "--force", env=drawn.env)
    try:
        deadline = time.monotonic() + 120
        while not drawn.kling.tasks:
            assert run.poll() is None, finish(run).stderr[-3000:]
            assert time.monotonic() < deadline, "the run submitted no task within 120 s"
            time.sleep(0.1)
        ok(cli("pick", SCRIPT_ID, "2", "2", env=drawn.env))
        assert run.poll() is None  # the run is still going: it publishes after the pick
    finally:
        drawn.kling.options.hang_all = False
        drawn.kling.release_hung_tasks()
    ok(finish(run))
    manifest = manifest_of(drawn.storage)
    scene = scenes_of(manifest)["2"]
    assert scene["picked"] == 2 and scene["image_s3url"] == candidates[1]
    assert len(drawn.kling.tasks) == 1
    assert scenes_of(manifest)["3"]["image_s3url"] == task_image(drawn, manifest, "3")


def task_image(setup: Setup, manifest: dict[str, Any], scene_id: str) -> str:
    """The scene's image URI, checked to come from the fake's only task."""
    uri = scenes_of(manifest)[scene_id]["image_s3url"]
    assert task_of(uri, setup.kling.tasks) is setup.kling.tasks[0]
    return uri


# -- refusals ---------------------------------------------------------------------------------

BAD_INPUTS: dict[str, tuple[list[str], str, dict[str, str]]] = {
    "redraw of an unknown script": (
        ["redraw", "no-such-script", "--scene", "1", "--prompt", "a cat"],
        "unknown script no-such-script",
        {},
    ),
    "pick of an unknown script": (["pick", "no-such-script", "1", "1"], "unknown script", {}),
    "redraw of an unknown scene": (
        ["redraw", SCRIPT_ID, "--scene", "99", "--prompt", "a cat"],
        "has no scene '99'",
        {},
    ),
    "pick of an unknown scene": (["pick", SCRIPT_ID, "99", "1"], "has no scene '99'", {}),
    "an empty prompt": (["redraw", SCRIPT_ID, "--scene", "2", "--prompt", "  "], "empty", {}),
    "a prompt over the cap": (
        ["redraw", SCRIPT_ID, "--scene", "2", "--prompt", "x" * 101],
        "the prompt is 101 characters; at most 100",
        {"SCENE_PIPELINE_PROMPT_MAX_CHARS": "100"},
    ),
    "a prompt file that is not UTF-8": (
        ["redraw", SCRIPT_ID, "--scene", "2", "--prompt-file", "{latin1}"],
        "not UTF-8",
        {},
    ),
    "pick 0": (["pick", SCRIPT_ID, "2", "0"], "pick 1-3, not 0", {}),
    "pick 4 of 3": (["pick", SCRIPT_ID, "2", "4"], "pick 1-3, not 4", {}),
    "redraw --candidates 5": (
        ["redraw", SCRIPT_ID, "--scene", "2", "--candidates", "5"],
        "--candidates 5: use 1-4",
        {},
    ),
    "run --candidates 5": (["run", "{script}", "--candidates", "5"], "use 1-4", {}),
    "candidates over the account limit": (
        ["run", "{script}", "--candidates", "4"],
        "KLING_MAX_CONCURRENCY",
        {},
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_one_line_and_changes_nothing(
    case: str, drawn: Setup, tmp_path: Path
) -> None:
    args, says, extra = BAD_INPUTS[case]
    latin1 = tmp_path / "prompt-latin1.txt"
    latin1.write_bytes("café au lait, à la gare".encode("latin-1"))
    args = [a.format(latin1=latin1, script=drawn.script) for a in args]
    before = snapshot(drawn.storage)
    done = cli(*args, env={**drawn.env, **extra})
    assert done.returncode == 2, (done.stdout, done.stderr)
    # One line on stderr, with nothing (no banner) before it, and nothing on stdout.
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr
    assert done.stdout == ""
    assert drawn.paid_nothing()
    assert snapshot(drawn.storage) == before


# -- the UI's run config ----------------------------------------------------------------------


def gallery_rows(instance: DagsterInstance) -> dict[str, list[str]]:
    """The `scene_images` gallery of the latest materialization: scene id -> its cells."""
    event = instance.get_latest_materialization_event(AssetKey("scene_images"))
    assert event is not None and event.asset_materialization is not None
    table = event.asset_materialization.metadata["gallery"].value
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:4]  # status, prompt source, candidates
    return rows


def test_overrides_picks_and_candidates_from_the_run_config(tmp_path: Path) -> None:
    bucket = LocalBucketResource(local_dir=str(tmp_path / "bucket"))
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        accept(bucket, steer_document(), instance)
        # Offline pictures big enough for the portrait to be a reference (>= 300 px a side).
        maker = OfflineImageMakerResource(long_side=IMAGE_LONG_SIDE)
        first = run_script(instance, bucket, SCRIPT_ID, image_maker=maker, candidates=3)
        assert [len(s.candidates) for s in first.scenes] == [3, 3, 3]
        manifest = run_script(
            instance,
            bucket,
            SCRIPT_ID,
            image_maker=maker,
            prompt_overrides={"2": OVERRIDE},
            picks={"1": 2},
            candidates=2,
        )
        rows = gallery_rows(instance)
    scenes = {s.scene_id: s for s in manifest.scenes}
    assert scenes["1"].picked == 2 and scenes["1"].image_s3url == scenes["1"].candidates[1]
    assert scenes["1"].generation == first.scenes[0].generation  # picked, not redrawn
    assert scenes["2"].prompt_source == "override" and scenes["2"].image_prompt == OVERRIDE
    assert len(scenes["2"].candidates) == 2 and scenes["2"].picked == 1
    assert scenes["3"].generation == first.scenes[2].generation
    assert rows == {
        "1": ["succeeded", "written", "picked 2/3"],
        "2": ["succeeded", "override", "picked 1/2"],
        "3": ["succeeded", "written", "picked 1/3"],
    }
