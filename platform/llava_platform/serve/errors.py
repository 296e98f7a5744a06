"""Errors as OpenAI's API shapes them, so clients raise their own exception classes.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].content", "code": "..."}}

Every failure a client can cause is an ApiError with a 4xx status; FastAPI's own validation errors,
malformed JSON and bodies over the limit are turned into the same body. 429/503 are kept for a full
queue; anything unexpected is a 500 with no internals in its message (and a bug to fix).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiError", "error_body", "install_error_handlers", "BodyLimit"]

logger = logging.getLogger("llava_platform.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_overloaded"}  # fmt: skip


class ApiError(Exception):
    """A request the server will not serve; `param` names the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}


def _dotted(loc: tuple) -> str:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    out = ""
    tag_next = False  # a discriminated union names the tag it chose ("text") after the item's index
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif tag_next:
            tag_next = False
        elif "tagged-union[" in str(part):
            tag_next = True
        elif not _union_branch(str(part)):
            out += ("." if out else "") + str(part)
    return out


def _union_branch(part: str) -> bool:
    """pydantic names the union member it tried in the location ("str", "list[...]", "tagged-union[...]")."""
    return "[" in part or part in ("str", "int", "float", "bool", "none") or part.startswith("function-")


def _validation_error(exc: RequestValidationError) -> ApiError:
    # a value that fits none of a union's types fails once per type: the deepest error is in the branch the value
    # took (content: [parts] missing a part's text, rather than "content: Input should be a valid string")
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}",
                        code="invalid_json")  # fmt: skip
    param = _dotted(tuple(error["loc"]))
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if error["type"] == "missing":
        return ApiError(400, f"{param or 'body'}: required field is missing", param or None, "missing_required_parameter")
    got = error.get("input")
    shown = f" (got {json.dumps(got)[:80]})" if isinstance(got, (str, int, float, bool)) or got is None else ""
    more = f"; and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    return ApiError(400, f"{param or 'body'}: {message}{shown}{more}", param or None, "invalid_value")


def install_error_handlers(app: FastAPI, status_field_paths: tuple[str, ...] = ()) -> None:
    """Every error as OpenAI's body; on `status_field_paths` (the LLaVA API's /analyze) with its `"status": "error"`
    beside it, as that API's clients read it."""

    def respond(request: Request, error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
        body = error.body()
        if request.scope.get("route") is not None and request.scope["route"].path in status_field_paths:
            body["status"] = "error"
        return JSONResponse(body, status_code=error.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(request, ApiError(exc.status_code, str(exc.detail), code="http_error"), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return respond(request, ApiError(500, "internal error: the server failed on this request; its log has the "
                                         "details", code="internal_error"))  # fmt: skip


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is a 413, from its Content-Length before any byte is read,
    or as soon as the received body passes the limit. The body (at most the limit) is read here and replayed to
    the app, so the app never sees a body it would have to refuse half-way."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, f"the request body is over the limit of {self.max_bytes} bytes (limits.max_body_bytes)",
                             code="body_too_large")  # fmt: skip
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body arrived: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large.response()(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that returns `messages` first, then the real receive (which reports a disconnect)."""

    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed
