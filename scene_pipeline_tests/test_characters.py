"""Consistent characters, as a user sees them through `scene-pipeline` (a subprocess) against
the fake KLING and the fake OpenAI servers.

One reference portrait per character who appears in a scene, drawn once (text to image); every
scene with characters is drawn with `multi-image2image` and exactly the portraits of the
characters present, most prominent first (the fake OpenAI names them in reverse script order,
so the order the request carries can only come from the writer's answer); scenes without
characters are drawn from text. An operator can pin an uploaded portrait (the scenes of that
character, and only those, are drawn again with it) or ask for a new drawing; bad uploads
change nothing. `SCENE_PIPELINE_CHARACTER_REFERENCES=off` draws from text alone, and switching
the mode makes scenes stale instead of paying for them again. Offline, the placeholders show
the references as insets. Throughout, the account's limit holds.

The first run of the 5-scene script is made once per test session (xdist workers share
it) and copied for each test that continues from it: a copy is the same bucket in another
folder, its URIs rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scene_pipeline.core.portraits import character_key
from scene_pipeline.fonts import hangul_font
from scene_pipeline.providers.base import ImageRequest, NoSlots
from scene_pipeline.providers.offline import PlaceholderImageMaker

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
from .resilience import write_script

pytestmark = pytest.mark.slow  # end to end through the CLI: scheduled first (conftest.py)

CLI = str(Path(sys.executable).with_name("scene-pipeline"))
REPO = Path(__file__).resolve().parents[1]
SCRIPT_ID = "cast"
LIMIT = 2  # KLING_MAX_CONCURRENCY and the fake account's limit
# Reference pictures must be >= 300 px a side: the fake draws portraits 320x480 (2:3).
IMAGE_LONG_SIDE = 480
CLI_TIMEOUT = 240

MINSU, MINA, GRANNY, GUARD = "민수", "Mina Park", "할머니", "경비원"
# Who is involved in each scene, in the script's order (the guard is in no scene).
INVOLVED: dict[str, list[str]] = {
    "1": [MINSU, MINA],
    "2": [MINSU],
    "3": [],
    "4": [MINA, GRANNY],
    "5": [GRANNY],
}
# The fake writer answers `characters_present` in reverse: the most prominent first.
PRESENT = {scene: list(reversed(names)) for scene, names in INVOLVED.items()}
APPEARING = [MINSU, MINA, GRANNY]
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


def cast_document(script_id: str = SCRIPT_ID, granny: str = "백발, 빨간 우산") -> dict[str, Any]:
    lines = {
        "1": [("dialogue", MINSU, "안녕하세요."), ("dialogue", MINA, "Hello there.")],
        "2": [("dialogue", MINSU, "혼자 걷는다.")],
        "3": [("sound", None, "바람 소리가 분다.")],
        "4": [("dialogue", MINA, "Look at that."), ("dialogue", GRANNY, "비가 오네.")],
        "5": [("dialogue", GRANNY, "집에 가자.")],
    }
    return {
        "script_metadata": {
            "script_id": script_id,
            "title": "같은 얼굴",
            "characters": [
                {"name": MINSU, "gender": 0, "description": "안경을 쓴 회사원"},
                {"name": MINA, "gender": 1, "description": "red coat, short hair"},
                {"name": GRANNY, "gender": 1, "description": granny},
                {"name": GUARD, "gender": 0, "description": "야간 경비원"},
            ],
        },
        "scenes": [
            {
                "scene_id": int(scene),
                "audios": [
                    {"type": kind, "text": text}
                    | ({"character": who, "emotion": "calm"} if who else {})
                    for kind, who, text in scene_lines
                ],
            }
            for scene, scene_lines in lines.items()
        ],
        "options": {"style": "ghibli", "aspect_ratio": "9:16"},
    }


# -- running the CLI --------------------------------------------------------------------------


def fake_env(storage: Path, openai: FakeOpenAIServer, kling: FakeKlingServer, **extra: str):
    return clean_environment(
        SCENE_PIPELINE_LOCAL_DIR=str(storage),
        OPENAI_API_KEY=openai.api_key,
        OPENAI_BASE_URL=openai.base_url,
        KLING_ACCESS_KEY=kling.options.access_key,
        KLING_SECRET_KEY=kling.options.secret_key,
        KLING_API_BASE_URL=kling.url,
        KLING_MAX_CONCURRENCY=str(LIMIT),
        KLING_POLL_INTERVAL_SECONDS="0.2",
        **extra,
    )


def cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`scene-pipeline ARGS` in its own process group, bounded; whatever it left running
    (step processes of a crashed run) is killed with it."""
    process = subprocess.Popen(
        [CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"scene-pipeline {args} timed out:\n{err[-3000:]}") from None
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


# -- reading the bucket -----------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_of(storage: Path, script_id: str = SCRIPT_ID) -> dict[str, Any]:
    return json.loads((storage / "results" / script_id / "manifest.json").read_text("utf-8"))


def portraits_of(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in manifest["characters"]}


def record_of(image_uri: str) -> dict[str, Any]:
    """The generation record stored beside an image (`{generation}.json`)."""
    path = local_path(image_uri)
    stem = re.sub(r"-\d$", "", path.stem)  # candidate k of several: {generation}-{k}.png
    return json.loads(path.with_name(stem + ".json").read_text("utf-8"))


def task_of(image_uri: str, tasks: list[FakeTask]) -> FakeTask:
    """The fake's task that drew this image (its record names the task id)."""
    task_id = record_of(image_uri)["image"]["task_id"]
    found = [t for t in tasks if t.task_id == task_id]
    assert len(found) == 1, (image_uri, task_id)
    return found[0]


def snapshot(storage: Path) -> dict[str, bytes]:
    """Every object of the local bucket, with its bytes."""
    return {
        str(p.relative_to(storage)): p.read_bytes()
        for p in sorted(storage.rglob("*"))
        if p.is_file()
    }


def png(width: int, height: int, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def copy_storage(source: Path, target: Path) -> Path:
    """The same bucket in another folder: objects copied, their file:// URIs rewritten."""
    shutil.copytree(source, target)
    old, new = (
        (source.resolve().as_uri() + "/").encode(),
        (target.resolve().as_uri() + "/").encode(),
    )
    for path in target.rglob("*.json"):
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))
    return target


# -- the first run, once per session ----------------------------------------------------------


@dataclass(frozen=True)
class FirstRun:
    storage: Path
    script: Path
    tasks: list[FakeTask]
    answers: Counter[tuple[int, int]]
    chat_calls: int
    stdout: str


def make_first_run(folder: Path) -> FirstRun:
    """`scene-pipeline run` of the 5-scene script with 4 characters (3 of them in scenes), the
    account limited to 2 tasks, and a writer that also names people who are not in the scene
    (an unknown name and the guard, a character of the script in no scene)."""
    script = write_script(folder / "cast.json", cast_document())
    with (
        FakeOpenAIServer(extra_present_names=("Someone Else", GUARD)) as openai,
        # 1.5 s per task: tasks of parallel steps overlap even on a loaded machine.
        FakeKlingServer(
            task_latency_seconds=1.5, concurrency_limit=LIMIT, image_long_side=IMAGE_LONG_SIDE
        ) as kling,
    ):
        done = ok(cli("run", script, env=fake_env(folder / "storage", openai, kling)))
        return FirstRun(
            storage=folder / "storage",
            script=script,
            tasks=kling.tasks,
            answers=Counter(kling.answers),
            chat_calls=openai.calls["chat"],
            stdout=done.stdout,
        )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first run's bucket (never changed by the tests: they copy it) and what the fakes saw."""
    return once_per_session(tmp_path_factory, "cast-first-run", make_first_run)


@dataclass
class Setup:
    """A test's own copy of the first run's bucket, with fresh fakes (counters at zero)."""

    storage: Path
    script: Path
    openai: FakeOpenAIServer
    kling: FakeKlingServer
    env: dict[str, str]


@pytest.fixture
def drawn(first_run: FirstRun, tmp_path: Path) -> Iterator[Setup]:
    storage = copy_storage(first_run.storage, tmp_path / "storage")
    script = write_script(tmp_path / "cast.json", cast_document())
    with (
        FakeOpenAIServer() as openai,
        FakeKlingServer(
            task_latency_seconds=0.3, concurrency_limit=LIMIT, image_long_side=IMAGE_LONG_SIDE
        ) as kling,
    ):
        yield Setup(storage, script, openai, kling, fake_env(storage, openai, kling))


def portrait_bytes(manifest: dict[str, Any]) -> dict[str, bytes]:
    return {
        name: local_path(c["portrait_s3url"]).read_bytes()
        for name, c in portraits_of(manifest).items()
    }


# -- the tests --------------------------------------------------------------------------------


def test_one_portrait_per_appearing_character_and_scenes_carry_them_in_prominence_order(
    first_run: FirstRun,
) -> None:
    storage, tasks = first_run.storage, first_run.tasks
    assert f"script {SCRIPT_ID} '같은 얼굴': complete (5/5 scenes succeeded)" in first_run.stdout
    manifest = manifest_of(storage)

    # One portrait (a PNG and its record) per character who appears in a scene; none for the
    # guard; keys are safe key segments.
    folders = {p.name: p for p in (storage / "results" / SCRIPT_ID / "characters").iterdir()}
    assert set(folders) == {character_key(n) for n in APPEARING}
    assert character_key(GUARD) not in folders
    portrait_png: dict[str, bytes] = {}
    for name in APPEARING:
        key = character_key(name)
        assert KEY_PATTERN.match(key), key
        files = sorted(folders[key].iterdir())
        assert [f.suffix for f in files] == [".json", ".png"], files
        record = json.loads(files[0].read_text("utf-8"))
        assert record["name"] == name and record["source"] == "drawn"
        # Drawn once, from text (a portrait has no reference of its own).
        task = task_of(record["image_s3url"], tasks)
        assert task.endpoint == "generations" and task.subject_images == []
        portrait_png[name] = files[1].read_bytes()
    assert len(set(map(sha256, portrait_png.values()))) == 3

    # Paid: 3 portraits + the scene without characters from text; 4 scenes with references.
    assert len(tasks) == 3 + 5
    assert len([t for t in tasks if t.endpoint == "generations"]) == 3 + 1
    assert len([t for t in tasks if t.endpoint == "multi-image2image"]) == 4
    assert set(Counter(t.request_key for t in tasks).values()) == {1}  # never paid twice

    # The manifest lists the portraits, and each scene the people in it with their portraits.
    characters = portraits_of(manifest)
    assert list(characters) == APPEARING
    for name, entry in characters.items():
        assert entry["character_key"] == character_key(name)
        assert entry["source"] == "drawn" and entry["status"] == "succeeded"
        assert local_path(entry["portrait_s3url"]).read_bytes() == portrait_png[name]
    for scene_id, scene in scenes_of(manifest).items():
        present = PRESENT[scene_id]
        assert scene["status"] == "succeeded"
        assert scene["characters"] == present, scene_id
        assert scene["references"] == [characters[n]["portrait_s3url"] for n in present]
        task = task_of(scene["image_s3url"], tasks)
        if present:
            assert task.endpoint == "multi-image2image", scene_id
            # Exactly the portraits of the people present, the most prominent first.
            assert task.subject_images == [sha256(portrait_png[n]) for n in present], scene_id
        else:
            assert task.endpoint == "generations" and task.subject_images == [], scene_id


def test_names_the_writer_adds_that_are_not_in_the_scene_are_dropped(first_run: FirstRun) -> None:
    """The writer named "Someone Else" and the guard (a character of the script, in no scene)
    as present in every scene: neither reaches a manifest, a record or a request."""
    manifest = manifest_of(first_run.storage)
    for scene_id, scene in scenes_of(manifest).items():
        assert scene["characters"] == PRESENT[scene_id]
        record = record_of(scene["image_s3url"])
        assert "Someone Else" not in record["characters"] and GUARD not in record["characters"]
        task = task_of(scene["image_s3url"], first_run.tasks)
        assert len(task.subject_images) == len(PRESENT[scene_id])
    assert GUARD not in portraits_of(manifest)


def test_the_account_limit_holds_with_portraits_and_scenes_mixed(first_run: FirstRun) -> None:
    # The fake refuses a task over its limit with 429/1303 (the client would retry it): none
    # was refused, and the limit was used (tasks of parallel steps overlapped).
    assert first_run.answers[(429, 1303)] == 0, first_run.answers
    assert peak_in_flight(first_run.tasks) == LIMIT
    assert sum(t.n for t in first_run.tasks) == 8


def test_an_unchanged_rerun_costs_nothing(drawn: Setup) -> None:
    before = snapshot(drawn.storage / "results")
    done = ok(cli("run", drawn.script, env=drawn.env))
    assert "up to date" in done.stderr
    assert drawn.kling.tasks == [] and drawn.openai.calls["chat"] == 0
    assert snapshot(drawn.storage / "results") == before


def test_an_uploaded_portrait_is_pinned_and_redraws_exactly_its_scenes(
    drawn: Setup, tmp_path: Path
) -> None:
    before = manifest_of(drawn.storage)
    upload = tmp_path / "granny.png"
    upload.write_bytes(png(400, 600, (20, 160, 60)))

    pinned = ok(cli("portrait", SCRIPT_ID, GRANNY, "--image", upload, env=drawn.env))
    assert "redraws the 2 scene(s) it is in: 4, 5" in pinned.stdout
    assert drawn.kling.tasks == []  # pinning pays nothing

    ok(cli("run", drawn.script, env=drawn.env))
    after = manifest_of(drawn.storage)
    tasks = drawn.kling.tasks
    # Exactly the grandmother's scenes were drawn again (one task each, with references);
    # no portrait was drawn and no prompt was written again.
    changed = {s for s, g in generations(after).items() if g != generations(before)[s]}
    assert changed == {"4", "5"}
    assert len(tasks) == 2 and {t.endpoint for t in tasks} == {"multi-image2image"}
    assert drawn.openai.calls["chat"] == 0
    portraits = portraits_of(after)
    granny = portraits[GRANNY]
    assert granny["source"] == "uploaded" and granny["status"] == "succeeded"
    assert local_path(granny["portrait_s3url"]).read_bytes() == upload.read_bytes()
    # The others' portraits are the ones drawn before.
    for name in (MINSU, MINA):
        assert portraits[name] == portraits_of(before)[name]
    # The requests carried the uploaded picture itself, in prominence order.
    scenes = scenes_of(after)
    mina = sha256(portrait_bytes(before)[MINA])
    assert task_of(scenes["4"]["image_s3url"], tasks).subject_images == [
        sha256(upload.read_bytes()),
        mina,
    ]
    assert task_of(scenes["5"]["image_s3url"], tasks).subject_images == [
        sha256(upload.read_bytes())
    ]
    assert scenes["4"]["references"] == [
        granny["portrait_s3url"],
        portraits[MINA]["portrait_s3url"],
    ]

    # Later runs never draw it again on their own, not even when asked for stale pictures.
    for extra in ([], ["--refresh-stale"]):
        again = ok(cli("run", drawn.script, *extra, env=drawn.env))
        assert "up to date" in again.stderr
    assert len(drawn.kling.tasks) == 2
    assert portraits_of(manifest_of(drawn.storage))[GRANNY] == granny

    status = ok(cli("status", SCRIPT_ID, env=drawn.env))
    assert f"portrait {GRANNY} [uploaded, succeeded] {granny['portrait_s3url']}" in status.stdout


def test_a_portrait_redraw_draws_a_new_portrait_and_exactly_its_scenes(drawn: Setup) -> None:
    before = manifest_of(drawn.storage)
    ok(cli("portrait", SCRIPT_ID, MINSU, "--redraw", env=drawn.env))
    after = manifest_of(drawn.storage)
    tasks = drawn.kling.tasks
    minsu = portraits_of(after)[MINSU]
    assert (
        minsu["source"] == "drawn"
        and minsu["generation"] != portraits_of(before)[MINSU]["generation"]
    )
    new_portrait = sha256(local_path(minsu["portrait_s3url"]).read_bytes())
    assert len([t for t in tasks if t.endpoint == "generations"]) == 1
    changed = {s for s, g in generations(after).items() if g != generations(before)[s]}
    assert changed == {"1", "2"}
    scenes = scenes_of(after)
    assert task_of(scenes["2"]["image_s3url"], tasks).subject_images == [new_portrait]
    assert task_of(scenes["1"]["image_s3url"], tasks).subject_images[1] == new_portrait
    assert len(tasks) == 3


def test_bad_uploads_are_refused_with_one_line_and_change_nothing(
    drawn: Setup, tmp_path: Path
) -> None:
    gif = tmp_path / "granny.gif"
    gif.write_bytes(png(400, 400, (200, 0, 0), "GIF"))
    text = tmp_path / "granny.png.txt"
    text.write_text("not a picture\n", "utf-8")
    small, wide, good = tmp_path / "small.png", tmp_path / "wide.png", tmp_path / "good.png"
    small.write_bytes(png(100, 100, (0, 0, 200)))
    wide.write_bytes(png(1000, 200, (0, 200, 200)))
    flat = tmp_path / "flat.png"  # each side >= 300 px, but wider than 2.5:1
    flat.write_bytes(png(1000, 350, (200, 200, 0)))
    good.write_bytes(png(400, 600, (20, 160, 60)))
    before = snapshot(drawn.storage)
    cases = {
        "a GIF": ([SCRIPT_ID, GRANNY, "--image", gif], "GIF"),
        "a text file": ([SCRIPT_ID, GRANNY, "--image", text], "not a readable PNG or JPEG"),
        "a 100x100 PNG": ([SCRIPT_ID, GRANNY, "--image", small], "100x100"),
        "a 1000x200 PNG": ([SCRIPT_ID, GRANNY, "--image", wide], "1000x200"),
        "a 1000x350 PNG": ([SCRIPT_ID, GRANNY, "--image", flat], "aspect ratio"),
        "an unknown character": ([SCRIPT_ID, "Nobody", "--image", good], "no character"),
        "an unknown script": (["no-such-script", GRANNY, "--image", good], "unknown script"),
    }
    for what, (args, says) in cases.items():
        done = cli("portrait", *args, env=drawn.env)
        assert done.returncode == 2, (what, done.stdout, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and says in done.stderr, (what, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", what
    assert snapshot(drawn.storage) == before
    assert drawn.kling.tasks == [] and drawn.openai.calls["chat"] == 0


def test_references_off_draws_from_text_and_switching_makes_scenes_stale(drawn: Setup) -> None:
    before = manifest_of(drawn.storage)
    off = {**drawn.env, "SCENE_PIPELINE_CHARACTER_REFERENCES": "off"}

    # Switching the mode on a drawn script: every scene is stale, kept, and costs nothing.
    status = ok(cli("status", SCRIPT_ID, env=off)).stdout
    assert "stale (kept; the configuration changed since they were drawn): 1, 2, 3, 4, 5" in status
    ok(cli("run", drawn.script, env=off))
    assert drawn.kling.tasks == [] and drawn.openai.calls["chat"] == 0
    assert generations(manifest_of(drawn.storage)) == generations(before)

    # Asked to, every scene is drawn again from text alone; no portrait is drawn or listed.
    portrait_folder = drawn.storage / "results" / SCRIPT_ID / "characters"
    portraits_before = sorted(portrait_folder.rglob("*"))
    ok(cli("run", drawn.script, "--refresh-stale", env=off))
    after = manifest_of(drawn.storage)
    tasks = drawn.kling.tasks
    assert len(tasks) == 5 and {t.endpoint for t in tasks} == {"generations"}
    assert all(g != generations(before)[s] for s, g in generations(after).items())
    assert after["characters"] == []
    for scene in after["scenes"]:
        assert scene["references"] == []
        assert task_of(scene["image_s3url"], tasks).endpoint == "generations"
    assert sorted(portrait_folder.rglob("*")) == portraits_before


def test_switching_references_on_keeps_stale_scenes_without_paying(
    drawn: Setup, tmp_path: Path
) -> None:
    document = cast_document("switch")
    document["scenes"] = [document["scenes"][1]]  # scene 2: Minsu alone
    script = write_script(tmp_path / "switch.json", document)
    off = {**drawn.env, "SCENE_PIPELINE_CHARACTER_REFERENCES": "off"}
    ok(cli("run", script, env=off))
    assert [t.endpoint for t in drawn.kling.tasks] == ["generations"]
    assert manifest_of(drawn.storage, "switch")["characters"] == []
    assert not (drawn.storage / "results" / "switch" / "characters").exists()

    status = ok(cli("status", "switch", env=drawn.env))
    assert "stale (kept; the configuration changed since they were drawn): 2" in status.stdout
    ok(cli("run", script, env=drawn.env))
    assert len(drawn.kling.tasks) == 1  # nothing paid: the scene is stale, kept

    ok(cli("run", script, "--refresh-stale", env=drawn.env))
    assert [t.endpoint for t in drawn.kling.tasks[1:]] == ["generations", "multi-image2image"]


def find_inset(scene: np.ndarray, inset: np.ndarray, x: int) -> float:
    """The smallest mean difference between the middle of `inset` and the scene picture at
    column `x` (+-2 px), over every row: 0 where the inset was pasted."""
    h, w = inset.shape[:2]
    core = inset[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].astype(np.int16)
    best = 255.0
    for dx in range(-2, 3):
        left = x + dx + w // 4
        if left < 0 or left + core.shape[1] > scene.shape[1]:
            continue
        for top in range(h // 4, scene.shape[0] - core.shape[0] + 1):
            window = scene[top : top + core.shape[0], left : left + core.shape[1]]
            best = min(best, float(np.abs(window.astype(np.int16) - core).mean()))
            if best == 0:
                return best
    return best


def test_offline_placeholders_show_the_references_as_insets(tmp_path: Path) -> None:
    document = cast_document("offline")
    document["scenes"] = [document["scenes"][0]]  # scene 1: Minsu and Mina
    script = write_script(tmp_path / "offline.json", document)
    storage = tmp_path / "storage"
    done = ok(cli("run", script, env=clean_environment(SCENE_PIPELINE_LOCAL_DIR=str(storage))))
    assert "OFFLINE" in done.stdout

    manifest = manifest_of(storage, "offline")
    assert manifest["offline"] is True
    portraits = portraits_of(manifest)
    assert list(portraits) == [MINSU, MINA]
    for entry in portraits.values():
        assert entry["source"] == "drawn" and entry["status"] == "succeeded"
        assert record_of(entry["portrait_s3url"])["image"]["offline"] is True
    scene = scenes_of(manifest)["1"]
    assert scene["offline"] is True
    # The offline writer keeps the script's order; the references follow it.
    assert scene["characters"] == [MINSU, MINA]
    assert scene["references"] == [
        portraits[MINSU]["portrait_s3url"],
        portraits[MINA]["portrait_s3url"],
    ]

    # The placeholder shows both portraits, downscaled, left to right in request order.
    with Image.open(local_path(scene["image_s3url"])) as opened:
        picture = np.asarray(opened.convert("RGB"))
    width = picture.shape[1]
    margin = max(8, width // 24)
    side = min(width // 3, (width - 2 * margin) // 2 - margin // 2)
    insets = []
    for name in (MINSU, MINA):
        with Image.open(local_path(portraits[name]["portrait_s3url"])) as opened:
            thumb = opened.convert("RGB")
            thumb.thumbnail((side, side))
            insets.append(np.asarray(thumb))
    first, second = margin, margin + side + margin // 2
    assert find_inset(picture, insets[0], first) < 1.0
    assert find_inset(picture, insets[1], second) < 1.0
    assert find_inset(picture, insets[0], second) > 10.0  # the two portraits differ


def glyph(text: str, size: int = 40) -> np.ndarray:
    """`text` drawn white on black with the bundled font, as a pixel mask."""
    image = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(image).text((size // 4, size // 4), text, fill=255, font=hangul_font(size))
    return np.asarray(image)


class NoJournal:
    """The offline maker pays for nothing: nothing to note for a resumed step."""

    def load(self) -> dict[str, str] | None:
        return None

    def save(self, entry: dict[str, str]) -> None:
        del entry

    def clear(self) -> None:
        pass


def placeholder(prompt: str) -> np.ndarray:
    """The offline placeholder of one scene whose prompt is `prompt` (same scene, same
    content hash: only the text drawn on it can differ)."""
    request = ImageRequest(
        script_id="offline",
        subject="scene 1",
        content_hash="0" * 64,
        prompt=prompt,
        negative_prompt="",
        aspect_ratio="9:16",
        external_task_id="offline-1",
    )
    image = PlaceholderImageMaker(long_side=480).make_image(request, NoJournal(), NoSlots())
    with Image.open(io.BytesIO(image.pngs[0])) as opened:
        return np.asarray(opened.convert("RGB"))


def test_offline_placeholders_draw_korean_lines_legibly() -> None:
    """Scripts are mostly Korean, and a placeholder shows the scene's lines: with a font
    without Hangul (Pillow's own) every syllable would be the same empty box, and every
    Korean scene would look alike. The bundled font draws each syllable as its own glyph."""
    han, guk, undefined = glyph("한"), glyph("국"), glyph("\uffff")
    assert han.any() and guk.any()
    assert not np.array_equal(han, guk)
    assert not np.array_equal(han, undefined) and not np.array_equal(guk, undefined)

    # Two lines of the same length and spacing make two different pictures.
    rain = placeholder('Narration: "비가 오네. 우산을 챙겨라."')
    snow = placeholder('Narration: "눈이 오네. 장갑을 끼워라."')
    assert rain.shape == snow.shape
    differ = np.any(rain != snow, axis=2)
    rows = np.flatnonzero(differ.any(axis=1))
    assert rows.size > 0
    # Only the drawn text differs, not the banner above it.
    assert rows.min() > rain.shape[0] // 8
