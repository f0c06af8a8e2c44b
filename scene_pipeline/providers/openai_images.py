"""An image maker for OpenAI-compatible images APIs (`POST /v1/images/generations`).

Works with OpenAI's gpt-image-1 and with self-hosted servers that speak the same API. The
call is synchronous: the picture comes back in the answer, as base64 (`b64_json`) or as a
URL that is downloaded at once (signed URLs expire within the hour). Whatever the server
sends, the stored bytes are PNG.

The task journal is not used: there is no server-side task to resume. A step that dies
while the request is in flight has nothing to poll for afterwards; its retry asks again.
(That retry may pay for a second picture if the first was still being drawn: this is why
`max_retries` defaults to 1 here, not 2.)

With reference portraits the request goes to `images.edit`, the portraits as input images in
the order of the characters present; several candidates are asked for with `n`.

The images API has no negative prompt; by default the negative prompt is appended to the
prompt as an "Avoid: ..." sentence, which gpt-image-1 follows.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from scene_pipeline.clients.openai import LazyOpenAI
from scene_pipeline.contract.outputs import ImageProvenance
from scene_pipeline.providers import identities
from scene_pipeline.providers.base import (
    GeneratedImage,
    ImageRequest,
    SlotGate,
    TaskJournal,
)
from scene_pipeline.providers.errors import TransientProviderError
from scene_pipeline.providers.openai_errors import map_openai_error
from scene_pipeline.providers.png import as_png

logger = logging.getLogger(__name__)

DEFAULT_IMAGES_MODEL = "gpt-image-1"
# images.edit takes several input images; more than this many references add little.
MAX_REFERENCES = 4
# gpt-image-1 usually answers in 20-90 s, high quality at large sizes can take longer.
DEFAULT_IMAGES_TIMEOUT_SECONDS = 180.0
# Each retry after a timeout may pay for another picture; one retry covers the common
# transient 429/5xx, the step's RetryPolicy covers the rest.
DEFAULT_IMAGES_MAX_RETRIES = 1
# The sizes gpt-image-1 accepts; self-hosted servers usually accept these too.
GPT_IMAGE_SIZES: tuple[str, ...] = ("1024x1024", "1536x1024", "1024x1536")
# Downloads of url answers: a picture is a few MB; anything far larger is not a picture.
DOWNLOAD_TIMEOUT_SECONDS = 60.0
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.lower().partition("x")
    return int(width), int(height)


def nearest_size(aspect_ratio: str, sizes: Sequence[str] = GPT_IMAGE_SIZES) -> str:
    """The supported size whose shape is closest to the ratio (compared on a log scale, so
    that 2:1 and 1:2 are equally far from 1:1); ties go to the larger picture."""
    rw, rh = (int(x) for x in aspect_ratio.split(":"))
    target = math.log(rw / rh)

    def distance(size: str) -> tuple[float, int]:
        w, h = parse_size(size)
        return (round(abs(math.log(w / h) - target), 9), -(w * h))

    return min(sizes, key=distance)


class OpenAIImagesMaker:
    """ImageMaker backed by an OpenAI-compatible images API."""

    max_references = MAX_REFERENCES

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_IMAGES_MODEL,
        timeout_seconds: float = DEFAULT_IMAGES_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_IMAGES_MAX_RETRIES,
        sizes: Sequence[str] = GPT_IMAGE_SIZES,
        response_format: str | None = None,
        append_negative_prompt: bool = True,
        http_client: httpx.Client | None = None,
        download_client: httpx.Client | None = None,
    ) -> None:
        """
        Args:
            api_key: the bearer key; kept inside the SDK client and never put in messages.
            base_url: an OpenAI-compatible `/v1` URL; None means api.openai.com.
            model: the image model, e.g. gpt-image-1.
            timeout_seconds: per HTTP attempt (connect: at most 10 s).
            max_retries: the SDK's own retries of 408/409/429/5xx and connection errors.
            sizes: the "WxH" sizes the server accepts; each request uses the nearest shape.
            response_format: "b64_json" or "url" to ask for one; None sends nothing, because
                gpt-image-1 rejects the parameter (it always answers b64_json). Both kinds of
                answer are accepted either way.
            append_negative_prompt: add "Avoid: <negative prompt>." to the prompt.
            http_client: an httpx.Client for the API calls (tests, proxies).
            download_client: an httpx.Client for downloading url answers.
        """
        if not api_key.strip():
            raise ValueError("OpenAIImagesMaker needs a non-empty api_key")
        if not sizes:
            raise ValueError("OpenAIImagesMaker needs at least one size")
        for size in sizes:
            parse_size(size)  # fail at construction, not at the first scene
        self._secret = api_key
        self.model = model
        self.sizes = tuple(sizes)
        self.response_format = response_format
        self.append_negative_prompt = append_negative_prompt
        self.identity = identities.openai_images(model)
        self._sdk = LazyOpenAI(api_key, base_url, timeout_seconds, max_retries, http_client)
        self._download_client = download_client

    def __repr__(self) -> str:
        return f"OpenAIImagesMaker(model={self.model!r}, base_url={self._sdk.base_url!r})"

    def make_image(
        self, request: ImageRequest, journal: TaskJournal, slots: SlotGate
    ) -> GeneratedImage:
        """Draw `request.n` pictures of the nearest supported size and return them as PNG.

        Raises:
            TransientProviderError: rate limits, server and network errors, answers without
                a readable picture, failed downloads.
            SceneRejectedError: moderation / content policy, other rejected requests.
            AccountError: bad key, no quota, unknown model.
        """
        del journal, slots  # synchronous API: no task in flight, no account slots to share
        what = f"image of {request.subject}"
        size = nearest_size(request.aspect_ratio, self.sizes)
        arguments = self._arguments(request, size)
        submitted_at = datetime.now(UTC)
        started = time.monotonic()
        raw, answer = self._ask(request, arguments, what)
        if not answer.data or len(answer.data) < request.n:
            raise TransientProviderError(
                f"{what}: the answer contained {len(answer.data or [])} of {request.n} images"
            )
        pngs: list[bytes] = []
        for item in answer.data[: request.n]:
            png, width, height = self._picture(item, what)
            pngs.append(png)
        if (width, height) != parse_size(size):
            logger.info("%s: asked for %s, got %dx%d", what, size, width, height)

        return GeneratedImage(
            pngs=pngs,
            provenance=ImageProvenance(
                provider=self.identity.provider,
                model=self.model,
                task_id=raw.headers.get("x-request-id"),
                external_task_id=request.external_task_id,
                attempts=raw.retries_taken + 1,
                submitted_at=submitted_at,
                finished_at=datetime.now(UTC),
                duration_seconds=round(time.monotonic() - started, 3),
                # The contract has no token field for images; this is the billed-units slot.
                final_unit_deduction=_billed_units(answer.usage),
                width=width,
                height=height,
            ),
        )

    def _arguments(self, request: ImageRequest, size: str) -> dict[str, Any]:
        """The API call's arguments; the negative prompt joins the prompt (see the module
        docstring)."""
        prompt = request.prompt.strip()
        if self.append_negative_prompt and request.negative_prompt.strip():
            prompt = f"{prompt}\n\nAvoid: {request.negative_prompt.strip()}."
        arguments: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "size": size,
            "n": request.n,
        }
        if self.response_format:
            arguments["response_format"] = self.response_format
        return arguments

    def _ask(self, request: ImageRequest, arguments: dict[str, Any], what: str) -> tuple[Any, Any]:
        """(the raw response, its parsed answer): `images.edit` with the references as input
        images, else `images.generate`."""
        import openai

        try:
            if request.references:
                images = [
                    (f"reference-{i}.png", png, "image/png")
                    for i, png in enumerate(request.references[:MAX_REFERENCES], start=1)
                ]
                raw = self._sdk.get().images.with_raw_response.edit(image=images, **arguments)
            else:
                raw = self._sdk.get().images.with_raw_response.generate(**arguments)
            return raw, raw.parse()
        except openai.OpenAIError as err:
            self._raise_mapped(err, what)

    def _picture(self, item: Any, what: str) -> tuple[bytes, int, int]:
        if item.b64_json:
            try:
                data = base64.b64decode(item.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise TransientProviderError(f"{what}: the answer's base64 is invalid") from None
        elif item.url:
            data = self._download(item.url, what)
        else:
            raise TransientProviderError(f"{what}: the answer had neither b64_json nor url")
        try:
            return as_png(data)
        except ValueError as err:
            raise TransientProviderError(f"{what}: the answer is {err}") from None

    def _download(self, url: str, what: str) -> bytes:
        """GET the picture at once. The URL is never logged or quoted: it may be signed."""
        client = self._download_client or httpx.Client(
            timeout=DOWNLOAD_TIMEOUT_SECONDS, follow_redirects=True
        )
        try:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise TransientProviderError(
                        f"{what}: downloading the image failed (HTTP {response.status_code})"
                    )
                chunks: list[bytes] = []
                received = 0
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    if received > MAX_IMAGE_BYTES:
                        raise TransientProviderError(f"{what}: the image download is too large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as err:
            raise TransientProviderError(
                f"{what}: downloading the image failed ({type(err).__name__})"
            ) from None
        finally:
            if client is not self._download_client:
                client.close()

    def _raise_mapped(self, err: Exception, what: str) -> NoReturn:
        mapped = map_openai_error(err, what, self._secret)  # type: ignore[arg-type]
        logger.debug("%s: %s -> %s", what, type(err).__name__, type(mapped).__name__)
        raise mapped from None


def _billed_units(usage: Any) -> str | None:
    if usage is None:
        return None
    return f"{usage.total_tokens} tokens (input {usage.input_tokens}, output {usage.output_tokens})"
