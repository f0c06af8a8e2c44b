"""The retry budget, held: one owner per kind of retry, each with a written budget.

- HTTP errors of KLING (429 with 1302/1303, 5xx with 5000-5002, network errors): the KLING
  client only (scene_pipeline/clients/kling.py). One call makes exactly `max_attempts`
  (default 6) requests before it gives up; between them it sleeps 1, 2, 4, 8, 16 s, each plus
  at most 50 % jitter, and at least what a Retry-After asks for, up to 30 s. A submit whose
  answer may have been lost (5xx, timeout) looks its external id up before the next POST, at
  most 3 list pages per attempt. A 403/404 download (an expired URL) is not retried, and
  neither is an answer that will not change (account, invalid request).
- KLING tasks that were accepted and then failed (for a reason other than moderation): the
  image maker only (scene_pipeline/providers/kling.py). One `make_image` pays for at most
  1 + max_resubmits (default 2) tasks, at most one of which succeeds. The maker never repeats
  an HTTP call the client gave up on: that is left to the step's RetryPolicy.
- OpenAI calls: the SDK only (`max_retries`: 2 for the prompt writer, 1 for images).

Requests are counted where they arrive (an httpx.MockTransport handler, or a fake server on
127.0.0.1) and `sleep` is injected, so nothing here waits for the back-off for real.
"""

import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from scene_pipeline.clients.kling import (
    KlingAccountError,
    KlingClient,
    KlingDownloadError,
    KlingRequestError,
    KlingTransientError,
)
from scene_pipeline.contract.script import Script
from scene_pipeline.providers.base import ImageRequest, NoSlots
from scene_pipeline.providers.errors import SceneRejectedError, TransientProviderError
from scene_pipeline.providers.kling import KlingImageMaker
from scene_pipeline.providers.openai_images import OpenAIImagesMaker
from scene_pipeline.providers.openai_writer import OpenAIPromptWriter
from scene_pipeline.resources.providers import KlingImageMakerResource
from scene_pipeline_tests.fakes.kling import FakeKlingServer
from scene_pipeline_tests.fakes.openai import FakeOpenAIServer, Fault, server_error

ACCESS_KEY = "AK-budget-0123456789abcdef0123456789"
SECRET_KEY = "SK-budget-0123456789abcdef0123456789"
# No request leaves the process (MockTransport); the host is loopback all the same.
BASE_URL = "http://127.0.0.1:9"
GENERATIONS = "/v1/images/generations"
MULTI_IMAGE = "/v1/images/multi-image2image"

# The written budget.
MAX_ATTEMPTS = 6
BACKOFF_BASES = [1.0, 2.0, 4.0, 8.0, 16.0]
RETRY_AFTER_CAP = 30.0
LOOKUP_PAGES = 3
LOOKUP_PAGE_SIZE = 100
MAX_PAID_TASKS = 1 + 2  # the first task and max_resubmits (2) new ones


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (27, 48), (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def envelope(
    status: int, code: int, data: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        json={"code": code, "message": "x", "request_id": "req-1", "data": data},
        headers=headers,
    )


def task_json(task_id: str, status: str, external_id: str, **more: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_status": status,
        "task_info": {"external_task_id": external_id},
        "task_result": {},
        **more,
    }


class AlwaysRetryable:
    """KLING answering every request with one retryable error (`status` and `code`, plus any
    `headers`; `code` None means a bare HTTP error as a storage host sends, `raises` an
    exception instead of an answer). With `full_list_pages` the task list answers instead
    with full pages of other callers' tasks, so a lost-POST lookup reads all it may.
    Records every request."""

    def __init__(
        self,
        status: int = 503,
        code: int | None = 5001,
        headers: dict[str, str] | None = None,
        *,
        raises: type[Exception] | None = None,
        full_list_pages: bool = False,
    ) -> None:
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.raises = raises
        self.full_list_pages = full_list_pages
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if self.full_list_pages and request.method == "GET" and path in (GENERATIONS, MULTI_IMAGE):
            page = int(request.url.params["pageNum"])
            size = int(request.url.params["pageSize"])
            others = [
                task_json(f"other-{page}-{i}", "succeed", f"someone-else-{page}-{i}")
                for i in range(size)
            ]
            return envelope(200, 0, others)
        if self.raises is not None:
            raise self.raises("no answer", request=request)
        if self.code is None:
            return httpx.Response(self.status, text="storage unavailable", headers=self.headers)
        return envelope(self.status, self.code, headers=self.headers)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path == path)


class TaskStub:
    """KLING accepting every task, which then ends as `outcomes` says: the k-th accepted
    task ends "failed" (with `message`) or "succeed" (one picture, served at
    /images/<task>.png); once the outcomes run out, tasks fail. Records requests and the
    bodies of accepted tasks."""

    def __init__(self, outcomes: list[str], message: str = "internal error, try again") -> None:
        self.outcomes = outcomes
        self.message = message
        self.requests: list[httpx.Request] = []
        self.accepted: list[dict[str, Any]] = []

    def _task(self, index: int) -> dict[str, Any]:
        task_id = f"task-{index}"
        external_id = self.accepted[index]["external_task_id"]
        outcome = self.outcomes[index] if index < len(self.outcomes) else "failed"
        if outcome == "succeed":
            images = [{"index": 0, "url": f"{BASE_URL}/images/{task_id}.png?sig=s"}]
            return task_json(task_id, "succeed", external_id, task_result={"images": images})
        return task_json(task_id, "failed", external_id, task_status_msg=self.message)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.startswith("/images/"):
            return httpx.Response(200, content=PNG)
        if request.method == "POST":
            body = json.loads(request.content)
            self.accepted.append(body)
            index = len(self.accepted) - 1
            return envelope(
                200, 0, task_json(f"task-{index}", "submitted", body["external_task_id"])
            )
        if path in (GENERATIONS, MULTI_IMAGE):
            return envelope(200, 0, [self._task(i) for i in range(len(self.accepted))])
        index = int(path.rsplit("-", 1)[1])
        return envelope(200, 0, self._task(index))

    def succeeded(self) -> int:
        return sum(
            1 for i in range(len(self.accepted)) if self._task(i)["task_status"] == "succeed"
        )


def client_for(
    handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float]
) -> KlingClient:
    """A KLING client with its default budget; its sleeps are recorded, not slept."""
    return KlingClient(
        ACCESS_KEY,
        SECRET_KEY,
        base_url=BASE_URL,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=sleeps.append,
    )


class InstantClock:
    """monotonic/sleep for the maker: polls do not wait, and are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def maker_for(client: KlingClient, clock: InstantClock) -> KlingImageMaker:
    """A maker with the default max_resubmits (deliberately not passed)."""
    return KlingImageMaker(
        client,
        model="kling-v2-1",
        reference_model="kling-v2",
        task_timeout_seconds=60.0,
        poll_interval_seconds=2.0,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )


class MemoryJournal:
    """A TaskJournal in memory."""

    def __init__(self) -> None:
        self.entry: dict[str, str] | None = None

    def load(self) -> dict[str, str] | None:
        return dict(self.entry) if self.entry else None

    def save(self, entry: dict[str, str]) -> None:
        self.entry = dict(entry)

    def clear(self) -> None:
        self.entry = None


def image_request(**changes: Any) -> ImageRequest:
    fields: dict[str, Any] = {
        "script_id": "script-1",
        "subject": "scene 1",
        "content_hash": "hash1",
        "prompt": "a cat on a rooftop at dusk",
        "negative_prompt": "blurry",
        "aspect_ratio": "9:16",
        "external_task_id": "sp-budget-1",
    }
    return ImageRequest(**{**fields, **changes})


def assert_backoff(sleeps: list[float], retry_after: float | None = None) -> None:
    """One sleep between two attempts: 1, 2, 4, 8, 16 s plus at most 50 % jitter, and at
    least the Retry-After (capped at 30 s) when the server sent one."""
    assert len(sleeps) == MAX_ATTEMPTS - 1, sleeps
    asked = min(retry_after, RETRY_AFTER_CAP) if retry_after is not None else 0.0
    for base, slept in zip(BACKOFF_BASES, sleeps, strict=True):
        assert max(base, asked) <= slept <= max(base * 1.5, asked), (base, sleeps)


# -- one KLING call: exactly max_attempts requests -----------------------------------------------


RETRYABLE = [(503, 5001), (500, 5000), (504, 5002), (429, 1302), (429, 1303), (502, None)]


@pytest.mark.parametrize(("status", "code"), RETRYABLE)
def test_get_task_makes_max_attempts_requests(status: int, code: int | None) -> None:
    handler, sleeps = AlwaysRetryable(status, code), []
    with pytest.raises(KlingTransientError, match=f"gave up after {MAX_ATTEMPTS} attempts"):
        client_for(handler, sleeps).get_task("generations", "task-1")
    assert handler.count("GET", f"{GENERATIONS}/task-1") == MAX_ATTEMPTS
    assert len(handler.requests) == MAX_ATTEMPTS
    assert_backoff(sleeps)


def test_a_network_error_is_retried_within_the_same_budget() -> None:
    handler, sleeps = AlwaysRetryable(raises=httpx.ConnectError), []
    with pytest.raises(KlingTransientError, match="cannot connect"):
        client_for(handler, sleeps).get_task("multi-image2image", "task-1")
    assert handler.count("GET", f"{MULTI_IMAGE}/task-1") == MAX_ATTEMPTS
    assert_backoff(sleeps)


def test_find_by_external_task_id_makes_max_attempts_requests() -> None:
    handler, sleeps = AlwaysRetryable(429, 1302), []
    with pytest.raises(KlingTransientError):
        client_for(handler, sleeps).find_by_external_task_id("generations", "sp-1")
    assert handler.count("GET", GENERATIONS) == MAX_ATTEMPTS
    assert_backoff(sleeps)


@pytest.mark.parametrize("code", [1302, 1303])
def test_rate_limited_submit_posts_max_attempts_times_without_lookups(code: int) -> None:
    # A 429 was not processed: nothing was paid, so no lookup is needed before the next POST.
    handler, sleeps = AlwaysRetryable(429, code), []
    with pytest.raises(KlingTransientError):
        client_for(handler, sleeps).submit(
            "generations", {"prompt": "a cat", "external_task_id": "sp-1"}
        )
    assert handler.count("POST", GENERATIONS) == MAX_ATTEMPTS
    assert len(handler.requests) == MAX_ATTEMPTS
    assert_backoff(sleeps)


@pytest.mark.parametrize(
    ("endpoint", "path"), [("generations", GENERATIONS), ("multi-image2image", MULTI_IMAGE)]
)
@pytest.mark.parametrize(
    "failure",
    [
        {"status": 503, "code": 5001},
        {"status": 500, "code": 5000},
        {"status": 504, "code": 5002},
        {"raises": httpx.ReadTimeout},
    ],
    ids=["5001", "5000", "5002", "timeout"],
)
def test_ambiguous_submit_looks_up_a_bounded_number_of_pages(
    endpoint: Any, path: str, failure: dict[str, Any]
) -> None:
    # Each answer may have been lost after KLING made (and billed) the task: before every
    # further POST the client reads the recent tasks, at most three pages of 100.
    handler, sleeps = AlwaysRetryable(**failure, full_list_pages=True), []
    with pytest.raises(KlingTransientError):
        client_for(handler, sleeps).submit(
            endpoint, {"prompt": "a cat", "external_task_id": "sp-1"}
        )
    assert handler.count("POST", path) == MAX_ATTEMPTS
    lookups = [r for r in handler.requests if r.method == "GET"]
    assert all(r.url.path == path for r in lookups)
    pages = [(int(r.url.params["pageNum"]), int(r.url.params["pageSize"])) for r in lookups]
    per_lookup = [(page, LOOKUP_PAGE_SIZE) for page in range(1, LOOKUP_PAGES + 1)]
    assert pages == per_lookup * (MAX_ATTEMPTS - 1)
    assert_backoff(sleeps)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, 1200, KlingRequestError),
        (404, 1203, KlingRequestError),
        (429, 1102, KlingAccountError),
        (403, 1103, KlingAccountError),
    ],
)
def test_answers_that_will_not_change_are_not_retried(
    status: int, code: int, error: type[Exception]
) -> None:
    handler, sleeps = AlwaysRetryable(status, code), []
    with pytest.raises(error):
        client_for(handler, sleeps).get_task("generations", "task-1")
    assert len(handler.requests) == 1 and sleeps == []


@pytest.mark.parametrize("status", [500, 503, 429])
def test_download_makes_max_attempts_requests(status: int) -> None:
    handler, sleeps = AlwaysRetryable(status, None), []
    with pytest.raises(KlingDownloadError) as info:
        client_for(handler, sleeps).download(f"{BASE_URL}/images/t-0.png?sig=s")
    assert not info.value.url_expired
    assert handler.count("GET", "/images/t-0.png") == MAX_ATTEMPTS
    assert_backoff(sleeps)


@pytest.mark.parametrize("status", [403, 404])
def test_expired_download_is_one_request(status: int) -> None:
    handler, sleeps = AlwaysRetryable(status, None), []
    with pytest.raises(KlingDownloadError) as info:
        client_for(handler, sleeps).download(f"{BASE_URL}/images/t-0.png?sig=s")
    assert info.value.url_expired
    assert len(handler.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after": "120"}, 120.0),  # capped at 30 s
    ],
)
def test_retry_after_is_honoured_up_to_30_seconds(headers: dict[str, str], asked: float) -> None:
    handler, sleeps = AlwaysRetryable(429, 1302, headers), []
    with pytest.raises(KlingTransientError):
        client_for(handler, sleeps).get_task("generations", "task-1")
    assert len(handler.requests) == MAX_ATTEMPTS
    assert_backoff(sleeps, retry_after=asked)
    if asked > RETRY_AFTER_CAP:
        assert sleeps == [RETRY_AFTER_CAP] * (MAX_ATTEMPTS - 1)


# -- one make_image: at most 1 + max_resubmits paid tasks ----------------------------------------


@pytest.mark.parametrize("references", [[], [PNG]], ids=["text", "references"])
def test_tasks_that_keep_failing_are_paid_for_at_most_three_times(
    references: list[bytes],
) -> None:
    stub, sleeps, clock = TaskStub(outcomes=[]), [], InstantClock()
    journal = MemoryJournal()
    with pytest.raises(SceneRejectedError, match=f"failed {MAX_PAID_TASKS} time") as info:
        maker_for(client_for(stub, sleeps), clock).make_image(
            image_request(references=references), journal, NoSlots()
        )
    assert info.value.refused is False
    assert [body["external_task_id"] for body in stub.accepted] == [
        "sp-budget-1",
        "sp-budget-1-r1",
        "sp-budget-1-r2",
    ]
    assert stub.succeeded() == 0
    assert not any(r.url.path.startswith("/images/") for r in stub.requests)
    assert sleeps == []  # no HTTP error, so the client never backed off
    assert clock.sleeps == [2.0] * MAX_PAID_TASKS  # one poll per task, at the steady interval
    assert journal.entry is None


def test_a_resubmit_that_succeeds_ends_the_paying() -> None:
    stub, sleeps, clock = TaskStub(outcomes=["failed", "succeed", "succeed"]), [], InstantClock()
    image = maker_for(client_for(stub, sleeps), clock).make_image(
        image_request(), MemoryJournal(), NoSlots()
    )
    assert len(stub.accepted) == 2 and stub.succeeded() == 1
    assert image.provenance.task_id == "task-1" and image.provenance.attempts == 2
    assert image.pngs == [PNG]


def test_moderation_in_the_task_message_is_never_resubmitted() -> None:
    stub = TaskStub(outcomes=[], message="prompt violates the usage rules")
    with pytest.raises(SceneRejectedError) as info:
        maker_for(client_for(stub, []), InstantClock()).make_image(
            image_request(), MemoryJournal(), NoSlots()
        )
    assert info.value.refused is True and len(stub.accepted) == 1


def test_the_maker_does_not_repeat_a_submit_the_client_gave_up_on() -> None:
    handler, sleeps, clock = AlwaysRetryable(429, 1302), [], InstantClock()
    journal = MemoryJournal()
    with pytest.raises(TransientProviderError, match=f"gave up after {MAX_ATTEMPTS} attempts"):
        maker_for(client_for(handler, sleeps), clock).make_image(
            image_request(), journal, NoSlots()
        )
    assert handler.count("POST", GENERATIONS) == MAX_ATTEMPTS  # not MAX_ATTEMPTS x resubmits
    assert_backoff(sleeps)
    assert clock.sleeps == []
    assert journal.entry is not None and journal.entry["state"] == "submitting"


class FailingReads(TaskStub):
    """TaskStub whose task reads all answer 503/5001 while `failing` is set."""

    failing = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if (
            self.failing
            and request.method == "GET"
            and request.url.path.startswith(GENERATIONS + "/")
        ):
            self.requests.append(request)
            return envelope(503, 5001)
        return super().__call__(request)


def test_the_maker_does_not_repeat_a_read_the_client_gave_up_on() -> None:
    stub, sleeps, clock = FailingReads(outcomes=["succeed"]), [], InstantClock()
    journal = MemoryJournal()
    maker = maker_for(client_for(stub, sleeps), clock)
    with pytest.raises(TransientProviderError):
        maker.make_image(image_request(), journal, NoSlots())
    reads = [r for r in stub.requests if r.method == "GET"]
    assert len(stub.accepted) == 1 and len(reads) == MAX_ATTEMPTS
    assert_backoff(sleeps)
    # The journal names the paid task: the step's retry reads it, it does not pay again.
    assert journal.entry is not None and journal.entry["task_id"] == "task-0"
    stub.failing = False
    image = maker.make_image(image_request(), journal, NoSlots())
    assert image.provenance.task_id == "task-0" and len(stub.accepted) == 1


# -- the budget as deployed: the resource's defaults ---------------------------------------------


def test_resource_defaults_hold_the_same_budget() -> None:
    with FakeKlingServer(access_key=ACCESS_KEY, secret_key=SECRET_KEY) as kling:
        resource = KlingImageMakerResource(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            base_url=kling.url,
            poll_interval_seconds=0.02,
            backoff_base_seconds=0.001,  # the budget in requests is the default one
        )
        maker = resource.get_maker()
        prompt = f"a storm {kling.options.failed_task_marker}"
        with pytest.raises(SceneRejectedError, match=f"failed {MAX_PAID_TASKS} time"):
            maker.make_image(image_request(prompt=prompt), MemoryJournal(), NoSlots())
        assert len(kling.tasks) == MAX_PAID_TASKS

        kling.fail_next(1302, count=100, method="POST")
        with pytest.raises(TransientProviderError, match=f"gave up after {MAX_ATTEMPTS}"):
            maker.make_image(
                image_request(external_task_id="sp-budget-2"), MemoryJournal(), NoSlots()
            )
        assert kling.requests["POST submit"] == MAX_PAID_TASKS + MAX_ATTEMPTS
        assert len(kling.tasks) == MAX_PAID_TASKS


# -- OpenAI: the SDK's retries are the only ones -------------------------------------------------


def quick_503() -> Fault:
    """A 503 whose Retry-After (1 ms) the SDK honours instead of its own back-off."""
    return Fault(503, server_error(503).body, {"retry-after-ms": "1"})


SCRIPT = Script.model_validate(
    {
        "script_metadata": {
            "script_id": "budget",
            "title": "t",
            "characters": [{"name": "지우", "description": "단발머리 대학생."}],
        },
        "scenes": [{"scene_id": 1, "audios": [{"type": "narration", "text": "지우가 웃는다."}]}],
    }
)


def test_prompt_writer_makes_one_call_and_two_sdk_retries() -> None:
    with FakeOpenAIServer() as fake:
        fake.queue("chat", *[quick_503() for _ in range(5)])
        writer = OpenAIPromptWriter(api_key=fake.api_key, base_url=fake.base_url)
        with pytest.raises(TransientProviderError, match="server error"):
            writer.write_character_sheet(SCRIPT)
        assert fake.calls["chat"] == 3


def test_images_maker_makes_one_call_and_one_sdk_retry() -> None:
    # Each retry of an images call may be billed: one only.
    with FakeOpenAIServer() as fake:
        fake.queue("images", *[quick_503() for _ in range(5)])
        maker = OpenAIImagesMaker(api_key=fake.api_key, base_url=fake.base_url)
        with pytest.raises(TransientProviderError, match="server error"):
            maker.make_image(image_request(), MemoryJournal(), NoSlots())
        assert fake.calls["images"] == 2
