"""The OpenAI prompt writer: a character sheet per script, one image prompt per scene.

Both calls use structured outputs through `client.chat.completions.parse(...,
response_format=Model)`. Chat completions and not the Responses API because
`/v1/chat/completions` with `response_format: json_schema` is what OpenAI-compatible servers
(vLLM, Ollama, LiteLLM, Azure OpenAI, OpenRouter) implement; OPENAI_BASE_URL is meant to work
with any of them. Messages and answer models: providers/openai_messages.py.

Decisions:
- A character sheet answer that leaves out a character raises TransientProviderError: a new
  sample usually completes it. After the step's last retry the plan falls back to template
  looks for the script, marked as such and corrected by a later run.
- An answer that is empty or does not validate (and one cut off by the token limit) raises
  TransientProviderError too, for the same reason.
- A refusal or a content-filter stop raises SceneRejectedError(refused=True): asking again
  gives the same answer, so that scene fails alone until its content changes.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Final, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from scene_pipeline.clients.openai import LazyOpenAI
from scene_pipeline.contract.outputs import Usage
from scene_pipeline.contract.script import Script
from scene_pipeline.providers import identities
from scene_pipeline.providers.base import (
    CharacterLook,
    ScenePromptRequest,
    WrittenPrompt,
    WrittenSheet,
)
from scene_pipeline.providers.errors import SceneRejectedError, TransientProviderError
from scene_pipeline.providers.openai_errors import map_openai_error, scrub
from scene_pipeline.providers.openai_messages import (
    CharacterSheetAnswer,
    LookAnswer,
    ScenePromptAnswer,
    ensure_style,
    negative_prompt,
    present_characters,
    replace_names,
    scene_messages,
    sheet_messages,
    usage_of,
)
from scene_pipeline.providers.prompting import cap_prompt

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 60.0
# The SDK retries 408/409/429/5xx and connection errors with backoff and honours
# Retry-After; what remains is left to the Dagster step's RetryPolicy.
DEFAULT_MAX_RETRIES: Final = 2
# Bounds on what one call may cost: a degenerate answer cannot run to the model's maximum.
SHEET_MAX_COMPLETION_TOKENS: Final = 8000
SCENE_MAX_COMPLETION_TOKENS: Final = 2000

AnswerT = TypeVar("AnswerT", bound=BaseModel)


class OpenAIPromptWriter:
    """PromptWriter backed by the OpenAI chat completions API (or any compatible server).

    Args:
        api_key: the bearer key; kept inside the SDK client and never put in messages.
        base_url: an OpenAI-compatible `/v1` URL; None means api.openai.com.
        model: a chat model that supports structured outputs (json_schema).
        timeout_seconds: per HTTP attempt (connect: at most 10 s).
        max_retries: the SDK's own retries of 408/409/429/5xx and connection errors.
        http_client: an httpx.Client to send through (tests, proxies).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "gpt-4.1-mini",
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        if not api_key.strip():
            raise ValueError("OpenAIPromptWriter needs a non-empty api_key")
        self._secret = api_key
        self.model = model
        self.identity = identities.openai_writer(model)
        self._sdk = LazyOpenAI(api_key, base_url, timeout_seconds, max_retries, http_client)

    def __repr__(self) -> str:
        return f"OpenAIPromptWriter(model={self.model!r}, base_url={self._sdk.base_url!r})"

    def write_character_sheet(self, script: Script) -> WrittenSheet:
        """One structured call: a look for every character of the script.

        Raises:
            TransientProviderError: rate limits, server and network errors, and answers that
                are empty, invalid or leave out a character.
            SceneRejectedError: a refusal or a content-filter stop.
            AccountError: bad key, no quota, unknown model.
        """
        characters = script.script_metadata.characters
        if not characters:
            return WrittenSheet(looks=[], model=self.model)
        what = f"character sheet of script {script.script_id}"
        answer, usage, model = self._parse(
            what, sheet_messages(script), CharacterSheetAnswer, SHEET_MAX_COMPLETION_TOKENS
        )
        by_name: dict[str, LookAnswer] = {}
        for item in answer.looks:
            by_name.setdefault(item.name.strip(), item)
        missing = [c.name for c in characters if not _usable(by_name.get(c.name.strip()))]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise TransientProviderError(
                f"{what}: the answer has no usable look for {len(missing)} of"
                f" {len(characters)} character(s): {shown}"
            )
        # A look must not carry a name either: the scene prompts copy looks verbatim.
        names = [c.name for c in characters]
        looks = [
            CharacterLook(name=c.name, look=_strip_names(by_name[c.name.strip()].look(), names))
            for c in characters
        ]
        return WrittenSheet(looks=looks, usage=usage, model=model)

    def write_scene_prompt(self, request: ScenePromptRequest) -> WrittenPrompt:
        """One structured call: the English image prompt of one scene, and who is in it.

        Raises:
            TransientProviderError: rate limits, server and network errors, empty or invalid
                answers.
            SceneRejectedError: a refusal, a content-filter stop or a policy rejection.
            AccountError: bad key, no quota, unknown model.
        """
        what = f"prompt of scene {request.scene.scene_id}"
        answer, usage, model = self._parse(
            what, scene_messages(request), ScenePromptAnswer, SCENE_MAX_COMPLETION_TOKENS
        )
        prompt = answer.image_prompt.strip()
        if not prompt:
            raise TransientProviderError(f"{what}: the model returned an empty prompt")
        prompt = replace_names(prompt, list(request.looks))
        prompt = ensure_style(prompt, request.style)
        return WrittenPrompt(
            image_prompt=cap_prompt(prompt, request.max_prompt_chars),
            negative_prompt=negative_prompt(request.style, answer.extra_negative_terms),
            characters_present=present_characters(
                answer.characters_present, list(request.characters)
            ),
            usage=usage,
            model=model,
        )

    def _parse(
        self,
        what: str,
        messages: list[dict[str, str]],
        answer_model: type[AnswerT],
        max_completion_tokens: int,
    ) -> tuple[AnswerT, Usage | None, str]:
        import openai

        try:
            completion = self._sdk.get().chat.completions.parse(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                response_format=answer_model,
                max_completion_tokens=max_completion_tokens,
            )
        except (ValidationError, json.JSONDecodeError):
            # The SDK validates the content against the model while parsing.
            raise TransientProviderError(
                f"{what}: the model's answer did not match the expected structure"
            ) from None
        except openai.OpenAIError as err:
            self._raise_mapped(err, what)
        if not completion.choices:
            raise TransientProviderError(f"{what}: the answer had no choices")
        message = completion.choices[0].message
        if message.refusal:
            raise SceneRejectedError(
                f"{what}: the model refused: {scrub(message.refusal, self._secret)}", refused=True
            )
        if message.parsed is None:
            raise TransientProviderError(f"{what}: the model returned no structured answer")
        return message.parsed, usage_of(completion.usage), completion.model or self.model

    def _raise_mapped(self, err: Exception, what: str) -> NoReturn:
        mapped = map_openai_error(err, what, self._secret)  # type: ignore[arg-type]
        logger.debug("%s: %s -> %s", what, type(err).__name__, type(mapped).__name__)
        raise mapped from None


def _usable(item: LookAnswer | None) -> bool:
    return item is not None and len(item.look()) >= 10


def _strip_names(look: str, names: list[str]) -> str:
    """Remove names from a look (a look that names someone would leak it into every prompt)."""
    table = [CharacterLook(name=n, look="the character") for n in names if n.strip()]
    return replace_names(look, table)
