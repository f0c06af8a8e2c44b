"""One request to KLING's API (../shared/reference/kling-api.md): authenticated, its answer
unwrapped to `data` or classified as an error.

Auth is a short-lived HS256 JWT (`clients/kling_auth.py`), regenerated once on a 401. Errors
are classified by KLING's `code` (`clients/kling_errors.py`); whether one is retried is the
retry budget's decision (`clients/kling_retry.py`), not this module's. Keys, JWTs and server
text that echoes them never reach an exception message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from scene_pipeline.clients.kling_auth import KlingToken
from scene_pipeline.clients.kling_errors import (
    AUTH_CODES,
    KlingAccountError,
    KlingTransientError,
    classify,
    retry_after_seconds,
    sanitise_message,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KlingConnection:
    """The API host, the account's token and the HTTP client that one request needs."""

    token: KlingToken
    base_url: str
    http: httpx.Client

    def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API request (two when a 401 makes us regenerate the token); returns `data`."""
        regenerated = False
        while True:
            token = self.token.value()
            response = self._send(method, path, what, token, json_body, params)
            body = _json_object(response)
            code = body.get("code") if isinstance(body.get("code"), int) else None
            request_id = str(body["request_id"]) if body.get("request_id") else None
            if response.status_code == 200 and code == 0:
                return body.get("data")
            if response.status_code == 401 or code in AUTH_CODES:
                if not regenerated:
                    logger.debug("KLING %s: HTTP 401 (code %s), regenerating the token", what, code)
                    regenerated = True
                    self.token.drop(token)
                    continue
                raise KlingAccountError(
                    f"KLING rejected the keys (HTTP {response.status_code}, code {code}): check"
                    " KLING_ACCESS_KEY and KLING_SECRET_KEY",
                    http_status=response.status_code,
                    code=code,
                    request_id=request_id,
                )
            detail = self.token.scrub(sanitise_message(body.get("message"), limit=200))
            raise classify(
                response.status_code,
                code,
                request_id,
                detail,
                what,
                retry_after_seconds(response.headers),
            )

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        token: str,
        json_body: dict[str, Any] | None,
        params: dict[str, Any] | None,
    ) -> httpx.Response:
        try:
            return self.http.request(
                method,
                self.base_url + path,
                json=json_body,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.ConnectError as err:
            # Nothing reached KLING: safe to repeat, even a POST.
            raise KlingTransientError(
                f"KLING {what}: cannot connect ({type(err).__name__})"
            ) from None
        except httpx.TransportError as err:
            raise KlingTransientError(
                f"KLING {what}: network error or timeout ({type(err).__name__})",
                ambiguous=True,
            ) from None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
