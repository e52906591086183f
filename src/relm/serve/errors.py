"""The one place errors become HTTP answers: `status_of(exc)` and the handlers `install(app)` adds.

Every error answer is `{"error": {"message": one line, "type": ..., "code": status}}` (the OpenAI shape, so
its clients read it); nothing else reaches the client, never a traceback: an unexpected exception is
logged here with its traceback and answered 500 "internal error".
"""

from __future__ import annotations

import logging

from ..errors import ConfigError, DatastoreError, InputError, RelmError

log = logging.getLogger(__name__)


class ServeError(RelmError):
    """A request the server refuses, with its HTTP status."""

    status = 400


class Unauthorized(ServeError):
    status = 401


class PayloadTooLarge(ServeError):
    status = 413


class LimitExceeded(ServeError):
    """A value beyond a `ServeConfig` bound (k, queries, prompt length, max_tokens)."""

    status = 422


class NotReady(ServeError):
    status = 503


class RequestTimeout(ServeError):
    status = 504


# the one mapping of relm's error hierarchy to HTTP (most specific first)
STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ServeError, 0, ""),  # its own status and name
    (ConfigError, 422, "invalid_request_error"),
    (InputError, 422, "invalid_request_error"),
    (DatastoreError, 503, "datastore_error"),
    (RelmError, 400, "invalid_request_error"),
)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found", 405: "not_found",
         413: "request_too_large", 422: "invalid_request_error", 503: "unavailable", 504: "timeout",
         500: "internal_error"}


def status_of(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error type) of an exception; anything outside relm's hierarchy is a 500."""
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            status = status or exc.status
            return status, kind or TYPES.get(status, "invalid_request_error")
    return 500, "internal_error"


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(status: int, message: str, kind: str | None = None) -> dict:
    return {"error": {"message": one_line(message), "type": kind or TYPES.get(status, "error"), "code": status}}


def describe(exc: BaseException) -> tuple[int, dict]:
    """(status, body) for any exception: relm's own say what is wrong; anything else is logged, not shown."""
    status, kind = status_of(exc)
    if status == 500:
        log.error("internal error answering a request", exc_info=exc)
        return 500, error_body(500, "internal error (logged on the server)")
    return status, error_body(status, str(exc), kind)


def validation_message(errors: list[dict]) -> tuple[int, str]:
    """(status, one line) of pydantic's request validation errors: malformed JSON is a 400, the rest 422."""
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}; send a JSON object"
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "; ".join(parts) + more


def install(app) -> None:
    """Register the handlers: relm errors, request validation, HTTP errors (404, 405) and anything else."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_error(request, exc):
        status, body = describe(exc)
        return JSONResponse(body, status_code=status)

    async def on_validation(request, exc):
        status, message = validation_message(exc.errors())
        return JSONResponse(error_body(status, message), status_code=status)

    async def on_http(request, exc):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(RelmError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
