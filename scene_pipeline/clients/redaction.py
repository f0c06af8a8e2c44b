"""Keep signed URLs out of logs: httpx logs every request line at INFO, and KLING's result
image URLs (like S3 presigned ones) carry their signature in the query string."""

from __future__ import annotations

import logging
import threading

import httpx


class DropUrlQuery(logging.Filter):
    """Every URL logged through the `httpx` logger loses its query string and fragment."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


def _without_query(arg: object) -> object:
    if isinstance(arg, httpx.URL):
        if arg.query or arg.fragment:
            return f"{arg.copy_with(query=None, fragment=None)}?<redacted>"
        return arg
    if isinstance(arg, str) and "://" in arg and "?" in arg:
        return arg.split("?", 1)[0] + "?<redacted>"
    return arg


_LOCK = threading.Lock()


def install_httpx_url_filter() -> None:
    """Idempotent: filters on a logger apply to the records created on it, and httpx creates
    its request lines on the `httpx` logger itself."""
    with _LOCK:
        httpx_logger = logging.getLogger("httpx")
        if not any(isinstance(f, DropUrlQuery) for f in httpx_logger.filters):
            httpx_logger.addFilter(DropUrlQuery())
