"""Who may ask: the API key (constant-time check), the bind-address rule and the body-size bound.

`ApiKeyAndBodyLimit` is a plain ASGI middleware, so a refused request is answered before its body is read:
a missing or wrong key is a 401 on every path but /health (and the static page at /, which holds no data;
its JavaScript sends the key), a body beyond the bound a 413, whether its Content-Length says so or a
chunked body grows past it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os

from ..errors import ConfigError
from .errors import error_body

OPEN_PATHS = frozenset({"/health", "/"})
ENV_KEY = "RELM_API_KEY"


def resolve_api_key(given: str | None) -> str | None:
    """The key from --api-key, else from $RELM_API_KEY; None when neither is set (no key checked)."""
    key = given if given is not None else os.environ.get(ENV_KEY)
    if key is not None and len(key.strip()) < 8:
        raise ConfigError("the API key (--api-key or $RELM_API_KEY) must be at least 8 characters")
    return key.strip() if key is not None else None


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, key: str | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without an API key, unless told --insecure."""
    if not is_loopback(host) and key is None and not insecure:
        raise ConfigError(f"--host {host} is reachable from other machines and no API key is set: give --api-key "
                          f"KEY (or ${ENV_KEY}), or --insecure to serve without one")


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest) so the answer time does not reveal a prefix."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def request_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` (what OpenAI clients send) or `X-API-Key`."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key is not None else None


async def _answer(send, status: int, message: str, headers=()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyAndBodyLimit:
    """ASGI middleware: the key check and the body-size bound, before anything else runs."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS \
                and not key_matches(request_key(headers), self.api_key):
            return await _answer(send, 401, "missing or wrong API key: send `Authorization: Bearer KEY` or "
                                 "`X-API-Key: KEY`", [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _answer(send, 413, f"request body of {int(length):,} bytes exceeds the limit of "
                                 f"{self.max_body:,} (--max-body-bytes)")
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # an HTTPException: FastAPI's body reader passes those through
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, f"request body exceeds the limit of {self.max_body:,} bytes "
                                        "(--max-body-bytes)")
            return message

        return await self.app(scope, bounded_receive, send)
