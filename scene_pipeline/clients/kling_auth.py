"""KLING's auth: a short-lived HS256 JWT made from the account's keys, reused until shortly
before it expires (../shared/reference/kling-api.md, "Hosts and auth")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import jwt
from pydantic import SecretStr

from scene_pipeline.clients.kling_errors import KlingAccountError

TOKEN_LIFETIME_SECONDS: Final = 1800
TOKEN_NOT_BEFORE_SKEW_SECONDS: Final = 5
# A token is replaced this long before it expires, so that none expires while in flight.
TOKEN_REFRESH_MARGIN_SECONDS: Final = 60


class KlingToken:
    """The current JWT of one account. Thread-safe; the keys never leave this object."""

    def __init__(
        self,
        access_key: str | SecretStr,
        secret_key: str | SecretStr,
        clock: Callable[[], float],
    ) -> None:
        self._access_key = (
            access_key if isinstance(access_key, SecretStr) else SecretStr(access_key)
        )
        self._secret_key = (
            secret_key if isinstance(secret_key, SecretStr) else SecretStr(secret_key)
        )
        if not self._access_key.get_secret_value() or not self._secret_key.get_secret_value():
            raise KlingAccountError("KLING access key or secret key is empty")
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._expires = 0.0

    def __repr__(self) -> str:
        return "KlingToken(**********)"

    def value(self) -> str:
        """The current JWT, made anew when none exists or it expires within the margin."""
        with self._lock:
            now = self._clock()
            if self._value is None or self._expires - now < TOKEN_REFRESH_MARGIN_SECONDS:
                issued = int(now)
                expires = issued + TOKEN_LIFETIME_SECONDS
                self._value = jwt.encode(
                    {
                        "iss": self._access_key.get_secret_value(),
                        "exp": expires,
                        "nbf": issued - TOKEN_NOT_BEFORE_SKEW_SECONDS,
                    },
                    self._secret_key.get_secret_value(),
                    algorithm="HS256",
                    headers={"typ": "JWT"},
                )
                self._expires = float(expires)
            return self._value

    def drop(self, rejected: str) -> None:
        """Forget a token KLING refused; only that one: another thread may have a fresh one."""
        with self._lock:
            if self._value == rejected:
                self._value = None

    def scrub(self, text: str) -> str:
        """Remove the keys from a server's message, should it echo them."""
        for secret in (self._access_key, self._secret_key):
            value = secret.get_secret_value()
            if value:
                text = text.replace(value, "<redacted>")
        return text
