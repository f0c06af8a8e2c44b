"""URLs that are safe to show: logs, the CLI and the UI print endpoints, never credentials."""

from urllib.parse import urlsplit


def redacted_url(url: str | None, default: str) -> str:
    """Scheme, host, port and path only: proxies put keys in user info or the query string."""
    if not url:
        return default
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}{parts.path}"
