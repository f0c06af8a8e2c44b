"""KLING client and image maker against the fake KLING server (real HTTP on 127.0.0.1).

Covers the quirks of ../shared/reference/kling-api.md: each row of the error table, the JWT
(reused, regenerated once on 401), paid tasks never duplicated after a lost POST answer or a
killed step, the polling deadline, bounded resubmits of failed tasks, moderation, the
account's concurrency limit, and secrets kept out of logs, errors and reprs. No code of ours is
mocked: the client talks HTTP to `FakeKlingServer`.
"""

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from scene_pipeline.clients.kling import (
    KlingAccountError,
    KlingClient,
    KlingModerationError,
    KlingRequestRejectedError,
    KlingTransientError,
)
from scene_pipeline.providers.base import GeneratedImage, ImageRequest
from scene_pipeline.providers.errors import (
    AccountError,
    SceneRejectedError,
    TransientProviderError,
)
from scene_pipeline.providers.kling import (
    KlingImageMaker,
    KlingTaskFailedError,
    KlingTaskTimeoutError,
)
from scene_pipeline.resources.kling import KlingImageMakerResource
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
    "poll_interval_seconds": 0.02,
    "task_timeout_seconds": 5.0,
}


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
    n: int = 1, prompt: str = "a cat on a rooftop at dusk", **kw: Any
) -> ImageRequest:
    fields: dict[str, Any] = {
        "script_id": "script-1",
        "scene_id": f"scene-{n}",
        "content_hash": f"hash{n}",
        "prompt": prompt,
        "negative_prompt": "blurry",
        "aspect_ratio": "9:16",
        "external_task_id": f"sp-test-{n}",
    }
    return ImageRequest(**{**fields, **kw})


def submit(client: KlingClient, external_task_id: str = "sp-direct", prompt: str = "a dog") -> Any:
    return client.submit(prompt, None, "16:9", external_task_id)


# -- the happy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_draws_png_and_fills_provenance(
    kling: FakeKlingServer, client: KlingClient, image_format: str
) -> None:
    kling.options.image_format = image_format
    journal = MemoryJournal()
    image = maker_for(client).make_image(image_request(), journal)

    assert image.png.startswith(b"\x89PNG\r\n\x1a\n")  # converted when KLING sends a JPEG
    (task,) = kling.tasks
    prov = image.provenance
    assert (prov.provider, prov.model, prov.offline) == ("kling", "kling-v2-1", False)
    assert (prov.task_id, prov.external_task_id, prov.attempts) == (task.task_id, "sp-test-1", 1)
    assert (prov.width, prov.height) == (27, 48)  # 9:16 as asked
    assert prov.final_unit_deduction == "1"
    assert prov.submitted_at and prov.finished_at and prov.finished_at >= prov.submitted_at
    assert prov.duration_seconds is not None and prov.duration_seconds >= 0
    # What KLING received: `model_name` (not `model`), the ratio and our idempotency key.
    assert (task.model_name, task.aspect_ratio, task.negative_prompt) == (
        "kling-v2-1",
        "9:16",
        "blurry",
    )
    # Journal: noted before the POST, then with the task id; clearing is the asset's job.
    assert [e["state"] for e in journal.history] == ["submitting", "submitted"]
    assert journal.entry == {
        "state": "submitted",
        "external_task_id": "sp-test-1",
        "attempt": "1",
        "task_id": task.task_id,
    }


# -- the error table -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1302, 1303, 5000, 5001, 5002])
def test_retryable_codes_are_retried_then_succeed(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.fail_next(code, count=2, method="POST")
    task = submit(client)
    assert [t.task_id for t in kling.tasks] == [task.task_id]
    assert kling.requests["POST submit"] == 3


def test_retryable_errors_give_up_as_transient(kling: FakeKlingServer, client: KlingClient) -> None:
    kling.fail_next(1302, count=10)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match=r"rate limit.*gave up after 4 attempts"):
        client.get_task("whatever")
    assert kling.requests["GET task"] == 4
    assert time.monotonic() - started < 2


def test_network_timeouts_are_transient(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    kling.options.slow_answer_rate = 1.0
    kling.options.answer_delay_seconds = 0.4
    client = new_client(request_timeout=0.1, max_attempts=2)
    with pytest.raises(KlingTransientError, match="timeout"):
        client.get_task("whatever")


@pytest.mark.parametrize("code", [1100, 1101, 1102, 1103, 1304])
def test_account_codes_stop_at_once(kling: FakeKlingServer, client: KlingClient, code: int) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(AccountError, match=f"code {code}") as caught:
        submit(client)
    assert isinstance(caught.value, KlingAccountError) and caught.value.code == code
    assert kling.requests["POST submit"] == 1 and not kling.tasks


@pytest.mark.parametrize("code", [1102, 1304])
def test_account_error_fails_make_image(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.options.account_error_code = code
    with pytest.raises(AccountError):
        maker_for(client).make_image(image_request(), MemoryJournal())
    assert not kling.tasks


@pytest.mark.parametrize("code", [1200, 1201, 1202, 1203])
def test_request_codes_reject_the_scene(
    kling: FakeKlingServer, client: KlingClient, code: int
) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(SceneRejectedError, match=f"code {code}") as caught:
        submit(client)
    assert isinstance(caught.value, KlingRequestRejectedError)
    assert not isinstance(caught.value, TransientProviderError | AccountError)
    assert kling.requests["POST submit"] == 1 and not kling.tasks


def test_invalid_body_is_rejected_by_the_fake_like_kling(client: KlingClient) -> None:
    with pytest.raises(KlingRequestRejectedError, match="1201"):
        client.submit("x" * 2501, None, "16:9", "sp-long")
    with pytest.raises(KlingRequestRejectedError, match="aspect_ratio"):
        client.submit("a cat", None, "5:4", "sp-ratio")
    with pytest.raises(KlingRequestRejectedError, match="model_name"):
        client.submit("a cat", None, "16:9", "sp-model", model_name="kling-v9")


@pytest.mark.parametrize("code", [1300, 1301])
def test_moderation_codes_say_so(kling: FakeKlingServer, client: KlingClient, code: int) -> None:
    kling.fail_next(code, method="POST")
    with pytest.raises(KlingModerationError, match="content moderation"):
        submit(client)


def test_moderated_prompt_fails_the_scene_clearly(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a duel {kling.options.moderation_marker}"
    with pytest.raises(SceneRejectedError, match="content moderation rejected the prompt"):
        maker_for(client).make_image(image_request(prompt=prompt), journal)
    assert not kling.tasks
    assert journal.entry is None  # nothing was made, so nothing to resume


def test_moderated_result_is_not_resubmitted(kling: FakeKlingServer, client: KlingClient) -> None:
    prompt = f"a duel {kling.options.result_moderation_marker}"
    with pytest.raises(KlingTaskFailedError, match="content moderation") as caught:
        maker_for(client).make_image(image_request(prompt=prompt), MemoryJournal())
    assert isinstance(caught.value, SceneRejectedError)
    assert len(kling.tasks) == 1


# -- auth --------------------------------------------------------------------------------------


def test_jwt_is_reused_across_calls(kling: FakeKlingServer, client: KlingClient) -> None:
    maker_for(client).make_image(image_request(), MemoryJournal())
    client.list_tasks()
    assert len(kling.tokens) >= 4
    assert len(set(kling.tokens)) == 1


def test_jwt_is_renewed_shortly_before_it_expires(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    offset = [-1750.0]  # the first token expires 50 s from now: inside the renewal margin
    client = new_client(clock=lambda: time.time() + offset[0])
    client.list_tasks()
    offset[0] = 0.0
    client.list_tasks()
    client.list_tasks()
    assert len(set(kling.tokens)) == 2
    assert not any(status == 401 for status, _ in kling.answers)


def test_401_regenerates_the_token_once(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    offset = [0.0]
    client = new_client(clock=lambda: time.time() + offset[0])
    client.list_tasks()
    offset[0] = 3.0  # a later token differs from the first (its nbf and exp move)
    kling.fail_next(1004)
    client.list_tasks()
    first, rejected, fresh = kling.tokens
    assert first == rejected != fresh
    assert kling.answers[(401, 1004)] == 1


def test_bad_keys_fail_clearly_after_one_regeneration(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    client = new_client(secret_key="SK-wrong-wrong-wrong-wrong-wrong-wrong-00")
    with pytest.raises(AccountError, match="KLING rejected the keys"):
        client.list_tasks()
    assert kling.requests["GET list"] == 2


# -- paid tasks: never twice -------------------------------------------------------------------


def test_lost_post_answer_finds_the_task_instead_of_paying_twice(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.lose_next_submit_answers = 1
    image = maker_for(client).make_image(image_request(), MemoryJournal())
    assert kling.lost_answers == 1
    assert len(kling.tasks) == 1 and image.provenance.task_id == kling.tasks[0].task_id
    assert kling.requests["GET list"] >= 1


def test_killed_during_submit_looks_the_task_up(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    # A step died after its POST was processed: the journal says "submitting", no task id.
    paid = submit(client, external_task_id="sp-test-1")
    journal = MemoryJournal({"state": "submitting", "external_task_id": "sp-test-1"})
    image = maker_for(client).make_image(image_request(), journal)
    assert image.provenance.task_id == paid.task_id
    assert kling.requests["POST submit"] == 1 and len(kling.tasks) == 1


def test_killed_before_submit_submits(kling: FakeKlingServer, client: KlingClient) -> None:
    journal = MemoryJournal({"state": "submitting", "external_task_id": "sp-test-1"})
    maker_for(client).make_image(image_request(), journal)
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
    image = maker_for(client).make_image(image_request(), journal)
    assert image.provenance.task_id == paid.task_id
    assert kling.requests["POST submit"] == 1 and len(kling.tasks) == 1


def test_journal_naming_an_unknown_task_fails_the_scene_and_clears(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal({"state": "submitted", "task_id": "gone", "external_task_id": "x"})
    with pytest.raises(SceneRejectedError, match="task journal"):
        maker_for(client).make_image(image_request(), journal)
    assert journal.entry is None and not kling.tasks


# -- deadline and failed tasks -----------------------------------------------------------------


def test_hung_task_times_out_and_fails_the_scene(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a storm {kling.options.hang_marker}"
    started = time.monotonic()
    with pytest.raises(KlingTaskTimeoutError, match="timed out after 0.3 s") as caught:
        maker_for(client, task_timeout_seconds=0.3).make_image(
            image_request(prompt=prompt), journal
        )
    assert isinstance(caught.value, SceneRejectedError)  # fails the scene, no step retry
    assert time.monotonic() - started < 2
    assert journal.entry and journal.entry["state"] == "timed_out"

    # The next run looks once more: the task finished late, so its (paid) image is used.
    kling.release_hung_tasks()
    image = maker_for(client).make_image(image_request(prompt=prompt), journal)
    assert image.provenance.task_id == kling.tasks[0].task_id and len(kling.tasks) == 1


def test_task_still_hung_on_the_next_run_is_abandoned_for_a_new_one(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    kling.options.hang_all = True
    with pytest.raises(KlingTaskTimeoutError):
        maker_for(client, task_timeout_seconds=0.2).make_image(image_request(), journal)
    kling.options.hang_all = False
    image = maker_for(client).make_image(image_request(), journal)
    assert [t.external_task_id for t in kling.tasks] == ["sp-test-1", "sp-test-1-r1"]
    assert image.provenance.attempts == 2


def test_failed_task_is_resubmitted_with_a_derived_id(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    kling.options.failed_external_ids = frozenset({"sp-test-1"})
    journal = MemoryJournal()
    image = maker_for(client).make_image(image_request(), journal)
    assert [t.external_task_id for t in kling.tasks] == ["sp-test-1", "sp-test-1-r1"]
    prov = image.provenance
    assert (prov.attempts, prov.external_task_id) == (2, "sp-test-1-r1")
    assert journal.entry and journal.entry["task_id"] == kling.tasks[1].task_id


def test_failed_tasks_are_resubmitted_a_bounded_number_of_times(
    kling: FakeKlingServer, client: KlingClient
) -> None:
    journal = MemoryJournal()
    prompt = f"a storm {kling.options.failed_task_marker}"
    with pytest.raises(KlingTaskFailedError, match="failed 3 time") as caught:
        maker_for(client, max_resubmits=2).make_image(image_request(prompt=prompt), journal)
    assert "content moderation" not in str(caught.value)
    assert [t.external_task_id for t in kling.tasks] == [
        "sp-test-1",
        "sp-test-1-r1",
        "sp-test-1-r2",
    ]
    assert journal.entry is None


def test_broken_downloads_are_retried(kling: FakeKlingServer, client: KlingClient) -> None:
    kling.options.download_failure_rate = 0.5
    for n in range(3):
        image = maker_for(client).make_image(image_request(n), MemoryJournal())
        Image.open(io.BytesIO(image.png)).verify()
    assert len(kling.tasks) == 3 and kling.download_failures > 0


# -- concurrency -------------------------------------------------------------------------------


def test_in_flight_tasks_never_exceed_the_limit_and_use_all_of_it(
    kling: FakeKlingServer, new_client: Callable[..., KlingClient]
) -> None:
    kling.options.concurrency_limit = 3
    kling.options.task_latency_seconds = 0.15
    client = new_client(max_concurrency=3)
    maker = maker_for(client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(
            pool.map(lambda n: maker.make_image(image_request(n), MemoryJournal()), range(8))
        )
    assert len(images) == 8 and len(kling.tasks) == 8
    assert kling.max_in_flight == 3
    assert kling.answers[(429, 1303)] == 0


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
    images = [maker.make_image(image_request(n), MemoryJournal()) for n in range(3)]
    for failing in (
        lambda: new_client(secret_key="SK-wrong-wrong-wrong-wrong-wrong-wrong-00").list_tasks(),
        lambda: maker.make_image(
            image_request(9, prompt=f"x {kling.options.moderation_marker}"), MemoryJournal()
        ),
        lambda: new_client(max_attempts=1).download(
            f"{kling.url}/images/nope.png?signature={FAKE_SIGNATURE}"
        ),
    ):
        try:
            failing()
        except Exception as err:  # noqa: BLE001 - collected for inspection
            errors.append(err)
    assert len(errors) == 3 and len(images) == 3

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


def test_resource_from_env_vars_builds_a_working_maker(
    kling: FakeKlingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("KLING_SECRET_KEY", SECRET_KEY)
    resource = KlingImageMakerResource(
        access_key=dg.EnvVar("KLING_ACCESS_KEY"),
        secret_key=dg.EnvVar("KLING_SECRET_KEY"),
        base_url=kling.url,
        max_concurrency=2,
        poll_interval_seconds=0.02,
        backoff_base_seconds=0.01,
    )
    with dg.build_resources({"image_maker": resource}) as resources:
        maker_resource = resources.image_maker
        assert maker_resource.identity.label() == "kling/kling-v2-1"
        assert maker_resource.get_client() is maker_resource.get_client()
        image = maker_resource.get_maker().make_image(image_request(), MemoryJournal())
    assert image.provenance.task_id == kling.tasks[0].task_id


# -- chaos -------------------------------------------------------------------------------------


def draw_like_dagster(maker: KlingImageMaker, request: ImageRequest) -> GeneratedImage:
    """make_image as draw_scene_image runs it: transient errors retried (3 retries), with one
    journal per scene kept across the retries."""
    journal = MemoryJournal()
    for retry in range(4):
        try:
            return maker.make_image(request, journal)
        except TransientProviderError:
            if retry == 3:
                raise
    raise AssertionError("unreachable")


def test_chaos_every_image_drawn_and_paid_once(new_client: Callable[..., KlingClient]) -> None:
    with FakeKlingServer(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        seed=7,
        task_latency_seconds=0.1,
        concurrency_limit=2,  # below max_concurrency: 1303 will happen
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        failed_task_rate=0.15,
        download_failure_rate=0.2,
        lost_response_rate=0.1,
    ) as chaos:
        client = new_client(base_url=chaos.url, max_concurrency=4, max_attempts=8)
        maker = maker_for(client, max_resubmits=3)
        lock = threading.Lock()
        drawn: dict[str, GeneratedImage] = {}

        def draw(n: int) -> None:
            image = draw_like_dagster(maker, image_request(n, external_task_id=f"sp-chaos-{n}"))
            with lock:
                drawn[f"sp-chaos-{n}"] = image

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(draw, range(12)))

        assert len(drawn) == 12
        successes = chaos.successful_tasks_per_request()
        assert successes == {key: 1 for key in drawn}, successes
        for key, image in drawn.items():
            assert image.provenance.external_task_id.startswith(key)
            assert chaos.task_status(image.provenance.task_id) == "succeed"
        assert chaos.answers[(429, 1303)] > 0  # the account limit was hit, and survived
        assert chaos.max_in_flight <= 2
        assert any(status >= 500 for status, _ in chaos.answers)
        assert chaos.answers[(429, 1302)] > 0
        assert chaos.download_failures > 0
