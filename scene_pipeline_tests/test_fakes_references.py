"""The fakes' reference-picture behaviour, driven with plain httpx and the openai SDK.

Pins what the fake KLING and fake OpenAI servers do with reference portraits and several
candidate images per scene, so that a pipeline test against them fails on a wrong request:

- KLING `POST /v1/images/multi-image2image`: refuses a `data:` prefix, a picture under 300 px,
  an aspect ratio outside 1:2.5-2.5:1, a GIF, undecodable base64, 0 or 5 subject images, a model
  other than kling-v2/kling-v2-1, `n` outside 1-9 (all 400/1201) and a moderated prompt
  (400/1301); records the sha256 of each subject picture in request order (URLs as given);
  answers `n` images; shares the external ids (a duplicate across endpoints is 1201) and the
  concurrency limit counted in `n` (429/1303) with generations; reads and lists only its own
  tasks (the other endpoint's task id is 404/1203); loses answers like generations.
- KLING result URLs made to expire answer 403 until the task is read again, which hands out
  freshly signed URLs that work.
- OpenAI images: `n` pictures per generations request (1-10), and `POST /v1/images/edits` as
  multipart with several input images, recorded (count and sha256 in order); bad or missing
  input images are 400, queued faults and the moderation marker apply.
- OpenAI chat: a scene schema with `characters_present` is answered with the scene's characters
  in reversed order plus the `extra_present_names` knob, and the prompt follows that order.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import openai
import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict

from scene_pipeline_tests.fakes.kling import FakeKlingServer
from scene_pipeline_tests.fakes.openai import FakeOpenAIServer, rate_limited

MULTI = "/v1/images/multi-image2image"
GENERATIONS = "/v1/images/generations"


# --- helpers -------------------------------------------------------------------------------------


def _picture(width: int, height: int, color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# One TLS context for every httpx client (building one per client costs ~50 ms; all the
# traffic here is plain HTTP to 127.0.0.1).
TLS = ssl.create_default_context()
PORTRAIT_A = _picture(300, 400, (200, 30, 30))
PORTRAIT_B = _picture(400, 300, (30, 200, 30), "JPEG")
PORTRAIT_C = _picture(320, 320, (30, 30, 200))


class Kling:
    """A plain httpx client of the fake KLING server with a valid JWT."""

    def __init__(self, server: FakeKlingServer) -> None:
        now = int(time.time())
        token = jwt.encode(
            {"iss": server.options.access_key, "exp": now + 1800, "nbf": now - 5},
            server.options.secret_key,
            algorithm="HS256",
            headers={"typ": "JWT"},
        )
        self.server = server
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
            verify=TLS,
        )

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = self.http.post(path, json=body)
        return answer.status_code, answer.json()

    def get(self, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        answer = self.http.get(path, params=params)
        return answer.status_code, answer.json()

    def wait(self, path: str, task_id: str, deadline: float = 5.0) -> dict[str, Any]:
        """Poll a task until it is final; its `data`."""
        end = time.monotonic() + deadline
        while True:
            status, body = self.get(f"{path}/{task_id}")
            assert status == 200, body
            if body["data"]["task_status"] in ("succeed", "failed"):
                return body["data"]
            assert time.monotonic() < end, f"task {task_id} did not finish"
            time.sleep(0.02)


def _multi_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": "kling-v2",
        "prompt": "a young woman in a red coat next to an old man in green, at a bus stop",
        "subject_image_list": [{"subject_image": _b64(PORTRAIT_A)}],
        "aspect_ratio": "16:9",
    }
    return body | overrides


@pytest.fixture
def kling_server() -> Iterator[FakeKlingServer]:
    with FakeKlingServer(task_latency_seconds=0.05, concurrency_limit=9) as server:
        yield server


@pytest.fixture
def kling(kling_server: FakeKlingServer) -> Iterator[Kling]:
    client = Kling(kling_server)
    yield client
    client.http.close()


# --- KLING: multi-image2image --------------------------------------------------------------------


def test_multi_image_task_records_subject_digests_in_order_and_answers_n_images(
    kling: Kling,
) -> None:
    url = "https://portraits.example.com/old-man.png"
    body = _multi_body(
        subject_image_list=[
            {"subject_image": _b64(PORTRAIT_B)},
            {"subject_image": url},
            {"subject_image": _b64(PORTRAIT_A)},
        ],
        scene_image=_b64(PORTRAIT_C),
        n=3,
        external_task_id="script-1:scene-2",
        negative_prompt="blurry",
    )
    status, answer = kling.post(MULTI, body)
    assert (status, answer["code"]) == (200, 0), answer
    task_id = answer["data"]["task_id"]

    data = kling.wait(MULTI, task_id)
    assert data["task_status"] == "succeed"
    assert data["task_info"] == {"external_task_id": "script-1:scene-2"}
    images = data["task_result"]["images"]
    assert [image["index"] for image in images] == [0, 1, 2]
    pictures = [kling.http.get(image["url"]) for image in images]
    assert [p.status_code for p in pictures] == [200, 200, 200]
    assert len({p.content for p in pictures}) == 3  # three different candidates
    assert all(Image.open(io.BytesIO(p.content)).format == "PNG" for p in pictures)

    (task,) = kling.server.tasks
    assert task.endpoint == "multi-image2image"
    assert task.subject_images == [_sha(PORTRAIT_B), url, _sha(PORTRAIT_A)]
    assert task.scene_image == _sha(PORTRAIT_C)
    assert task.style_image is None
    assert task.n == 3
    # Undocumented on this endpoint: ignored (as the real API does), and recorded.
    assert task.ignored_fields == ("negative_prompt",)
    assert task.negative_prompt is None
    assert kling.server.successful_tasks_per_request() == {"script-1:scene-2": 1}
    assert kling.server.requests["POST multi submit"] == 1
    assert kling.server.requests["GET multi task"] >= 1
    assert kling.server.requests["POST submit"] == 0


def test_generations_task_is_recorded_as_such_and_answers_n_images(kling: Kling) -> None:
    status, answer = kling.post(
        GENERATIONS, {"model_name": "kling-v2-1", "prompt": "a quiet street", "n": 2}
    )
    assert status == 200, answer
    data = kling.wait(GENERATIONS, answer["data"]["task_id"])
    assert [image["index"] for image in data["task_result"]["images"]] == [0, 1]
    (task,) = kling.server.tasks
    assert (task.endpoint, task.subject_images, task.ignored_fields) == ("generations", [], ())


# Each case: (body overrides, a word the 1201 message must contain).
REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "data: prefix": (
        {"subject_image_list": [{"subject_image": "data:image/png;base64," + _b64(PORTRAIT_A)}]},
        "data:",
    ),
    "side under 300 px": (
        {"subject_image_list": [{"subject_image": _b64(_picture(299, 400, (1, 2, 3)))}]},
        "300 px",
    ),
    "too tall": (
        {"subject_image_list": [{"subject_image": _b64(_picture(300, 751, (1, 2, 3)))}]},
        "aspect ratio",
    ),
    "too wide": (
        {"subject_image_list": [{"subject_image": _b64(_picture(751, 300, (1, 2, 3)))}]},
        "aspect ratio",
    ),
    "gif": (
        {"subject_image_list": [{"subject_image": _b64(_picture(300, 300, (1, 2, 3), "GIF"))}]},
        "jpg or png",
    ),
    "not base64": ({"subject_image_list": [{"subject_image": "not*base64!"}]}, "base64"),
    "base64 of no image": (
        {"subject_image_list": [{"subject_image": _b64(b"hello, not a picture")}]},
        "readable",
    ),
    "five subjects": (
        {"subject_image_list": [{"subject_image": _b64(PORTRAIT_A)}] * 5},
        "1-4",
    ),
    "no subjects": ({"subject_image_list": []}, "1-4"),
    "subject not an object": ({"subject_image_list": [_b64(PORTRAIT_A)]}, "subject_image"),
    "model kling-v1-5": ({"model_name": "kling-v1-5"}, "model_name"),
    "model as `model`": ({"model_name": None, "model": "kling-v2"}, "model_name"),
    "empty prompt": ({"prompt": "  "}, "prompt"),
    "long prompt": ({"prompt": "x" * 2501}, "prompt"),
    "n=10": ({"n": 10}, "n must be"),
    "n=0": ({"n": 0}, "n must be"),
    "aspect_ratio 5:4": ({"aspect_ratio": "5:4"}, "aspect_ratio"),
    "small scene image": ({"scene_image": _b64(_picture(200, 300, (1, 2, 3)))}, "scene_image"),
    "style image with data: prefix": (
        {"style_image": "data:image/jpeg;base64," + _b64(PORTRAIT_B)},
        "style_image",
    ),
    "external id not a string": ({"external_task_id": 7}, "external_task_id"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_multi_image_refuses_what_the_api_refuses(kling: Kling, case: str) -> None:
    overrides, word = REFUSALS[case]
    body = {k: v for k, v in _multi_body(**overrides).items() if v is not None}
    status, answer = kling.post(MULTI, body)
    assert (status, answer["code"]) == (400, 1201), answer
    assert word in answer["message"]
    assert kling.server.tasks == []


def test_multi_image_accepts_the_limits_of_the_picture_rules(kling: Kling) -> None:
    edge_pictures = [
        _picture(300, 750, (5, 5, 5)),  # exactly 1:2.5
        _picture(750, 300, (6, 6, 6), "JPEG"),  # exactly 2.5:1
        _picture(300, 300, (7, 7, 7)),
        _picture(300, 301, (8, 8, 8)),
    ]
    body = _multi_body(
        model_name="kling-v2-1",
        subject_image_list=[{"subject_image": _b64(p)} for p in edge_pictures],
        style_image=_b64(PORTRAIT_A),
        n=9,
        prompt="p" * 2500,
    )
    status, answer = kling.post(MULTI, body)
    assert (status, answer["code"]) == (200, 0), answer
    (task,) = kling.server.tasks
    assert task.subject_images == [_sha(p) for p in edge_pictures]
    assert task.style_image == _sha(PORTRAIT_A)


def test_multi_image_moderation_failure_and_lost_answers_apply(kling: Kling) -> None:
    status, answer = kling.post(MULTI, _multi_body(prompt="a street [[moderate-prompt]]"))
    assert (status, answer["code"]) == (400, 1301)
    status, answer = kling.post(MULTI, _multi_body(prompt="a street [[fail-task]]"))
    assert status == 200
    failed = kling.wait(MULTI, answer["data"]["task_id"])
    assert failed["task_status"] == "failed" and failed["task_status_msg"]

    kling.server.options.lose_next_submit_answers = 1
    with pytest.raises(httpx.TransportError):
        kling.post(MULTI, _multi_body(external_task_id="lost-1"))
    assert kling.server.lost_answers == 1
    assert [t.external_task_id for t in kling.server.tasks_of("multi-image2image")][-1] == "lost-1"


def test_external_task_id_is_unique_across_both_endpoints(kling: Kling) -> None:
    gen_body = {"model_name": "kling-v2", "prompt": "a street"}
    assert kling.post(GENERATIONS, gen_body | {"external_task_id": "e-1"})[0] == 200
    status, answer = kling.post(MULTI, _multi_body(external_task_id="e-1"))
    assert (status, answer["code"]) == (400, 1201)
    assert "external_task_id" in answer["message"]

    assert kling.post(MULTI, _multi_body(external_task_id="e-2"))[0] == 200
    status, answer = kling.post(GENERATIONS, gen_body | {"external_task_id": "e-2"})
    assert (status, answer["code"]) == (400, 1201)
    assert len(kling.server.tasks) == 2


def test_each_endpoint_reads_and_lists_only_its_own_tasks(kling: Kling) -> None:
    _, gen = kling.post(GENERATIONS, {"model_name": "kling-v2", "prompt": "a street"})
    _, multi = kling.post(MULTI, _multi_body())
    gen_id, multi_id = gen["data"]["task_id"], multi["data"]["task_id"]

    assert kling.get(f"{GENERATIONS}/{gen_id}")[0] == 200
    assert kling.get(f"{MULTI}/{multi_id}")[0] == 200
    status, answer = kling.get(f"{MULTI}/{gen_id}")
    assert (status, answer["code"]) == (404, 1203)
    status, answer = kling.get(f"{GENERATIONS}/{multi_id}")
    assert (status, answer["code"]) == (404, 1203)

    _, listed = kling.get(MULTI, pageNum=1, pageSize=30)
    assert [t["task_id"] for t in listed["data"]] == [multi_id]
    _, listed = kling.get(GENERATIONS, pageNum=1, pageSize=30)
    assert [t["task_id"] for t in listed["data"]] == [gen_id]
    for bad in ({"pageSize": 0}, {"pageNum": 1001}, {"pageSize": "many"}):
        status, answer = kling.get(MULTI, **bad)
        assert (status, answer["code"]) == (400, 1201), bad
    assert kling.server.requests["GET multi list"] == 4
    assert kling.server.requests["GET list"] == 1


def test_both_endpoints_share_the_concurrency_limit_counted_in_n() -> None:
    with FakeKlingServer(task_latency_seconds=30, concurrency_limit=4) as server:
        kling = Kling(server)
        assert kling.post(GENERATIONS, {"model_name": "kling-v2", "prompt": "a", "n": 3})[0] == 200
        status, answer = kling.post(MULTI, _multi_body(n=2))
        assert (status, answer["code"]) == (429, 1303)
        assert kling.post(MULTI, _multi_body(n=1))[0] == 200
        status, answer = kling.post(GENERATIONS, {"model_name": "kling-v2", "prompt": "b"})
        assert (status, answer["code"]) == (429, 1303)
        assert server.in_flight() == 4
        assert server.max_in_flight == 4
        assert [t.endpoint for t in server.tasks] == ["generations", "multi-image2image"]
        kling.http.close()


# --- KLING: expiring result URLs -----------------------------------------------------------------


def test_expired_result_urls_answer_403_until_the_task_is_read_again(kling: Kling) -> None:
    _, multi = kling.post(MULTI, _multi_body(n=2))
    _, gen = kling.post(GENERATIONS, {"model_name": "kling-v2", "prompt": "a street"})
    multi_id = multi["data"]["task_id"]
    multi_urls = [i["url"] for i in kling.wait(MULTI, multi_id)["task_result"]["images"]]
    gen_url = kling.wait(GENERATIONS, gen["data"]["task_id"])["task_result"]["images"][0]["url"]
    before = kling.http.get(multi_urls[1])
    assert before.status_code == 200

    assert kling.server.expire_image_urls() == 2
    assert kling.http.get(multi_urls[1]).status_code == 403
    assert kling.http.get(gen_url).status_code == 403
    assert kling.server.expired_downloads == 2

    # A task read hands out new signed URLs, which work and give the same pictures.
    fresh = kling.wait(MULTI, multi_id)["task_result"]["images"]
    assert [i["url"] for i in fresh] != multi_urls
    again = kling.http.get(fresh[1]["url"])
    assert (again.status_code, again.content) == (200, before.content)
    # A second read does not sign again; the old URL stays refused.
    assert kling.wait(MULTI, multi_id)["task_result"]["images"] == fresh
    assert kling.http.get(multi_urls[1]).status_code == 403
    assert kling.server.expired_downloads == 3
    # The list is a task read too.
    _, listed = kling.get(GENERATIONS)
    fresh_gen_url = listed["data"][0]["task_result"]["images"][0]["url"]
    assert fresh_gen_url != gen_url
    assert kling.http.get(fresh_gen_url).status_code == 200


# --- OpenAI: images ------------------------------------------------------------------------------


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(extra_present_names=("The Narrator",)) as server:
        yield server


@pytest.fixture
def client(fake_openai: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key=fake_openai.api_key,
        base_url=fake_openai.base_url,
        max_retries=0,
        timeout=5,
        http_client=openai.DefaultHttpxClient(verify=TLS),
    ) as sdk:
        yield sdk


def test_generations_answers_n_images(client: openai.OpenAI) -> None:
    answer = client.images.generate(model="gpt-image-1", prompt="a street", n=3, size="64x64")
    pictures = [base64.b64decode(item.b64_json or "") for item in answer.data or []]
    assert len(pictures) == 3 and len(set(pictures)) == 3
    assert Image.open(io.BytesIO(pictures[0])).size == (64, 64)
    one = client.images.generate(model="gpt-image-1", prompt="a street", size="64x64")
    assert [base64.b64decode(i.b64_json or "") for i in one.data or []] == pictures[:1]
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.images.generate(model="gpt-image-1", prompt="a street", n=11, size="64x64")


def test_edits_takes_several_images_and_records_them_in_order(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    webp = _picture(64, 64, (9, 9, 9), "WEBP")
    answer = client.images.edit(
        model="gpt-image-1",
        image=[
            ("b.jpg", PORTRAIT_B, "image/jpeg"),
            ("a.png", PORTRAIT_A, "image/png"),
            ("c.webp", webp, "image/webp"),
        ],
        prompt="a woman in a red coat and a man in green at a bus stop",
        n=2,
        size="64x64",  # type: ignore[arg-type]
        input_fidelity="high",
    )
    pictures = [base64.b64decode(item.b64_json or "") for item in answer.data or []]
    assert len(pictures) == 2 and len(set(pictures)) == 2
    assert answer.usage is not None and answer.usage.input_tokens_details.image_tokens > 0

    client.images.edit(model="gpt-image-1", image=("c.png", PORTRAIT_C, "image/png"), prompt="x")
    first, second = fake_openai.edit_requests
    assert first["image_count"] == 3
    assert first["image_sha256"] == [_sha(PORTRAIT_B), _sha(PORTRAIT_A), _sha(webp)]
    assert first["image_fields"] == ["image[]"] * 3
    assert first["image_filenames"] == ["b.jpg", "a.png", "c.webp"]
    assert (first["model"], first["n"], first["size"], first["input_fidelity"]) == (
        "gpt-image-1",
        "2",
        "64x64",
        "high",
    )
    assert first["status"] == 200 and first["authorized"] is True
    assert (second["image_count"], second["image_sha256"]) == (1, [_sha(PORTRAIT_C)])
    assert second["image_fields"] == ["image"] and second["input_fidelity"] is None
    assert fake_openai.calls["edits"] == 2 and fake_openai.calls["images"] == 0
    (recorded,) = fake_openai.requests_to("edits")[1:]
    assert recorded.text() == "x"


def test_edits_refuses_bad_or_missing_images(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    gif = _picture(64, 64, (1, 1, 1), "GIF")
    with pytest.raises(openai.BadRequestError, match="image 2"):
        client.images.edit(
            model="gpt-image-1",
            image=[("a.png", PORTRAIT_A, "image/png"), ("b.gif", gif, "image/gif")],
            prompt="x",
        )
    with pytest.raises(openai.BadRequestError, match="readable"):
        client.images.edit(model="gpt-image-1", image=("a.png", b"junk", "image/png"), prompt="x")
    with pytest.raises(openai.BadRequestError, match="input_fidelity"):
        client.images.edit(
            model="gpt-image-1",
            image=("a.png", PORTRAIT_A, "image/png"),
            prompt="x",
            input_fidelity="max",  # type: ignore[arg-type]
        )
    headers = {"Authorization": f"Bearer {fake_openai.api_key}"}
    url = f"{fake_openai.base_url}/images/edits"
    # Multipart with text fields only (no filename: not files).
    fields = {"model": (None, b"gpt-image-1"), "prompt": (None, b"x")}
    no_image = httpx.post(url, headers=headers, files=fields, verify=TLS)
    assert no_image.status_code == 400
    assert no_image.json()["error"]["param"] == "image"
    as_json = httpx.post(
        url, headers=headers, json={"model": "gpt-image-1", "prompt": "x"}, verify=TLS
    )
    assert as_json.status_code == 400
    assert as_json.json()["error"]["type"] == "invalid_request_error"
    assert [r["status"] for r in fake_openai.edit_requests] == [400, 400, 400, 400]
    assert [r["image_count"] for r in fake_openai.edit_requests] == [2, 1, 1, 0]


def test_edits_honours_faults_and_the_moderation_marker(
    fake_openai: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    image = ("a.png", PORTRAIT_A, "image/png")
    fake_openai.queue("edits", rate_limited(1))
    with pytest.raises(openai.RateLimitError):
        client.images.edit(model="gpt-image-1", image=image, prompt="x")
    with pytest.raises(openai.BadRequestError, match="safety system"):
        client.images.edit(model="gpt-image-1", image=image, prompt="x [[fake:moderation]]")
    answer = client.images.edit(model="gpt-image-1", image=image, prompt="x", response_format="url")
    (item,) = answer.data or []
    assert item.url and httpx.get(item.url, verify=TLS).status_code == 200
    assert [r["status"] for r in fake_openai.edit_requests] == [429, 400, 200]


# --- OpenAI: chat, characters_present ------------------------------------------------------------


class SceneAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_prompt: str
    extra_negative_terms: list[str]
    characters_present: list[str]


class OldSceneAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_prompt: str
    extra_negative_terms: list[str]


WOMAN = "a young woman in a red coat"
MAN = "an old man in a green cardigan"


def _scene_messages() -> list[dict[str, str]]:
    data = {
        "title": "Rain",
        "characters_in_scene": [{"name": "민지", "look": WOMAN}, {"name": "노인", "look": MAN}],
        "scene": {"scene_id": "s1", "lines": [{"text": "비가 온다", "emotion": "calm"}]},
    }
    block = f"<story_data>\n{json.dumps(data, ensure_ascii=False)}\n</story_data>"
    return [
        {"role": "system", "content": "You write image prompts."},
        {"role": "user", "content": f'Art style: begin the prompt with "ink wash".\n\n{block}'},
    ]


def test_characters_present_is_the_scene_order_reversed_plus_extra_names(
    client: openai.OpenAI,
) -> None:
    completion = client.chat.completions.parse(
        model="gpt-4.1", messages=_scene_messages(), response_format=SceneAnswer
    )
    answer = completion.choices[0].message.parsed
    assert answer is not None
    assert answer.characters_present == ["노인", "민지", "The Narrator"]
    assert answer.image_prompt.startswith("ink wash")
    assert answer.image_prompt.index(MAN) < answer.image_prompt.index(WOMAN)

    # A schema without characters_present keeps the block's order (the earlier behaviour).
    completion = client.chat.completions.parse(
        model="gpt-4.1", messages=_scene_messages(), response_format=OldSceneAnswer
    )
    old = completion.choices[0].message.parsed
    assert old is not None
    assert old.image_prompt.index(WOMAN) < old.image_prompt.index(MAN)
