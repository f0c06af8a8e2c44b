"""A fault-injecting HTTP proxy for S3: real faults at the HTTP level, in front of moto's server.

Point boto3 (AWS_ENDPOINT_URL, or S3Resource(endpoint_url=...)) at `proxy.url`. Requests are
forwarded unchanged to the upstream S3 endpoint and its answers relayed back, except those
matching a fault rule, which get the S3 error answer of a real outage instead (status, XML
body with the error code, `x-amz-request-id`), so that botocore's retry logic and the
pipeline's error handling see exactly what they would see from AWS:

    with FaultyS3Proxy(s3_endpoint) as proxy:
        proxy.fail("PUT", r"/manifest\\.json$", SLOW_DOWN, times=2)   # two 503 SlowDown
        proxy.fail("PUT", r"\\.png$", INTERNAL_ERROR)                  # every PNG PUT: 500

`times=None` means every matching request until `clear()`. `hits` counts the fault answers
per rule; `seen` keeps (method, key) of every request.
"""

from __future__ import annotations

import http.client
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class S3Fault:
    status: int
    code: str
    message: str


SLOW_DOWN = S3Fault(503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = S3Fault(
    500, "InternalError", "We encountered an internal error. Please try again."
)
NO_SUCH_BUCKET = S3Fault(404, "NoSuchBucket", "The specified bucket does not exist")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}


@dataclass
class _Rule:
    method: str
    key_pattern: re.Pattern[str]
    fault: S3Fault
    remaining: int | None


class FaultyS3Proxy:
    """The proxy on a free 127.0.0.1 port, served by a background thread."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.hits: Counter[str] = Counter()
        self.seen: list[tuple[str, str]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultyS3Proxy:
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

    def __enter__(self) -> FaultyS3Proxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail(self, method: str, key_regex: str, fault: S3Fault, times: int | None = None) -> None:
        """Answer matching requests (method, and a regex searched in the object key) with
        `fault`, `times` times (None: until `clear()`)."""
        with self._lock:
            self._rules.append(_Rule(method.upper(), re.compile(key_regex), fault, times))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _fault_for(self, method: str, key: str) -> S3Fault | None:
        with self._lock:
            self.seen.append((method, key))
            for rule in self._rules:
                if rule.method != method or not rule.key_pattern.search(key):
                    continue
                if rule.remaining is not None:
                    if rule.remaining <= 0:
                        continue
                    rule.remaining -= 1
                self.hits[f"{method} {rule.fault.code}"] += 1
                return rule.fault
        return None


def _key_of(path: str) -> str:
    """`/bucket/a/b.png?x=1` -> `a/b.png` (path-style addressing, as used with an IP host)."""
    segments = unquote(urlsplit(path).path).lstrip("/").split("/", 1)
    return segments[1] if len(segments) == 2 else ""


def _error_body(fault: S3Fault, path: str, request_id: str) -> bytes:
    resource = unquote(urlsplit(path).path)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


def _handler_for(proxy: FaultyS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            body = self._body()
            fault = proxy._fault_for(self.command, _key_of(self.path))
            if fault is not None:
                request_id = uuid.uuid4().hex[:16].upper()
                payload = _error_body(fault, self.path, request_id)
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-amz-request-id", request_id)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length")
                if self.command == "HEAD":
                    self.send_header("Content-Length", length or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                upstream.close()

        do_GET = _serve
        do_PUT = _serve
        do_POST = _serve
        do_HEAD = _serve
        do_DELETE = _serve

    return Handler


__all__ = ["INTERNAL_ERROR", "NO_SUCH_BUCKET", "SLOW_DOWN", "FaultyS3Proxy", "S3Fault"]
