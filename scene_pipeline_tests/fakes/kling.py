"""A fake KLING image API: a real HTTP server on 127.0.0.1 that behaves like the reference.

It follows ../shared/reference/kling-api.md: HS256 JWT auth (401 with 1000-1004), the
`{"code", "message", "request_id", "data"}` envelope, body validation (400 1201), unique
`external_task_id` per account (a duplicate gets 400 1201), tasks that go
submitted → processing → succeed/failed after a latency, the account's concurrency limit
(429 1303), the list endpoint, and result images served by the server itself at signed-looking
URLs (`/images/<task>-<index>.png?signature=...`).

Two task endpoints, each with its create, read and list routes:
- `/v1/images/generations` (text to image);
- `/v1/images/multi-image2image` (reference pictures: `subject_image_list` of 1-4
  `{"subject_image": <base64 or URL>}`, optional `scene_image` and `style_image`; models
  `kling-v2` and `kling-v2-1`). A picture sent as base64 must be a PNG or JPEG of at most
  10 MB, at least 300 px on each side, aspect ratio between 1:2.5 and 2.5:1, without a
  `data:` prefix; otherwise 400/1201 naming the rule. URLs are accepted unfetched.
A task is read only at the endpoint that created it (the other one answers 404/1203);
external ids are unique across both, and both share the account's concurrency limit (a task
holds `n` slots). Fields an endpoint does not document are ignored, as the real API does
(the earlier client's `model` fell back silently), and recorded in `FakeTask.ignored_fields`.

Result URLs can be made to expire (`expire_image_urls()`): the old URLs then answer 403, like
an expired signed URL (counted in `expired_downloads`), and the next read of the task hands out
freshly signed ones.

Faults are injected with knobs (`FakeKlingOptions`): rates drawn from a seeded RNG, and
deterministic options (prompt markers, `fail_next`, `lose_next_submit_answers`). Knobs may be
changed while the server runs. Everything it saw is recorded for assertions (and benchmarks):
accepted tasks, successful tasks per request, the most tasks in flight, request and answer
counts, the tokens presented; per task its endpoint and, for multi-image tasks, the sha256
of every reference picture in request order (`FakeTask.subject_images`).

    with FakeKlingServer(task_latency_seconds=0.1, concurrency_limit=3) as kling:
        client = KlingClient(kling.options.access_key, kling.options.secret_key,
                             base_url=kling.url)
        ...
        assert kling.max_in_flight <= 3
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from PIL import Image

from . import FakeHTTPServer

MODELS = ("kling-v1", "kling-v1-5", "kling-v2", "kling-v2-new", "kling-v2-1")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
PROMPT_LIMIT = 2500
GENERATIONS = "/v1/images/generations"
MULTI_IMAGE = "/v1/images/multi-image2image"
#: `FakeTask.endpoint` values, and the path of each.
ENDPOINT_PATHS = {"generations": GENERATIONS, "multi-image2image": MULTI_IMAGE}
#: The body fields each create endpoint documents; others are ignored (and recorded).
DOCUMENTED_FIELDS = {
    "generations": frozenset(
        {
            "model_name",
            "prompt",
            "negative_prompt",
            "image",
            "image_reference",
            "image_fidelity",
            "human_fidelity",
            "resolution",
            "n",
            "aspect_ratio",
            "callback_url",
            "external_task_id",
        }
    ),
    "multi-image2image": frozenset(
        {
            "model_name",
            "prompt",
            "subject_image_list",
            "scene_image",
            "style_image",
            "n",
            "aspect_ratio",
            "callback_url",
            "external_task_id",
        }
    ),
}
#: Reference pictures (multi-image2image): most subject images, and the rules of each picture.
MAX_SUBJECT_IMAGES = 4
REFERENCE_MAX_BYTES = 10 * 1024 * 1024
REFERENCE_MIN_SIDE = 300
REFERENCE_FORMATS = ("PNG", "JPEG")

# HTTP status KLING uses with each code (the reference's table).
HTTP_STATUS_OF_CODE = {
    **dict.fromkeys(range(1000, 1005), 401),
    1100: 429,
    1101: 429,
    1102: 429,
    1103: 403,
    1200: 400,
    1201: 400,
    1202: 404,
    1203: 404,
    1300: 400,
    1301: 400,
    1302: 429,
    1303: 429,
    1304: 429,
    5000: 500,
    5001: 503,
    5002: 504,
}
MODERATION_TASK_MSG = "Failure to pass the risk control system: content moderation (policy)"
INTERNAL_FAILURE_MSG = "Internal error while generating the image, please try again"
_RETRY_SUFFIX = re.compile(r"-r\d+$")


@dataclass
class FakeKlingOptions:
    """Knobs of the fake. Rates are probabilities (0-1) drawn from a RNG seeded with `seed`;
    per-task outcomes are drawn from `seed` and the task's external id, so they do not depend
    on thread timing."""

    access_key: str = "fake-kling-access-key-0123456789abcdef"
    # 32+ bytes: pyjwt warns about shorter HMAC keys.
    secret_key: str = "fake-kling-secret-key-0123456789abcdef"
    #: Seconds from submit to the final status (processing after a third of it).
    task_latency_seconds: float = 0.2
    #: The account's limit of unfinished tasks (in images: a task with n=3 uses 3).
    concurrency_limit: int = 5
    seed: int = 0
    #: Any API request answered 500/5000, 503/5001 or 504/5002 before being processed.
    server_error_rate: float = 0.0
    #: Any API request answered 429/1302 (requests too fast).
    rate_limit_rate: float = 0.0
    #: An accepted task ends `failed` with a non-moderation message.
    failed_task_rate: float = 0.0
    #: A prompt containing this is refused on submit with 400/1301.
    moderation_marker: str | None = "[[moderate-prompt]]"
    #: A prompt containing this is accepted, then the task fails with a moderation message.
    result_moderation_marker: str | None = "[[moderate-result]]"
    #: A prompt containing this is accepted, then the task fails (internal error).
    failed_task_marker: str | None = "[[fail-task]]"
    #: Tasks with these external ids are accepted, then fail (internal error).
    failed_external_ids: frozenset[str] = frozenset()
    #: A prompt containing this is accepted and its task never finishes.
    hang_marker: str | None = "[[hang-task]]"
    #: Every task never finishes.
    hang_all: bool = False
    #: Fraction of API requests answered only after `answer_delay_seconds`.
    slow_answer_rate: float = 0.0
    answer_delay_seconds: float = 0.0
    #: A POST is processed (the task is created and paid) but the connection is closed
    #: without an answer.
    lost_response_rate: float = 0.0
    #: The next N submits are processed and their answers dropped (deterministic).
    lose_next_submit_answers: int = 0
    #: An image download fails: half of them 500, half a body cut short.
    download_failure_rate: float = 0.0
    #: Forces this code on every submit, of either endpoint (1100, 1101, 1102, 1103 or 1304).
    account_error_code: int | None = None
    #: The models `POST /v1/images/multi-image2image` accepts (others: 400/1201).
    multi_image_models: tuple[str, ...] = ("kling-v2", "kling-v2-1")
    #: Result image: long side in pixels, and Pillow format ("PNG", "JPEG", "WEBP").
    # 640: the short side of a 9:16 result stays above the 300 px a reference image needs.
    image_long_side: int = 640
    image_format: str = "PNG"


@dataclass
class FakeTask:
    """An accepted (paid) task, as the fake keeps it.

    `endpoint` is "generations" or "multi-image2image". `subject_images` (multi-image tasks)
    holds, in request order, the sha256 hex digest of each decoded subject picture, or the URL
    when one was sent; `scene_image` and `style_image` likewise (None: not sent).
    `ignored_fields` are the body fields the endpoint does not document (sorted).
    """

    task_id: str
    external_task_id: str | None
    prompt: str
    negative_prompt: str | None
    model_name: str
    aspect_ratio: str
    n: int
    created_at: float  # wall clock
    created_mono: float
    finishes_mono: float | None  # None: hangs
    outcome: str  # "succeed" or "failed"
    status_msg: str = ""
    signature: str = ""
    downloads: int = 0
    endpoint: str = "generations"
    subject_images: list[str] = field(default_factory=list)
    scene_image: str | None = None
    style_image: str | None = None
    callback_url: str | None = None
    ignored_fields: tuple[str, ...] = ()
    #: Signatures of URLs made to expire (`expire_image_urls`): their downloads get 403.
    expired_signatures: set[str] = field(default_factory=set, repr=False)
    #: The next read of the task signs its URLs again.
    resign_on_read: bool = field(default=False, repr=False)

    def status(self, now: float, latency: float) -> str:
        if self.finishes_mono is not None and now >= self.finishes_mono:
            return self.outcome
        return "processing" if now - self.created_mono >= latency / 3 else "submitted"

    def unfinished(self, now: float) -> bool:
        return self.finishes_mono is None or now < self.finishes_mono

    @property
    def request_key(self) -> str:
        """The external id without a resubmit suffix (`-r1`): one per requested image."""
        return _RETRY_SUFFIX.sub("", self.external_task_id or self.task_id)


@dataclass
class _ScriptedFailure:
    status: int
    code: int
    method: str | None
    path_prefix: str | None
    remaining: int


class _Lost(Exception):
    """Drop the connection without answering."""


class FakeKlingServer:
    """The fake KLING API on a free 127.0.0.1 port, served by a background thread.

    Args:
        options: The knobs; keyword arguments override single fields of it.
    """

    def __init__(self, options: FakeKlingOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options or FakeKlingOptions(), **overrides)
        self._lock = threading.Lock()
        self._rng = random.Random(self.options.seed)
        self._tasks: dict[str, FakeTask] = {}
        self._order: list[str] = []
        self._external_ids: set[str] = set()
        self._scripted: list[_ScriptedFailure] = []
        self._images: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.answers: Counter[tuple[int, int]] = Counter()
        self.tokens: list[str] = []
        self.max_in_flight = 0
        self.lost_answers = 0
        self.download_failures = 0
        #: Downloads refused (403) because their URL was made to expire.
        self.expired_downloads = 0
        self._httpd = FakeHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKlingServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKlingServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- deterministic faults ----------------------------------------------------------------

    def fail_next(
        self,
        code: int,
        *,
        count: int = 1,
        status: int | None = None,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next `count` matching API requests with `code` (and its usual status)."""
        with self._lock:
            self._scripted.append(
                _ScriptedFailure(
                    status=status or HTTP_STATUS_OF_CODE.get(code, 400),
                    code=code,
                    method=method,
                    path_prefix=path_prefix,
                    remaining=count,
                )
            )

    def expire_image_urls(self) -> int:
        """Every result-image URL handed out so far stops working: a download answers 403, as
        an expired signed URL does. The next read of a task (GET or list) hands out freshly
        signed URLs, which work. Returns the number of tasks whose URLs expired."""
        with self._lock:
            for task in self._tasks.values():
                task.expired_signatures.add(task.signature)
                task.resign_on_read = True
            return len(self._tasks)

    def release_hung_tasks(self) -> None:
        """Let every hung task succeed now (a KLING task that finished late)."""
        with self._lock:
            now = time.monotonic()
            for task in self._tasks.values():
                if task.finishes_mono is None:
                    task.finishes_mono = now

    # -- what happened -----------------------------------------------------------------------

    @property
    def tasks(self) -> list[FakeTask]:
        """Every accepted (paid) task, oldest first."""
        with self._lock:
            return [self._tasks[t] for t in self._order]

    def task_status(self, task_id: str) -> str:
        with self._lock:
            return self._tasks[task_id].status(time.monotonic(), self.options.task_latency_seconds)

    def successful_tasks_per_request(self) -> Counter[str]:
        """Tasks that ended `succeed`, per external id without its `-rN` resubmit suffix."""
        now = time.monotonic()
        latency = self.options.task_latency_seconds
        return Counter(t.request_key for t in self.tasks if t.status(now, latency) == "succeed")

    def tasks_per_request(self) -> Counter[str]:
        return Counter(t.request_key for t in self.tasks)

    def tasks_of(self, endpoint: str) -> list[FakeTask]:
        """The accepted tasks of one endpoint ("generations" or "multi-image2image")."""
        return [t for t in self.tasks if t.endpoint == endpoint]

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight_locked(time.monotonic())

    # -- the API, called by the handler with the lock NOT held -------------------------------

    def _in_flight_locked(self, now: float) -> int:
        return sum(t.n for t in self._tasks.values() if t.unfinished(now))

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _scripted_failure(self, method: str, path: str) -> tuple[int, int] | None:
        with self._lock:
            for item in self._scripted:
                if item.remaining <= 0:
                    continue
                if item.method and item.method != method:
                    continue
                if item.path_prefix and not path.startswith(item.path_prefix):
                    continue
                item.remaining -= 1
                return item.status, item.code
        return None

    def _check_token(self, header: str | None) -> int | None:
        """The auth error code for this Authorization header, or None when it is valid."""
        if not header:
            return 1001
        if not header.startswith("Bearer "):
            return 1002
        token = header[len("Bearer ") :]
        with self._lock:
            self.tokens.append(token)
        try:
            payload = jwt.decode(
                token,
                self.options.secret_key,
                algorithms=["HS256"],
                options={"require": ["exp", "nbf", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            return 1004
        except jwt.ImmatureSignatureError:
            return 1003
        except jwt.InvalidTokenError:
            return 1002
        return None if payload.get("iss") == self.options.access_key else 1000

    def _sign(self, task_id: str, generation: int = 0) -> str:
        message = task_id if generation == 0 else f"{task_id}:{generation}"
        return hmac.new(
            self.options.secret_key.encode(), message.encode(), hashlib.sha256
        ).hexdigest()

    def _create(self, body: Any, endpoint: str = "generations") -> tuple[int, int, str, Any]:
        """Validate a create request of `endpoint`; returns (http status, code, message, data)."""
        opts = self.options
        if not isinstance(body, dict):
            return 400, 1200, "request body must be a JSON object", None
        multi = endpoint == "multi-image2image"
        model = body.get("model_name")
        prompt = body.get("prompt")
        negative = None if multi else body.get("negative_prompt")
        aspect = body.get("aspect_ratio", "16:9")
        n = body.get("n", 1)
        external = body.get("external_task_id")
        callback = body.get("callback_url")
        if model not in (opts.multi_image_models if multi else MODELS):
            return 400, 1201, f"model_name is missing or not supported by {endpoint}", None
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROMPT_LIMIT:
            return 400, 1201, f"prompt is required and at most {PROMPT_LIMIT} chars", None
        if negative is not None and (not isinstance(negative, str) or len(negative) > 2500):
            return 400, 1201, "negative_prompt must be at most 2500 chars", None
        references: dict[str, Any] = {}
        if multi:
            error = _check_references(body, references)
            if error is not None:
                return 400, 1201, error, None
        if aspect not in ASPECT_RATIOS:
            return 400, 1201, "aspect_ratio is not supported", None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
            return 400, 1201, "n must be 1-9", None
        if external is not None and not isinstance(external, str):
            return 400, 1201, "external_task_id must be a string", None
        if callback is not None and not isinstance(callback, str):
            return 400, 1201, "callback_url must be a string", None
        if opts.moderation_marker and opts.moderation_marker in prompt:
            return 400, 1301, "The prompt did not pass content moderation", None
        with self._lock:
            if external is not None and external in self._external_ids:
                return 400, 1201, "external_task_id already exists", None
            now = time.monotonic()
            if self._in_flight_locked(now) + n > opts.concurrency_limit:
                return 429, 1303, "parallel task limit of the resource pack reached", None
            outcome, message, hang = self._outcome(prompt, external)
            task_id = uuid.uuid4().hex
            task = FakeTask(
                task_id=task_id,
                external_task_id=external,
                prompt=prompt,
                negative_prompt=negative,
                model_name=model,
                aspect_ratio=aspect,
                n=n,
                created_at=time.time(),
                created_mono=now,
                finishes_mono=None if hang else now + opts.task_latency_seconds,
                outcome=outcome,
                status_msg=message,
                signature=self._sign(task_id),
                endpoint=endpoint,
                subject_images=references.get("subject_images", []),
                scene_image=references.get("scene_image"),
                style_image=references.get("style_image"),
                callback_url=callback,
                ignored_fields=tuple(sorted(set(body) - DOCUMENTED_FIELDS[endpoint])),
            )
            self._tasks[task_id] = task
            self._order.append(task_id)
            if external is not None:
                self._external_ids.add(external)
            self.max_in_flight = max(self.max_in_flight, self._in_flight_locked(now))
            return 200, 0, "SUCCEED", self._task_json_locked(task, now)

    def _outcome(self, prompt: str, external: str | None) -> tuple[str, str, bool]:
        opts = self.options
        if opts.hang_all or (opts.hang_marker and opts.hang_marker in prompt):
            return "succeed", "", True
        if opts.result_moderation_marker and opts.result_moderation_marker in prompt:
            return "failed", MODERATION_TASK_MSG, False
        if opts.failed_task_marker and opts.failed_task_marker in prompt:
            return "failed", INTERNAL_FAILURE_MSG, False
        if external in opts.failed_external_ids:
            return "failed", INTERNAL_FAILURE_MSG, False
        # Drawn from the task's own id, so a run's outcomes do not depend on thread timing.
        draw = random.Random(f"{opts.seed}:{external or uuid.uuid4()}").random()
        if draw < opts.failed_task_rate:
            return "failed", INTERNAL_FAILURE_MSG, False
        return "succeed", "", False

    def _task_json_locked(self, task: FakeTask, now: float) -> dict[str, Any]:
        latency = self.options.task_latency_seconds
        if task.resign_on_read:
            # A read after `expire_image_urls`: new signed URLs, the old ones stay refused.
            task.signature = self._sign(task.task_id, len(task.expired_signatures))
            task.resign_on_read = False
        status = task.status(now, latency)
        created_ms = int(task.created_at * 1000)
        elapsed = now - task.created_mono
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": status,
            "task_status_msg": task.status_msg if status == "failed" else "",
            "created_at": created_ms,
            "updated_at": created_ms + int(min(elapsed, latency) * 1000),
            "task_info": {"external_task_id": task.external_task_id}
            if task.external_task_id
            else {},
            "task_result": {},
        }
        if status == "succeed":
            ext = "png" if self.options.image_format.upper() == "PNG" else "img"
            data["final_unit_deduction"] = str(task.n)
            data["task_result"] = {
                "images": [
                    {
                        "index": i,
                        "url": f"{self.url}/images/{task.task_id}-{i}.{ext}"
                        f"?signature={task.signature}&expires=2592000",
                    }
                    for i in range(task.n)
                ]
            }
        return data

    def _get(self, task_id: str, endpoint: str = "generations") -> tuple[int, int, str, Any]:
        with self._lock:
            task = self._tasks.get(task_id)
            # A task is read only at the endpoint that created it.
            if task is None or task.endpoint != endpoint:
                return 404, 1203, "task not found", None
            return 200, 0, "SUCCEED", self._task_json_locked(task, time.monotonic())

    def _list(
        self, query: dict[str, list[str]], endpoint: str = "generations"
    ) -> tuple[int, int, str, Any]:
        try:
            page = int(query.get("pageNum", ["1"])[0])
            size = int(query.get("pageSize", ["30"])[0])
        except ValueError:
            return 400, 1201, "pageNum and pageSize must be integers", None
        if not 1 <= page <= 1000 or not 1 <= size <= 500:
            return 400, 1201, "pageNum must be 1-1000 and pageSize 1-500", None
        with self._lock:
            now = time.monotonic()
            newest_first = [
                self._tasks[t] for t in reversed(self._order) if self._tasks[t].endpoint == endpoint
            ]
            chunk = newest_first[(page - 1) * size : page * size]
            return 200, 0, "SUCCEED", [self._task_json_locked(t, now) for t in chunk]

    def _image(self, name: str, signature: str | None) -> tuple[bytes | None, str | None]:
        """The image's bytes (None: 403) and how this download should break (None: it works;
        "expired" with no bytes: the URL was made to expire)."""
        task_id, _, rest = name.partition("-")
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and signature in task.expired_signatures:
                self.expired_downloads += 1
                return None, "expired"
            if task is None or signature != task.signature:
                return None, None
            if task.status(time.monotonic(), self.options.task_latency_seconds) != "succeed":
                return None, None
            task.downloads += 1
            # Drawn from the task's external id and download number: independent of timing.
            draw = random.Random(
                f"{self.options.seed}:download:{task.request_key}:{task.downloads}"
            ).random()
            failure = None
            if draw < self.options.download_failure_rate:
                failure = "500" if draw < self.options.download_failure_rate / 2 else "truncated"
                self.download_failures += 1
            cached = self._images.get(name)
        if cached is not None:
            return cached, failure
        w, h = (int(x) for x in task.aspect_ratio.split(":"))
        side = self.options.image_long_side
        size = (
            (side, max(1, round(side * h / w))) if w >= h else (max(1, round(side * w / h)), side)
        )
        digest = hashlib.sha256(f"{task_id}{rest}".encode()).digest()
        buffer = io.BytesIO()
        Image.new("RGB", size, tuple(digest[:3])).save(buffer, format=self.options.image_format)
        data = buffer.getvalue()
        with self._lock:
            self._images[name] = data
        return data, failure


def _endpoint_of(path: str) -> str | None:
    """The task endpoint ("generations", "multi-image2image") a path belongs to, or None."""
    for endpoint, base in ENDPOINT_PATHS.items():
        if path == base or path.startswith(base + "/"):
            return endpoint
    return None


def _check_references(body: dict[str, Any], out: dict[str, Any]) -> str | None:
    """Check the pictures of a multi-image2image body; fills `out` with what to record
    (`subject_images`, `scene_image`, `style_image`) and returns the 1201 message, or None."""
    subjects = body.get("subject_image_list")
    if not isinstance(subjects, list) or not 1 <= len(subjects) <= MAX_SUBJECT_IMAGES:
        return f"subject_image_list must hold 1-{MAX_SUBJECT_IMAGES} subject images"
    recorded: list[str] = []
    for index, entry in enumerate(subjects):
        name = f"subject_image_list[{index}].subject_image"
        if not isinstance(entry, dict) or "subject_image" not in entry:
            return f"subject_image_list[{index}] must be an object with subject_image"
        record, error = _reference_image(entry["subject_image"], name)
        if error is not None:
            return error
        recorded.append(record)
    out["subject_images"] = recorded
    for key in ("scene_image", "style_image"):
        if body.get(key) is not None:
            record, error = _reference_image(body[key], key)
            if error is not None:
                return error
            out[key] = record
    return None


def _reference_image(value: Any, name: str) -> tuple[str, None] | tuple[None, str]:
    """(what to record, None) for an acceptable reference picture: the sha256 hex digest of
    its decoded bytes, or the URL itself (not fetched); (None, the 1201 message) otherwise."""
    if not isinstance(value, str) or not value:
        return None, f"{name} must be a base64 string or an http(s) URL"
    if value[:5].lower() == "data:":
        return None, f"{name} must be base64 without a data: prefix"
    if value.startswith(("http://", "https://")):
        return value, None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, f"{name} is neither valid base64 nor an http(s) URL"
    if len(raw) > REFERENCE_MAX_BYTES:
        return None, f"{name} is larger than 10 MB"
    try:
        with Image.open(io.BytesIO(raw)) as picture:
            picture.load()
            kind, (width, height) = picture.format, picture.size
    except Exception:  # Pillow raises many kinds of errors for bytes it cannot decode
        return None, f"{name} is not a readable image"
    if kind not in REFERENCE_FORMATS:
        return None, f"{name} must be a jpg or png image, not {kind}"
    if min(width, height) < REFERENCE_MIN_SIDE:
        return None, (
            f"{name} must be at least {REFERENCE_MIN_SIDE} px on each side, not {width}x{height}"
        )
    # Between 1:2.5 and 2.5:1, in integers: 2w <= 5h and 2h <= 5w.
    if 2 * width > 5 * height or 2 * height > 5 * width:
        return None, f"{name} aspect ratio must be between 1:2.5 and 2.5:1, not {width}x{height}"
    return hashlib.sha256(raw).hexdigest(), None


def _handler_for(server: FakeKlingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keep-alive, as httpx pools connections.
        protocol_version = "HTTP/1.1"
        # Idle keep-alive connections end on their own, so the server never waits for them.
        timeout = 10
        # Headers and body go out as separate writes: with Nagle's algorithm the body would
        # wait for the client's delayed ACK (about 40 ms per answer on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            # Silent: request lines hold signed image URLs, which tests check never leak.
            return

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                if parts.path.startswith("/images/"):
                    with server._lock:
                        server.requests["GET image"] += 1
                    self._serve_image(parts.path[len("/images/") :], parse_qs(parts.query))
                    return
                status, code, message, data = self._api(method, parts.path, parts.query, raw)
            except _Lost:
                with server._lock:
                    server.lost_answers += 1
                self.close_connection = True
                return
            self._send_json(status, code, message, data)

        def _api(self, method: str, path: str, query: str, raw: bytes) -> tuple[int, int, str, Any]:
            opts = server.options
            route = self._route(method, path)
            with server._lock:
                server.requests[route] += 1
            if opts.answer_delay_seconds > 0 and server._chance(opts.slow_answer_rate):
                time.sleep(opts.answer_delay_seconds)
            auth_error = server._check_token(self.headers.get("Authorization"))
            if auth_error is not None:
                return 401, auth_error, "authorization failed", None
            scripted = server._scripted_failure(method, path)
            if scripted is not None:
                return scripted[0], scripted[1], "scripted failure", None
            endpoint = _endpoint_of(path)
            submit = route in ("POST submit", "POST multi submit")
            if submit and opts.account_error_code is not None:
                code = opts.account_error_code
                return HTTP_STATUS_OF_CODE.get(code, 429), code, "account error", None
            if server._chance(opts.rate_limit_rate):
                return 429, 1302, "too many requests", None
            if server._chance(opts.server_error_rate):
                with server._lock:
                    code = server._rng.choice((5000, 5001, 5002))
                return HTTP_STATUS_OF_CODE[code], code, "server error", None
            if submit and endpoint is not None:
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    return 400, 1200, "request body is not JSON", None
                answer = server._create(body, endpoint)
                if answer[1] == 0 and self._lose_answer():
                    raise _Lost
                return answer
            if endpoint is not None and route in ("GET task", "GET multi task"):
                return server._get(path[len(ENDPOINT_PATHS[endpoint]) + 1 :], endpoint)
            if endpoint is not None and route in ("GET list", "GET multi list"):
                return server._list(parse_qs(query), endpoint)
            return 404, 1202, "method or resource not found", None

        def _route(self, method: str, path: str) -> str:
            """The name `requests` counts: "POST submit", "GET task", "GET list" for
            generations, "POST multi submit", "GET multi task", "GET multi list" for
            multi-image2image, "<METHOD> other" for anything else."""
            endpoint = _endpoint_of(path)
            if endpoint is None:
                return f"{method} other"
            prefix = "multi " if endpoint == "multi-image2image" else ""
            if path == ENDPOINT_PATHS[endpoint]:
                return f"POST {prefix}submit" if method == "POST" else f"{method} {prefix}list"
            if method == "GET":
                return f"GET {prefix}task"
            return f"{method} other"

        def _lose_answer(self) -> bool:
            with server._lock:
                if server.options.lose_next_submit_answers > 0:
                    server.options.lose_next_submit_answers -= 1
                    return True
            return server._chance(server.options.lost_response_rate)

        def _serve_image(self, name: str, query: dict[str, list[str]]) -> None:
            data, failure = server._image(name, (query.get("signature") or [None])[0])
            if failure == "expired":
                self._send_bytes(403, b"Request has expired")
                return
            if data is None:
                self._send_bytes(403, b"signature does not match or the image does not exist")
                return
            if failure == "500":
                self._send_bytes(500, b"storage error")
                return
            if failure == "truncated":
                # Promise the whole image, send half, hang up: a broken download.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            self._send_bytes(200, data, "image/png")

        def _send_bytes(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_json(self, status: int, code: int, message: str, data: Any) -> None:
            with server._lock:
                server.answers[(status, code)] += 1
            body = json.dumps(
                {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data}
            ).encode()
            self._send_bytes(status, body, "application/json")

    return Handler


__all__ = ["FakeKlingOptions", "FakeKlingServer", "FakeTask"]
