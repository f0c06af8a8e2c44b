"""Fake KLING and OpenAI servers, as strict as the real APIs, on 127.0.0.1."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class FakeHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hung up: the
    tests kill pipeline processes mid-request on purpose, and the fake's answer to a gone
    client is nobody's error."""

    daemon_threads = True  # slow answers must not block shutdown
    block_on_close = False

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (socketserver's)
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset, ...
            return
        super().handle_error(request, client_address)
