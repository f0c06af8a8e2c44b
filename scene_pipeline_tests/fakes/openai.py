"""A fake OpenAI-compatible server: real HTTP on 127.0.0.1, for tests and benchmarks.

    with FakeOpenAIServer() as fake:
        writer = OpenAIPromptWriter(api_key=fake.api_key, base_url=fake.base_url)

Endpoints:
- `POST /v1/chat/completions`: answers `response_format: json_schema` requests with JSON that
  matches the schema. Answers are built from the `<story_data ...>...</story_data>` block of
  the user message: a character sheet (schema with `looks`) gets one look per character of
  the block, a scene (schema with `image_prompt`) an English prompt made of the style the
  instructions name and the looks of the scene's characters. When the scene schema also has
  `characters_present`, it is answered with the names of `characters_in_scene` in REVERSED
  order (so tests can tell the writer's prominence order from the script's), plus the
  `extra_present_names` knob, and the prompt describes the people in that reversed order.
  Other schemas get a generic instance. Usage is counted as about 4 characters per token.
- `POST /v1/images/generations`: `n` (1-10) PNGs (or JPEG/WebP, see `image_format`) of the
  requested size, each as `b64_json` or as a `url` served by `GET /files/<id>`.
- `POST /v1/images/edits`: multipart/form-data as the SDK's `images.edit` sends it: fields
  `model`, `prompt`, `n`, `size`, optional `input_fidelity` (`high`/`low`), and one or more
  files under `image[]` (or `image`), each a PNG, JPEG or WebP (else 400
  invalid_request_error). Answered like generations. `edit_requests` records, per request,
  the number of input images and the sha256 of each, in order.

Every request must carry `Authorization: Bearer <api_key>`; otherwise 401, with the presented
key echoed in the message (as some servers do), so that tests can check it is scrubbed.

Fault injection: markers in the request text (refusal, content filter, malformed output,
moderation), queued one-shot faults per endpoint ("chat", "images", "edits" or "files";
`queue(...)` with `rate_limited`, `insufficient_quota`, `unauthorized`, `server_error`,
`moderation_blocked`, `slow`), a random 5xx rate, and a latency added to every answer.
`calls` counts requests per endpoint and `requests` keeps their JSON bodies (for edits: the
form fields, and `image` as a list of `{"field", "filename", "sha256", "bytes"}`; the
Authorization header is not kept).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from PIL import Image

from . import FakeHTTPServer

FAKE_API_KEY = "sk-fake-test-0123456789abcdef"
REFUSAL_MARKER = "[[fake:refuse]]"
CONTENT_FILTER_MARKER = "[[fake:content-filter]]"
MALFORMED_MARKER = "[[fake:malformed]]"
MODERATION_MARKER = "[[fake:moderation]]"

Endpoint = Literal["chat", "images", "edits", "files"]
_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/images/generations": "images",
    "/v1/images/edits": "edits",
}
#: What images.edit takes: multipart file fields, formats, and limits (gpt-image-1).
_EDIT_IMAGE_FIELDS = ("image[]", "image")
_EDIT_FORMATS = ("PNG", "JPEG", "WEBP")
_EDIT_MAX_IMAGES = 16
_EDIT_MAX_BYTES = 50 * 1024 * 1024
_MAX_N = 10
_BLOCK = re.compile(r"<story_data[^>]*>\s*(.*?)\s*</story_data>", re.DOTALL)
_STYLE = re.compile(r'begin the prompt with "([^"]+)"')


@dataclass(frozen=True)
class Fault:
    """One injected answer: an error status with an OpenAI-shaped body, and/or a delay."""

    status: int | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0


def _error(
    message: str, type_: str, code: str | None = None, *, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def rate_limited(retry_after: float = 7.0) -> Fault:
    return Fault(
        429,
        _error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        {"retry-after": f"{retry_after:g}"},
    )


def insufficient_quota() -> Fault:
    return Fault(
        429,
        _error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
    )


def unauthorized(presented_key: str = "") -> Fault:
    return Fault(
        401,
        _error(
            f"Incorrect API key provided: {presented_key}.",
            "invalid_request_error",
            "invalid_api_key",
        ),
    )


def server_error(status: int = 500) -> Fault:
    return Fault(status, _error("The server had an error processing your request.", "server_error"))


def moderation_blocked() -> Fault:
    return Fault(
        400,
        _error(
            "Your request was rejected as a result of our safety system.",
            "image_generation_user_error",
            "moderation_blocked",
        ),
    )


def slow(seconds: float) -> Fault:
    """Answer normally, but only after `seconds` (for client timeouts)."""
    return Fault(delay_seconds=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: Endpoint
    path: str
    body: dict[str, Any] | None
    authorized: bool

    def text(self) -> str:
        """Every message content of a chat request (or the prompt of an images request)."""
        if self.body is None:
            return ""
        if "messages" in self.body:
            return "\n".join(_content_text(m.get("content")) for m in self.body["messages"])
        return str(self.body.get("prompt", ""))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _pick(seed: str, options: list[str]) -> str:
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return options[digest[0] % len(options)]


class FakeOpenAIServer:
    """A threaded HTTP server speaking enough of the OpenAI API for our clients."""

    def __init__(
        self,
        api_key: str = FAKE_API_KEY,
        *,
        latency_seconds: float = 0.0,
        error_rate_5xx: float = 0.0,
        seed: int = 0,
        leak_names: bool = False,
        omit_looks_for: tuple[str, ...] = (),
        scene_prompt_chars: int | None = None,
        image_answer: Literal["b64_json", "url"] = "b64_json",
        image_format: Literal["PNG", "JPEG", "WEBP"] = "PNG",
        answer_model_suffix: str = "-2025-04-14",
        extra_present_names: tuple[str, ...] = (),
    ) -> None:
        """
        Args:
            api_key: the only bearer key accepted.
            latency_seconds: added to every answer.
            error_rate_5xx: share of chat/images requests answered 500 (seeded, repeatable).
            leak_names: scene prompts name the characters (a model ignoring instructions).
            omit_looks_for: character names a sheet answer leaves out.
            scene_prompt_chars: pad scene prompts to this length (to exercise caps).
            image_answer: how images are returned unless the request asks (response_format).
            image_format: the encoding of the returned pictures.
            answer_model_suffix: appended to the requested model in answers (a snapshot name).
            extra_present_names: names appended to every `characters_present` answer (names
                that are not characters of the scene, which the pipeline must drop).
        """
        self.api_key = api_key
        self.latency_seconds = latency_seconds
        self.error_rate_5xx = error_rate_5xx
        self.leak_names = leak_names
        self.omit_looks_for = omit_looks_for
        self.scene_prompt_chars = scene_prompt_chars
        self.image_answer = image_answer
        self.image_format = image_format
        self.answer_model_suffix = answer_model_suffix
        self.extra_present_names = extra_present_names
        self.calls: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        #: One dict per `POST /v1/images/edits` that parsed as multipart, in arrival order:
        #: `image_count` (int), `image_sha256` (list of hex digests of the input files, in
        #: order), `image_fields` (their multipart names), `image_filenames`, the form fields
        #: `model`, `prompt`, `n`, `size`, `input_fidelity` as sent (strings; None: absent),
        #: `authorized` (bool) and `status` (the HTTP status answered; None until answered).
        self.edit_requests: list[dict[str, Any]] = []
        self._random = random.Random(seed)
        self._faults: dict[str, deque[Fault]] = {}
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._httpd: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        handler = _handler_class(self)
        self._httpd = FakeHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._httpd is not None, "the fake server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    # --- knobs ---------------------------------------------------------------------------

    def queue(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next len(faults) requests to `endpoint` get these answers, in order."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.requests.clear()
            self.edit_requests.clear()
            self._faults.clear()

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    # --- answers -------------------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _next_fault(self, endpoint: Endpoint) -> Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if queue:
                return queue.popleft()
            if endpoint != "files" and self.error_rate_5xx > 0:
                if self._random.random() < self.error_rate_5xx:
                    return server_error()
        return None

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One request -> (status, headers, body). Runs on the server's worker threads."""
        edit: dict[str, Any] = {}
        answer = self._handle(method, path, headers, raw, edit)
        if edit:
            with self._lock:
                edit["status"] = answer[0]
        return answer

    def _handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, edit: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        """`handle`, filling `edit` (already in `edit_requests`) for an edits request."""
        route = path.split("?", 1)[0]
        endpoint: Endpoint | None = (
            "files" if route.startswith("/files/") and method == "GET" else _PATHS.get(route)
        )
        if endpoint is None or (endpoint != "files" and method != "POST"):
            return _json(404, _error(f"Unknown route {method} {route}", "invalid_request_error"))
        body: dict[str, Any] | None = None
        files: list[tuple[str, str | None, bytes]] = []
        if endpoint == "edits":
            form = _parse_multipart(headers.get("content-type", ""), raw)
            if form is None:
                return _json(
                    400,
                    _error(
                        "images/edits takes a multipart/form-data body", "invalid_request_error"
                    ),
                )
            fields, files = form
            body = dict(fields) | {
                "image": [
                    {
                        "field": name,
                        "filename": filename,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                    }
                    for name, filename, data in files
                ]
            }
        elif raw:
            try:
                loaded = json.loads(raw)
                body = loaded if isinstance(loaded, dict) else None
            except ValueError:
                return _json(400, _error("Invalid JSON body", "invalid_request_error"))
        presented = headers.get("authorization", "").removeprefix("Bearer ").strip()
        authorized = endpoint == "files" or presented == self.api_key
        with self._lock:
            self.calls[endpoint] += 1
            self.requests.append(RecordedRequest(endpoint, route, body, authorized))
            if endpoint == "edits" and body is not None:
                images = [f for f in files if f[0] in _EDIT_IMAGE_FIELDS]
                edit.update(
                    {
                        "image_count": len(images),
                        "image_sha256": [hashlib.sha256(f[2]).hexdigest() for f in images],
                        "image_fields": [f[0] for f in images],
                        "image_filenames": [f[1] for f in images],
                        **{k: body.get(k) for k in ("model", "prompt", "n", "size")},
                        "input_fidelity": body.get("input_fidelity"),
                        "authorized": authorized,
                        "status": None,
                    }
                )
                self.edit_requests.append(edit)
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        if not authorized:
            return _fault_answer(unauthorized(presented))
        fault = self._next_fault(endpoint)
        if fault is not None:
            if fault.delay_seconds:
                time.sleep(fault.delay_seconds)
            if fault.status is not None:
                return _fault_answer(fault)
        if endpoint == "files":
            data = self._files.get(route.removeprefix("/files/"))
            if data is None:
                return _json(404, _error("No such file", "invalid_request_error"))
            return 200, {"content-type": "application/octet-stream"}, data
        if body is None:
            return _json(400, _error("A JSON body is required", "invalid_request_error"))
        if endpoint == "chat":
            return self._chat(body)
        if endpoint == "edits":
            return self._edits(body, [f for f in files if f[0] in _EDIT_IMAGE_FIELDS])
        return self._images(body)

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not body.get("model"):
            return _json(400, _error("model and messages are required", "invalid_request_error"))
        text = "\n".join(_content_text(m.get("content")) for m in messages)
        response_format = body.get("response_format") or {}
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        finish_reason = "stop"
        refusal: str | None = None
        content: str | None
        if REFUSAL_MARKER in text:
            refusal, content = "I'm sorry, I can't help with that request.", None
        elif CONTENT_FILTER_MARKER in text:
            finish_reason, content = "content_filter", None
        elif MALFORMED_MARKER in text:
            content = '{"unexpected": true'
        else:
            user = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
            content = json.dumps(self._answer(schema, user[-1] if user else ""), ensure_ascii=False)
        prompt_tokens = max(1, len(text) // 4)
        completion_tokens = max(1, len(content or refusal or "") // 4)
        number = self._next_id()
        answer = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{body['model']}{self.answer_model_suffix}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return _json(200, answer, request_id=f"req_fake_{number}")

    def _answer(self, schema: dict[str, Any], text: str) -> Any:
        """An answer from the last user message (instructions may quote the block's tags)."""
        props = schema.get("properties") or {}
        matches = list(_BLOCK.finditer(text))
        match = matches[-1] if matches else None
        data: dict[str, Any] = {}
        if match:
            try:
                loaded = json.loads(match.group(1))
                data = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data = {}
        if "looks" in props:
            return {"looks": [self._look(c) for c in data.get("characters") or []]}
        if "image_prompt" in props:
            return self._scene(data, text, with_present="characters_present" in props)
        return _instance(schema, schema.get("$defs") or {})

    def _look(self, character: dict[str, Any]) -> dict[str, str]:
        name = str(character.get("name", ""))
        if name in self.omit_looks_for:
            return {"name": "someone else"} | {k: "" for k in _LOOK_FIELDS}
        gender = character.get("gender")
        subject = {"female": "a Korean woman", "male": "a Korean man"}.get(
            str(gender), "a Korean person"
        )
        return {
            "name": name,
            "subject": subject,
            "age": _pick(name + "a", ["in their early twenties", "in their forties", "elderly"]),
            "face": _pick(name + "f", ["oval face with calm dark eyes", "round face, warm smile"]),
            "hair": _pick(name + "h", ["short black bob", "grey hair tied back", "messy brown"]),
            "clothing": _pick(name + "c", ["yellow hoodie and jeans", "navy work uniform"]),
            "build": _pick(name + "b", ["slim build, average height", "sturdy, short build"]),
        }

    def _scene(
        self, data: dict[str, Any], text: str, *, with_present: bool = False
    ) -> dict[str, Any]:
        style_match = _STYLE.search(text)
        style = style_match.group(1) if style_match else "digital illustration"
        people = list(data.get("characters_in_scene") or [])
        answer: dict[str, Any] = {}
        if with_present:
            # Most prominent first, as the writer judges it: here the block's order reversed.
            people.reverse()
            answer["characters_present"] = [str(p.get("name")) for p in people] + list(
                self.extra_present_names
            )
        lines = (data.get("scene") or {}).get("lines") or []
        moods = sorted({str(line.get("emotion")) for line in lines if line.get("emotion")})
        parts = [style]
        for person in people:
            if self.leak_names:
                parts.append(f"{person.get('name')} stands in the middle of the frame")
            else:
                parts.append(f"{person.get('look')} in the middle of the frame")
        parts.append("a quiet street at dusk, warm lamp light, medium shot")
        if moods:
            parts.append(f"mood: {' and '.join(moods)}")
        prompt = ", ".join(parts)
        if self.scene_prompt_chars and len(prompt) < self.scene_prompt_chars:
            filler = ", richly detailed background with soft reflections"
            while len(prompt) < self.scene_prompt_chars:
                prompt += filler
        return answer | {"image_prompt": prompt, "extra_negative_terms": ["text", "watermark"]}

    def _images(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        prompt = str(body.get("prompt") or "")
        if not prompt:
            return _json(400, _error("prompt is required", "invalid_request_error"))
        n = body.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_N:
            return _json(400, _invalid_n(n))
        return self._image_answer(body, prompt, n, input_images=0)

    def _edits(
        self, fields: dict[str, Any], images: list[tuple[str, str | None, bytes]]
    ) -> tuple[int, dict[str, str], bytes]:
        """`POST /v1/images/edits`: the form fields and the input images (in order)."""
        if not images:
            return _json(400, _error("image is required", "invalid_request_error", param="image"))
        if len(images) > _EDIT_MAX_IMAGES:
            return _json(
                400,
                _error(
                    f"At most {_EDIT_MAX_IMAGES} images are allowed, got {len(images)}",
                    "invalid_request_error",
                    param="image",
                ),
            )
        for index, (_name, _filename, data) in enumerate(images):
            problem = _edit_image_problem(data)
            if problem is not None:
                return _json(
                    400,
                    _error(
                        f"Invalid image file or mode for image {index + 1}: {problem}",
                        "invalid_request_error",
                        param="image",
                    ),
                )
        prompt = str(fields.get("prompt") or "")
        if not prompt:
            return _json(400, _error("prompt is required", "invalid_request_error"))
        raw_n = fields.get("n")
        try:
            n = 1 if raw_n in (None, "") else int(str(raw_n))
        except ValueError:
            return _json(400, _invalid_n(raw_n))
        if not 1 <= n <= _MAX_N:
            return _json(400, _invalid_n(raw_n))
        fidelity = fields.get("input_fidelity")
        if fidelity not in (None, "high", "low"):
            return _json(
                400,
                _error(
                    f"Invalid input_fidelity {fidelity!r}: use 'high' or 'low'",
                    "invalid_request_error",
                    param="input_fidelity",
                ),
            )
        return self._image_answer(fields, prompt, n, input_images=len(images))

    def _image_answer(
        self, body: dict[str, Any], prompt: str, n: int, *, input_images: int
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer of generations and edits: `n` pictures, moderation, size, answer kind."""
        if MODERATION_MARKER in prompt:
            return _fault_answer(moderation_blocked())
        size = str(body.get("size") or "1024x1024")
        if size == "auto":
            size = "1024x1024"
        try:
            width, height = (int(x) for x in size.lower().split("x"))
        except ValueError:
            return _json(400, _error(f"Invalid size {size!r}", "invalid_request_error"))
        number = self._next_id()
        kind = body.get("response_format") or self.image_answer
        items: list[dict[str, str]] = []
        for index in range(n):
            # The first picture is the prompt's own (as with n=1); the others differ from it.
            seed = prompt if index == 0 else f"{prompt}\n#{index}"
            data = _picture(seed, width, height, self.image_format)
            if kind == "url":
                file_id = f"img-{number}-{index}.{self.image_format.lower()}"
                if index == 0:
                    file_id = f"img-{number}.{self.image_format.lower()}"
                with self._lock:
                    self._files[file_id] = data
                items.append({"url": f"{self.origin}/files/{file_id}?sig=fake-signature"})
            else:
                items.append({"b64_json": base64.b64encode(data).decode("ascii")})
        text_tokens = max(1, len(prompt) // 4)
        input_image_tokens = 258 * input_images
        image_tokens = n * (width * height // 1000)
        answer = {
            "created": int(time.time()),
            "data": items,
            "usage": {
                "input_tokens": text_tokens + input_image_tokens,
                "input_tokens_details": {
                    "image_tokens": input_image_tokens,
                    "text_tokens": text_tokens,
                },
                "output_tokens": image_tokens,
                "total_tokens": text_tokens + input_image_tokens + image_tokens,
            },
        }
        return _json(200, answer, request_id=f"req_fake_{number}")


def _invalid_n(value: Any) -> dict[str, Any]:
    return _error(
        f"Invalid 'n': {value!r}. Expected an integer between 1 and {_MAX_N}.",
        "invalid_request_error",
        param="n",
    )


def _edit_image_problem(data: bytes) -> str | None:
    """Why an edits input file is refused, or None when it is a PNG, JPEG or WebP."""
    if len(data) > _EDIT_MAX_BYTES:
        return "larger than 50 MB"
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            kind = picture.format
    except Exception:  # Pillow raises many kinds of errors for bytes it cannot decode
        return "not a readable image"
    if kind not in _EDIT_FORMATS:
        return f"unsupported format {kind}; use png, jpeg or webp"
    return None


def _parse_multipart(
    content_type: str, raw: bytes
) -> tuple[dict[str, str], list[tuple[str, str | None, bytes]]] | None:
    """A multipart/form-data body -> (text fields, [(field name, filename, bytes), ...] in
    order), with the standard library's MIME parser; None when it is not multipart."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in (
        content_type.lower()
    ):
        return None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    files: list[tuple[str, str | None, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = data.decode("utf-8", errors="replace")
        else:
            files.append((name, filename, data))
    return fields, files


_LOOK_FIELDS = ("subject", "age", "face", "hair", "clothing", "build")


def _instance(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A minimal value matching a JSON schema (objects, arrays, strings, numbers, enums)."""
    if "$ref" in schema:
        return _instance(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "anyOf" in schema:
        return _instance(schema["anyOf"][0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _instance(v, defs) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "example"


def _picture(prompt: str, width: int, height: int, image_format: str) -> bytes:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    image = Image.new("RGB", (width, height), (digest[0], digest[1], digest[2]))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _json(
    status: int, payload: dict[str, Any], request_id: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if request_id:
        headers["x-request-id"] = request_id
    return status, headers, json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _fault_answer(fault: Fault) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = _json(fault.status or 500, fault.body or {})
    return status, headers | fault.headers, body


def _handler_class(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps connections alive, as the SDK's connection pool expects.
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: with Nagle's algorithm the body would
        # wait for the client's delayed ACK (about 40 ms per answer on Linux).
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, out_headers, body = server.handle(self.command, self.path, headers, raw)
            try:
                self.send_response(status)
                for name, value in out_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test); nothing to answer

        # The method names BaseHTTPRequestHandler dispatches to.
        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # keep test output clean

    return Handler
