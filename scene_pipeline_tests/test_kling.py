"""KLING client and image maker against the fake KLING server (real HTTP on 127.0.0.1).

Covers the quirks of ../shared/reference/kling-api.md: each row of the error table (as the
client's own errors, and as the pipeline's failure kinds once the maker maps them), the JWT
(reused, regenerated once on 401), paid tasks never duplicated after a lost POST answer or a
killed step, the polling deadline, bounded resubmits of failed tasks, moderation (on submit,
and in a failed task's message however it is worded), reference portraits sent to
`multi-image2image` in order and polled there, several candidates in one task, expired result
URLs (the task is read again, never paid again), the account's parallel slots held around the
paid task only, and secrets kept out of logs, errors and reprs. No code of ours is mocked: the
client talks HTTP to `FakeKlingServer`. The retry budget itself is held in test_retry_budget.py.
"""

import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from PIL import Image

import scene_pipeline_tests.fakes.kling as fake_kling
from scene_pipeline.clients.kling import (
    KlingAccountError,
    KlingClient,
    KlingDownloadError,
    KlingError,
    KlingModerationError,
    KlingRequestError,
    KlingTransientError,
)
from scene_pipeline.providers.base import GeneratedImage, ImageRequest, NoSlots
from scene_pipeline.providers.errors import (
    AccountError,
    ProviderError,
    SceneRejectedError,
    TransientProviderError,
)
from scene_pipeline.providers.kling import KlingImageMaker
from scene_pipeline.resources.providers import KlingImageMakerResource
from scene_pipeline.storage import Bucket, StoredTaskJournal, layout
from scene_pipeline.storage.local import LocalObjectStore
from scene_pipeline_tests.fakes.kling import FakeKlingServer

# Distinctive so that a leak anywhere is found by a plain substring search.
ACCESS_KEY = "AK-leakcheck-7f3a9c51e2d84b6a9f0e1c2d3b4a5968"
SECRET_KEY = "SK-leakcheck-91bd4e7a2c6f8d0b3e5a7c9f1d2b4e6a"
FAKE_SIGNATURE = "SIG-leakcheck-5d1c"

# Small everything: the whole module must stay well under 40 s on two cores.
FAST_CLIENT: dict[str, Any] = {
    "backoff_base": 0.005,
    "backoff_max": 0.04,
    "request_timeout": 3.0,
    "max_attempts": 4,
}
FAST_MAKER: dict[str, Any] = {
    "model": "kling-v2-1",
    "reference_model": "kling-v2",
    "poll_interval_seconds": 0.02,
    "task_timeout_seconds": 5.0,
}


def _picture(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Reference portraits as the pipeline passes them: PNGs of at least 300 px a side.
PORTRAITS = [
    _picture(300, 400, (200, 30, 30)),
    _picture(320, 320, (30, 200, 30)),
    _picture(400, 300, (30, 30, 200)),
    _picture(300, 300, (200, 200, 30)),
    _picture(310, 310, (30, 200, 200)),
]


class MemoryJournal:
    """A TaskJournal in memory that remembers every entry it was given."""

    def __init__(self, entry: dict[str, str] | None = None) -> None:
        self.entry = entry
        self.history: list[dict[str, str] | None] = []
        self.cleared = 0

    def load(self) -> dict[str, str] | None:
        return dict(self.entry) if self.entry else None

    def save(self, entry: dict[str, str]) -> None:
        assert all(isinstance(v, str) for v in entry.values()), entry  # the bucket keeps strings
        self.entry = dict(entry)
        self.history.append(dict(entry))

    def clear(self) -> None:
        self.entry = None
        self.cleared += 1


class CountingSlots:
    """A SlotGate of `limit` slots shared by threads: a hold waits until `count` slots are
    free. Records every hold and release, with `snapshot()` taken at each (what the fake
    server had seen at that moment), and the most slots held at once."""

    def __init__(self, limit: int, snapshot: Callable[[], Any] = lambda: None) -> None:
        self.limit = limit
        self.free = limit
        self.peak = 0
        self.events: list[tuple[str, int, Any]] = []
        self._snapshot = snapshot
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.free >= count)
            self.free -= count
            self.peak = max(self.peak, self.limit - self.free)
            self.events.append(("hold", count, self._snapshot()))
        try:
            yield
        finally:
            with self._cond:
                self.free += count
                self.events.append(("release", count, self._snapshot()))
                self._cond.notify_all()


@pytest.fixture
def kling() -> Iterator[FakeKlingServer]:
    with FakeKlingServer(
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, task_latency_seconds=0.08
    ) as server:
        yield server


@pytest.fixture
def new_client(kling: FakeKlingServer) -> Iterator[Callable[..., KlingClient]]:
    made: list[KlingClient] = []

    def make(**overrides: Any) -> KlingClient:
        settings = {"base_url": kling.url, **FAST_CLIENT, **overrides}
        access = settings.pop("access_key", ACCESS_KEY)
        secret = settings.pop("secret_key", SECRET_KEY)
        client = KlingClient(access, secret, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(new_client: Callable[..., KlingClient]) -> KlingClient:
    return new_client()


def maker_for(client: KlingClient, **overrides: Any) -> KlingImageMaker:
    return KlingImageMaker(client, **{**FAST_MAKER, **overrides})


def image_request(
    index: int = 1, prompt: str = "a cat on a rooftop at dusk", **kw: Any
) -> ImageRequest:
    fields: dict[str, Any] = {
        "script_id": "script-1",
        "subject": f"scene {index}",
        "content_hash": f"hash{index}",
        "prompt": prompt,
        "negative_prompt": "blurry",
        "aspect_ratio": "9:16",
        "external_task_id": f"sp-test-{index}",
    }
    return ImageRequest(**{**fields, **kw})


def draw(
    maker: KlingImageMaker,
    request: ImageRequest | None = None,
    journal: Any = None,
    slots: Any = None,
) -> GeneratedImage:
    return maker.make_image(
        request or image_request(),
        journal if journal is not None else MemoryJournal(),
        slots if slots is not None else NoSlots(),
    )


def draw_like_dagster(
    maker: KlingImageMaker, request: ImageRequest, slots: Any = None
) -> GeneratedImage:
    """make_image as a scene's step runs it: transient errors retried by the step's policy (3
    retries), with one journal per scene kept across the retries."""
    journal = MemoryJournal()
    for retry in range(4):
        try:
            return draw(maker, request, journal, slots)
        except TransientProviderError:
            if retry == 3:
                raise
    raise AssertionError("unreachable")


def body(
    external_task_id: str = "sp-direct", prompt: str = "a dog", **changes: Any
) -> dict[str, Any]:
    """A text-to-image create body as the maker builds it."""
    return {
        "model_name": "kling-v2-1",
        "prompt": prompt,
        "aspect_ratio": "16:9",
        "n": 1,
        "external_task_id": external_task_id,
        **changes,
    }


def submit(client: KlingClient, external_task_id: str = "sp-direct", prompt: str = "a dog") -> Any:
    return client.submit("generations", body(external_task_id, prompt))


class ExpireImageUrls:
    """An httpx request hook: before the first `times` image downloads, every result URL the
    fake has handed out expires (as a signed URL does when a step is slow to fetch it)."""

    def __init__(self, kling: FakeKlingServer, times: int = 1) -> None:
        self.kling = kling
        self.remaining = times

    def __call__(self, request: httpx.Request) -> None:
        if request.url.path.startswith("/images/") and self.remaining > 0:
            self.remaining -= 1
            self.kling.expire_image_urls()


# -- the happy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_draws_png_and_fills_provenance(
    kling: FakeKlingServer, client: KlingClient, image_format: str
) -> None:
    kling.options.image_format = image_format
    journal = MemoryJournal()
    image = draw(maker_for(client), image_request(), journal)

    (png,) = image.pngs
    assert png.startswith(b"\x89PNG\r\n\x1a\n")  # converted when KLING sends a JPEG
    (task,) = kling.tasks
    prov = image.provenance
    assert (prov.provider, prov.model, prov.offline) == ("kling", "kling-v2-1", False)
    assert (prov.task_id, prov.external_task_id, prov.attempts) == (task.task_id, "sp-test-1", 1)
    assert (prov.width, prov.height) == (360, 640)  # 9:16 as asked, the fake's 640 px
    assert prov.final_unit_deduction == "1"
    assert prov.submitted_at and prov.finished_at and prov.finished_at >= prov.submitted_at
    assert prov.duration_seconds is not None and prov.duration_seconds >= 0
    # What KLING received: `model_name` (not `model`), the ratio, the negative prompt and our
    # idempotency key, at the text-to-image endpoint, and no field it would silently ignore.
    assert (task.endpoint, task.model_name, task.aspect_ratio, task.negative_prompt) == (
        "generations",
        "kling-v2-1",
        "9:16",
        "blurry",
    )
    assert task.ignored_fields == ()
    assert kling.requests["POST multi submit"] == 0
    # Journal: noted before the POST, then with the task id; clearing is the caller's job.
    assert [e["state"] for e in journal.history] == ["submitting", "submitted"]
    assert journal.entry == {
        "state": "submitted",
        "external_task_id": "sp-test-1",
        "attempt": "1",
        "endpoint": "generations",
        "task_id": task.task_id,
    }


def test_several_candidates_come_from_one_task(kling: FakeKlingServer, client: KlingClient) -> None:
    image = draw(maker_for(client), image_request(n=3))
    (task,) = kling.tasks
    assert task.n == 3 and len(image.pngs) == 3
    assert len({sha256(png) for png in image.pngs}) == 3  # three pictures, not one thrice
    assert all(png.startswith(b"\x89PNG") for png in image.pngs)
    assert image.provenance.final_unit_deduction == "3"


# -- reference portraits: multi-image2image ------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 4])
def test_references_go_to_multi_image_in_order(
    kling: FakeKlingServer, client: KlingClient, count: int
) -> None:
    journal = MemoryJournal()
    references = PORTRAITS[:count]
    image = draw(maker_for(client), image_request(references=references, n=2), journal)

    (task,) = kling.tasks
    assert task.endpoint == "multi-image2image"
    assert task.subject_images == [sha256(p) for p in references]  # the prompt's order
    assert (task.model_name, task.n, task.aspect_ratio) == ("kling-v2", 2, "9:16")
    # The endpoint documents no negative prompt: sending one would be silently dropped.
    assert task.ignored_fields == () and task.negative_prompt is None
    assert len(image.pngs) == 2
    assert image.provenance.model == "kling-v2"
    # Polled at its own endpoint (the generations path answers 404/1203 for this task).
    assert kling.requests["GET multi task"] >= 1 and kling.requests["GET task"] == 0
    assert kling.requests["POST submit"] == 0
    assert journal.entry is not None and journal.entry["endpoint"] == "multi-image2image"


def test_at_most_four_references_are_sent(kling: FakeKlingServer, client: KlingClient) -> None:
    draw(maker_for(client), image_request(references=PORTRAITS))
    (task,) = kling.tasks
    assert task.subject_images == [sha256(p) for p in PORTRAITS[:4]]


def test_without_a_reference_model_references_are_not_sent(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    maker = maker_for(client, reference_model=None)
    assert maker.max_references == 0
    image = draw(maker, image_request(references=PORTRAITS[:2]))
    (task,) = kling.tasks
    assert task.endpoint == "generations" and task.model_name == "kling-v2-1"
    assert image.provenance.model == "kling-v2-1"


def test_reference_task_lost_post_answer_is_found_at_its_endpoint(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.lose_next_submit_answers = 1
    image = draw(maker_for(client), image_request(references=PORTRAITS[:2]))
    assert kling.lost_answers == 1
    (task,) = kling.tasks
    assert image.provenance.task_id == task.task_id
    assert kling.requests["GET multi list"] >= 1 and kling.requests["GET list"] == 0


def test_reference_task_in_the_journal_is_resumed_at_its_endpoint(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    request = image_request(references=PORTRAITS[:1])
    paid = client.submit(
        "multi-image2image",
        {
            "model_name": "kling-v2",
            "prompt": request.prompt,
            "aspect_ratio": "9:16",
            "n": 1,
            "external_task_id": "sp-test-1",
            "subject_image_list": [{"subject_image": "https://example.invalid/a.png"}],
        },
    )
    journal = MemoryJournal(
        {
            "state": "submitted",
            "task_id": paid.task_id,
            "external_task_id": "sp-test-1",
            "attempt": "1",
            "endpoint": "multi-image2image",
        }
    )
    image = draw(maker_for(client), request, journal)
    assert image.provenance.task_id == paid.task_id
    assert kling.requests["POST multi submit"] == 1 and len(kling.tasks) == 1


# -- the error table: the client's own errors ----------------------------------------------------


@pytest.mark.parametrize("code", [1302, 1303, 5000, 5001, 5002])
def test_retryable_codes_are_retried_then_succeed(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.fail_next(code, count=2, method="POST")
    task = submit(client)
    assert [t.task_id for t in kling.tasks] == [task.task_id]
    assert kling.requests["POST submit"] == 3


def test_retryable_errors_give_up_as_the_clients_transient_error(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.fail_next(1302, count=10)
    with pytest.raises(KlingTransientError, match=r"rate limit.*gave up after 4 attempts") as info:
        client.get_task("generations", "whatever")
    assert not isinstance(info.value, ProviderError)  # the client knows nothing of providers
    assert info.value.code == 1302 and info.value.http_status == 429
    assert kling.requests["GET task"] == 4


def test_network_timeouts_are_transient(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    kling.options.slow_answer_rate = 1.0
    kling.options.answer_delay_seconds = 0.4
    client = new_client(request_timeout=0.1, max_attempts=2)
    with pytest.raises(KlingTransientError, match="timeout"):
        client.get_task("generations", "whatever")


@pytest.mark.parametrize("code", [1100, 1101, 1102, 1103, 1304])
def test_account_codes_stop_at_once(kling: FakeKlingServer, client: KlingClient, code: int) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(KlingAccountError, match=f"code {code}") as caught:
        submit(client)
    assert caught.value.code == code
    assert kling.requests["POST submit"] == 1 and not kling.tasks


@pytest.mark.parametrize("code", [1200, 1201, 1202, 1203])
def test_request_codes_are_refused_requests(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(KlingRequestError, match=f"code {code}") as caught:
        submit(client)
    assert not isinstance(caught.value, KlingTransientError | KlingAccountError)
    assert not isinstance(caught.value, KlingModerationError)
    assert kling.requests["POST submit"] == 1 and not kling.tasks


def test_invalid_body_is_rejected_by_the_fake_like_kling(client: KlingClient) -> None:
    with pytest.raises(KlingRequestError, match="1201"):
        client.submit("generations", body("sp-long", "x" * 2501))
    with pytest.raises(KlingRequestError, match="aspect_ratio"):
        client.submit("generations", body("sp-ratio", aspect_ratio="5:4"))
    with pytest.raises(KlingRequestError, match="model_name"):
        client.submit("generations", body("sp-model", model_name="kling-v9"))


@pytest.mark.parametrize("code", [1300, 1301])
def test_moderation_codes_say_so(kling: FakeKlingServer, client: KlingClient, code: int) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(KlingModerationError, match="content moderation"):
        submit(client)


# -- the error table: what the maker makes of it -------------------------------------------------


@pytest.mark.parametrize("code", [1102, 1304])
@pytest.mark.parametrize("references", [[], PORTRAITS[:1]], ids=["text", "references"])
def test_account_error_fails_make_image(
    kling: FakeKlingServer, client: KlingClient, code: int, references: list[bytes]
) -> None:
    kling.options.account_error_code = code
    journal = MemoryJournal()
    with pytest.raises(AccountError, match=f"code {code}"):
        draw(maker_for(client), image_request(references=references), journal)
    assert not kling.tasks
    assert journal.entry is None  # nothing was made: nothing to resume


@pytest.mark.parametrize("code", [1200, 1202])
def test_refused_request_rejects_the_scene_not_as_moderation(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.fail_next(code, method="POST")
    journal = MemoryJournal()
    with pytest.raises(SceneRejectedError, match=f"code {code}") as caught:
        draw(maker_for(client), image_request(), journal)
    assert caught.value.refused is False
    assert not kling.tasks and journal.entry is None


def test_transient_errors_reach_the_step_as_transient(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.fail_next(5001, count=10, method="POST")
    journal = MemoryJournal()
    with pytest.raises(TransientProviderError, match="gave up after 4 attempts"):
        draw(maker_for(client), image_request(), journal)
    # The POST may have been processed: the retried step looks the id up before paying.
    assert journal.entry is not None and journal.entry["state"] == "submitting"


def test_moderated_prompt_fails_the_scene_as_refused(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a duel {kling.options.moderation_marker}"
    with pytest.raises(SceneRejectedError, match="content moderation rejected the prompt") as info:
        draw(maker_for(client), image_request(prompt=prompt), journal)
    assert info.value.refused is True
    assert not kling.tasks
    assert journal.entry is None  # nothing was made, so nothing to resume


@pytest.mark.parametrize(
    "message",
    [
        fake_kling.MODERATION_TASK_MSG,  # every hint at once
        "prompt violates the usage rules",  # one hint only ("violat")
        "Failure to pass the risk control system",  # one hint only ("risk control")
        "Generated image contains sensitive content",  # one hint only ("sensitive")
    ],
)
def test_moderated_result_is_refused_and_not_resubmitted(
    kling: FakeKlingServer,
    client: KlingClient,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
) -> None:
    monkeypatch.setattr(fake_kling, "MODERATION_TASK_MSG", message)
    journal = MemoryJournal()
    prompt = f"a duel {kling.options.result_moderation_marker}"
    with pytest.raises(SceneRejectedError, match="content moderation") as caught:
        draw(maker_for(client), image_request(prompt=prompt), journal)
    assert caught.value.refused is True
    (task,) = kling.tasks
    assert task.status_msg == message
    assert journal.entry is None  # a later run starts afresh


def test_failed_task_without_a_moderation_hint_is_resubmitted(
    kling: FakeKlingServer, client: KlingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = "Image generation failed, please try again later"
    monkeypatch.setattr(fake_kling, "INTERNAL_FAILURE_MSG", message)
    kling.options.failed_external_ids = frozenset({"sp-test-1"})
    image = draw(maker_for(client), image_request())
    assert [t.status_msg for t in kling.tasks] == [message, ""]
    assert image.provenance.attempts == 2


# -- auth --------------------------------------------------------------------------------------


def test_jwt_is_reused_across_calls(kling: FakeKlingServer, client: KlingClient) -> None:
    draw(maker_for(client), image_request())
    client.find_by_external_task_id("generations", "sp-none")
    assert len(kling.tokens) >= 4
    assert len(set(kling.tokens)) == 1


def test_jwt_is_renewed_shortly_before_it_expires(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    offset = [-1750.0]  # the first token expires 50 s from now: inside the renewal margin
    client = new_client(clock=lambda: time.time() + offset[0])
    client.find_by_external_task_id("generations", "sp-none")
    offset[0] = 0.0
    client.find_by_external_task_id("generations", "sp-none")
    client.find_by_external_task_id("generations", "sp-none")
    assert len(set(kling.tokens)) == 2
    assert not any(status == 401 for status, _ in kling.answers)


def test_401_regenerates_the_token_once(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    offset = [0.0]
    client = new_client(clock=lambda: time.time() + offset[0])
    client.find_by_external_task_id("generations", "sp-none")
    offset[0] = 3.0  # a later token differs from the first (its nbf and exp move)
    kling.fail_next(1004)
    client.find_by_external_task_id("generations", "sp-none")
    first, rejected, fresh = kling.tokens
    assert first == rejected != fresh
    assert kling.answers[(401, 1004)] == 1


def test_bad_keys_fail_clearly_after_one_regeneration(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    client = new_client(secret_key="SK-wrong-wrong-wrong-wrong-wrong-wrong-00")
    with pytest.raises(KlingAccountError, match="KLING rejected the keys"):
        client.find_by_external_task_id("generations", "sp-none")
    assert kling.requests["GET list"] == 2
    with pytest.raises(AccountError, match="KLING rejected the keys"):
        draw(maker_for(client), image_request())
    assert not kling.tasks


# -- paid tasks: never twice -------------------------------------------------------------------


def test_lost_post_answer_finds_the_task_instead_of_paying_twice(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.lose_next_submit_answers = 1
    image = draw(maker_for(client), image_request())
    assert kling.lost_answers == 1
    assert len(kling.tasks) == 1 and image.provenance.task_id == kling.tasks[0].task_id
    assert kling.requests["GET list"] >= 1


def test_killed_during_submit_looks_the_task_up(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    # A step died after its POST was processed: the journal says "submitting", no task id.
    paid = submit(client, external_task_id="sp-test-1")
    journal = MemoryJournal({"state": "submitting", "external_task_id": "sp-test-1"})
    image = draw(maker_for(client), image_request(), journal)
    assert image.provenance.task_id == paid.task_id
    assert kling.requests["POST submit"] == 1 and len(kling.tasks) == 1


def test_killed_before_submit_submits(kling: FakeKlingServer, client: KlingClient) -> None:
    journal = MemoryJournal({"state": "submitting", "external_task_id": "sp-test-1"})
    draw(maker_for(client), image_request(), journal)
    assert len(kling.tasks) == 1


def test_duplicate_external_id_returns_the_existing_task(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    first = submit(client, external_task_id="sp-dup")
    again = submit(client, external_task_id="sp-dup")  # KLING answers 1201; we look it up
    assert again.task_id == first.task_id and len(kling.tasks) == 1
    assert kling.answers[(400, 1201)] == 1


def test_resume_from_journal_polls_the_existing_task(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    paid = submit(client, external_task_id="sp-test-1")
    journal = MemoryJournal(
        {"state": "submitted", "task_id": paid.task_id, "external_task_id": "sp-test-1"}
    )
    image = draw(maker_for(client), image_request(), journal)
    assert image.provenance.task_id == paid.task_id
    assert kling.requests["POST submit"] == 1 and len(kling.tasks) == 1


def test_journal_naming_an_unknown_task_fails_the_scene_and_clears(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal({"state": "submitted", "task_id": "gone", "external_task_id": "x"})
    with pytest.raises(SceneRejectedError, match="task journal"):
        draw(maker_for(client), image_request(), journal)
    assert journal.entry is None and not kling.tasks


class Killed(BaseException):
    """The step's process dies (not an error the maker may catch)."""


def _die(seconds: float) -> None:
    raise Killed


def test_step_killed_while_polling_resumes_from_the_bucket_journal(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient], tmp_path: Path
) -> None:
    bucket = Bucket(LocalObjectStore(tmp_path))
    key = layout.task_key("script-1", ("scenes", "1"), "hash1")
    gate = CountingSlots(limit=2)

    # The first process submits, then dies at its first poll: the task is paid for.
    with pytest.raises(Killed):
        draw(
            maker_for(new_client(), sleep=_die),
            image_request(),
            StoredTaskJournal(bucket, key, "gen-1", own_only=False),
            gate,
        )
    assert len(kling.tasks) == 1
    assert gate.free == 2  # the slots went back although the step died

    # A new process (new client, maker and journal object) polls that task: no second task.
    image = draw(
        maker_for(new_client()),
        image_request(),
        StoredTaskJournal(bucket, key, "gen-2", own_only=False),
    )
    assert image.provenance.task_id == kling.tasks[0].task_id
    assert kling.requests["POST submit"] == 1

    # A forced redraw (own_only) with another generation does not take the old task over.
    image = draw(
        maker_for(new_client()),
        image_request(external_task_id="sp-test-1-forced"),
        StoredTaskJournal(bucket, key, "gen-3", own_only=True),
    )
    assert len(kling.tasks) == 2 and image.provenance.task_id == kling.tasks[1].task_id


# -- expired result URLs -------------------------------------------------------------------------


@pytest.mark.parametrize("references", [[], PORTRAITS[:2]], ids=["text", "references"])
def test_expired_url_is_fetched_again_from_the_task_not_paid_again(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient], references: list[bytes]
) -> None:
    http = httpx.Client(event_hooks={"request": [ExpireImageUrls(kling)]})
    client = new_client(http_client=http)
    image = draw(maker_for(client), image_request(references=references, n=2))
    http.close()

    assert kling.expired_downloads == 1
    assert kling.requests["POST submit"] + kling.requests["POST multi submit"] == 1
    assert len(image.pngs) == 2 and image.provenance.task_id == kling.tasks[0].task_id
    assert kling.tasks[0].downloads == 2  # both fetched with the fresh URLs


def test_url_expiring_again_is_transient_and_the_retry_resumes_the_task(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    http = httpx.Client(event_hooks={"request": [ExpireImageUrls(kling, times=2)]})
    journal = MemoryJournal()
    with pytest.raises(TransientProviderError, match="expired"):
        draw(maker_for(new_client(http_client=http)), image_request(), journal)
    http.close()
    assert kling.expired_downloads == 2 and len(kling.tasks) == 1
    # The journal still names the succeeded task: the retried step downloads, never submits.
    assert journal.entry is not None and journal.entry["task_id"] == kling.tasks[0].task_id
    image = draw(maker_for(new_client()), image_request(), journal)
    assert image.provenance.task_id == kling.tasks[0].task_id
    assert kling.requests["POST submit"] == 1


def test_expired_download_is_not_retried(kling: FakeKlingServer, client: KlingClient) -> None:
    url = f"{kling.url}/images/nope-0.png?signature={FAKE_SIGNATURE}"
    with pytest.raises(KlingDownloadError) as info:
        client.download(url)
    assert info.value.url_expired and info.value.http_status == 403
    assert kling.requests["GET image"] == 1


# -- deadline and failed tasks -----------------------------------------------------------------


class InstantClock:
    """monotonic/sleep for the maker: sleeping moves the clock on at once, so a deadline is
    reached after a known number of polls without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_hung_task_times_out_and_fails_the_scene(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a storm {kling.options.hang_marker}"
    clock = InstantClock()
    hurried = maker_for(
        client,
        task_timeout_seconds=0.3,
        poll_interval_seconds=0.1,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    with pytest.raises(SceneRejectedError, match="timed out after 0.3 s") as caught:
        draw(hurried, image_request(prompt=prompt), journal)
    assert caught.value.refused is False  # fails the scene, no step retry, not a refusal
    assert journal.entry and journal.entry["state"] == "timed_out"
    assert kling.requests["GET task"] in (3, 4)  # about 0.3 s / 0.1 s polls, then it gives up

    # The next run looks once more: the task finished late, so its (paid) image is used.
    kling.release_hung_tasks()
    image = draw(maker_for(client), image_request(prompt=prompt), journal)
    assert image.provenance.task_id == kling.tasks[0].task_id and len(kling.tasks) == 1


def test_task_still_hung_on_the_next_run_is_abandoned_for_a_new_one(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    kling.options.hang_all = True
    clock = InstantClock()
    with pytest.raises(SceneRejectedError, match="timed out"):
        draw(
            maker_for(
                client, task_timeout_seconds=0.2, sleep=clock.sleep, monotonic=clock.monotonic
            ),
            image_request(),
            journal,
        )
    kling.options.hang_all = False
    image = draw(maker_for(client), image_request(), journal)
    assert [t.external_task_id for t in kling.tasks] == ["sp-test-1", "sp-test-1-r1"]
    assert image.provenance.attempts == 2


def test_failed_task_is_resubmitted_with_a_derived_id(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.failed_external_ids = frozenset({"sp-test-1"})
    journal = MemoryJournal()
    image = draw(maker_for(client), image_request(), journal)
    assert [t.external_task_id for t in kling.tasks] == ["sp-test-1", "sp-test-1-r1"]
    prov = image.provenance
    assert (prov.attempts, prov.external_task_id) == (2, "sp-test-1-r1")
    assert journal.entry and journal.entry["task_id"] == kling.tasks[1].task_id


def test_failed_tasks_are_resubmitted_a_bounded_number_of_times(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a storm {kling.options.failed_task_marker}"
    with pytest.raises(SceneRejectedError, match="failed 3 time") as caught:
        draw(maker_for(client, max_resubmits=2), image_request(prompt=prompt), journal)
    assert caught.value.refused is False
    assert "content moderation" not in str(caught.value)
    assert [t.external_task_id for t in kling.tasks] == [
        "sp-test-1",
        "sp-test-1-r1",
        "sp-test-1-r2",
    ]
    assert journal.entry is None


def test_broken_downloads_are_retried(kling: FakeKlingServer, client: KlingClient) -> None:
    kling.options.download_failure_rate = 0.5
    for index in range(3):
        image = draw(maker_for(client), image_request(index))
        Image.open(io.BytesIO(image.pngs[0])).verify()
    assert len(kling.tasks) == 3 and kling.download_failures > 0


# -- the account's parallel slots --------------------------------------------------------------


def test_slots_are_held_around_the_paid_task_only(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    def seen() -> list[tuple[str, int]]:
        return [(kling.task_status(t.task_id), t.downloads) for t in kling.tasks]

    gate = CountingSlots(limit=3, snapshot=seen)
    image = draw(maker_for(client), image_request(n=2), slots=gate)
    assert len(image.pngs) == 2
    # n slots for n candidates, claimed before the POST, given back once the task finished
    # and before its images were downloaded (the download holds none of the account's slots).
    assert gate.events == [("hold", 2, []), ("release", 2, [("succeed", 0)])]
    assert kling.tasks[0].downloads == 2 and gate.free == 3


def test_slots_are_given_back_when_the_task_fails(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    gate = CountingSlots(limit=1)
    prompt = f"a duel {kling.options.result_moderation_marker}"
    with pytest.raises(SceneRejectedError):
        draw(maker_for(client), image_request(prompt=prompt), slots=gate)
    assert [event[:2] for event in gate.events] == [("hold", 1), ("release", 1)]
    assert gate.free == 1


def test_in_flight_tasks_never_exceed_the_slots_and_use_all_of_them(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.concurrency_limit = 3
    kling.options.task_latency_seconds = 0.15
    gate = CountingSlots(limit=3)
    maker = maker_for(client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(lambda i: draw(maker, image_request(i), slots=gate), range(8)))
    assert len(images) == 8 and len(kling.tasks) == 8
    assert kling.answers[(429, 1303)] == 0  # never refused for going over the account's limit
    assert gate.peak == 3 and kling.max_in_flight == 3


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_stay_out_of_logs_errors_and_reprs(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kling.options.download_failure_rate = 0.3
    kling.options.server_error_rate = 0.2
    client = new_client()
    maker = maker_for(client)
    kling.fail_next(1004)
    errors: list[BaseException] = []
    # Server errors at this rate can outlast one call's budget: retried as the step would.
    images = [draw_like_dagster(maker, image_request(i)) for i in range(3)]
    images.append(draw_like_dagster(maker, image_request(4, references=PORTRAITS[:1])))
    for failing in (
        lambda: new_client(
            secret_key="SK-wrong-wrong-wrong-wrong-wrong-wrong-00"
        ).find_by_external_task_id("generations", "sp-none"),
        lambda: draw(maker, image_request(9, prompt=f"x {kling.options.moderation_marker}")),
        lambda: new_client(max_attempts=1).download(
            f"{kling.url}/images/nope.png?signature={FAKE_SIGNATURE}"
        ),
    ):
        try:
            failing()
        except (KlingError, ProviderError) as err:
            errors.append(err)
    assert len(errors) == 3 and len(images) == 4

    resource = KlingImageMakerResource(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    text = "\n".join(
        [caplog.text]
        + [r.getMessage() for r in caplog.records]
        + [f"{e!s} {e!r}" for e in errors]
        + [repr(client), repr(maker), repr(resource)]
        + [repr(image.provenance) for image in images]
    )
    secrets = {
        ACCESS_KEY,
        SECRET_KEY,
        FAKE_SIGNATURE,
        *kling.tokens,
        *(t.signature for t in kling.tasks),
    }
    assert "HTTP Request" in caplog.text  # httpx did log, without the query strings
    assert [s for s in secrets if s in text] == []


# -- the resource ------------------------------------------------------------------------------


def test_resource_from_env_vars_builds_one_working_maker(
    kling: FakeKlingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("KLING_SECRET_KEY", SECRET_KEY)
    resource = KlingImageMakerResource(
        access_key=dg.EnvVar("KLING_ACCESS_KEY"),
        secret_key=dg.EnvVar("KLING_SECRET_KEY"),
        base_url=kling.url,
        poll_interval_seconds=0.02,
        backoff_base_seconds=0.01,
    )
    with dg.build_resources({"image_maker": resource}) as resources:
        maker_resource = resources.image_maker
        assert maker_resource.identity.label() == "kling/kling-v2-1+refs:kling-v2"
        assert maker_resource.max_references == 4
        maker = maker_resource.get_maker()
        assert maker is maker_resource.get_maker()  # built once, on first use
        assert maker.identity == maker_resource.identity
        image = maker.make_image(
            image_request(references=PORTRAITS[:1]), MemoryJournal(), NoSlots()
        )
    assert image.provenance.task_id == kling.tasks[0].task_id
    assert kling.tasks[0].endpoint == "multi-image2image"


def test_resource_identity_comes_from_config_without_a_client() -> None:
    # Empty keys: no client can be built, yet the identity (part of every hash) is known.
    resource = KlingImageMakerResource(access_key="", secret_key="", references=False)
    assert resource.identity.label() == "kling/kling-v2-1"
    assert resource.max_references == 0
    with pytest.raises(KlingAccountError, match="empty"):
        resource.get_maker()
    other = KlingImageMakerResource(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    again = KlingImageMakerResource(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    # One maker per resource instance: no cache shared between instances of one config.
    assert other.get_maker() is not again.get_maker()


# -- chaos -------------------------------------------------------------------------------------


def test_chaos_every_image_drawn_and_paid_once(new_client: Callable[..., KlingClient]) -> None:
    with FakeKlingServer(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        seed=7,
        task_latency_seconds=0.1,
        concurrency_limit=2,  # below the slots we give the maker: 1303 will happen
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        failed_task_rate=0.15,
        download_failure_rate=0.2,
        lost_response_rate=0.1,
    ) as chaos:
        client = new_client(base_url=chaos.url, max_attempts=8)
        maker = maker_for(client, max_resubmits=3)
        gate = CountingSlots(limit=4)
        lock = threading.Lock()
        drawn: dict[str, GeneratedImage] = {}

        def one(index: int) -> None:
            references = PORTRAITS[:1] if index % 3 == 0 else []
            request = image_request(
                index, external_task_id=f"sp-chaos-{index}", references=references
            )
            image = draw_like_dagster(maker, request, gate)
            with lock:
                drawn[f"sp-chaos-{index}"] = image

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(one, range(12)))

        assert len(drawn) == 12
        successes = chaos.successful_tasks_per_request()
        assert successes == {key: 1 for key in drawn}, successes
        for key, image in drawn.items():
            assert image.provenance.external_task_id.startswith(key)
            assert chaos.task_status(image.provenance.task_id) == "succeed"
        assert len(chaos.tasks_of("multi-image2image")) >= 4
        assert chaos.answers[(429, 1303)] > 0  # the account limit was hit, and survived
        assert any(status >= 500 for status, _ in chaos.answers)
        assert chaos.answers[(429, 1302)] > 0
        assert chaos.download_failures > 0
        assert gate.free == 4
