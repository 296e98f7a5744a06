"""The API key: `Authorization: Bearer <key>` on every HTTP route but /health.

The key is read from the environment variable the config names (auth.api_key_env), never from the
config itself. Browsers send no Bearer header, so the two browser-facing routes check it their own
way: the gradio dashboard (/ui) asks for it on its login page (serve/ui.py), and the WebSocket (/ws)
takes `?api_key=<key>` or the same Authorization header from clients that can set one.
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from llava_platform.serve.errors import ApiError

__all__ = ["api_key_from_env", "key_matches", "RequireApiKey"]

OPEN_PATHS = ("/health",)


def api_key_from_env(variable: str | None) -> str | None:
    """The key, or None when auth is off (no variable named) ; a named variable that is unset or empty is an error:
    a deploy that meant to be protected must not come up open."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise RuntimeError(f"auth.api_key_env names {variable}, which is not set in the replica's environment: set it "
                           "(e.g. runtime_env: {env_vars: {...}} or the cluster's secrets), or remove auth.api_key_env")  # fmt: skip
    return key


def key_matches(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def bearer(headers: dict[bytes, bytes]) -> str | None:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class RequireApiKey:
    """ASGI middleware: 401 in OpenAI's error body for an HTTP request without the key. WebSocket and the dashboard's
    own paths pass through to their own checks."""

    def __init__(self, app: ASGIApp, key: str, own_auth_prefixes: tuple[str, ...]):
        self.app = app
        self.key = key
        self.own_auth_prefixes = own_auth_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the path within the app: Serve keeps a route_prefix in `path` and names it in `root_path`
        path = scope.get("path", "").removeprefix(scope.get("root_path", "")) or "/"
        own_auth = any(path == p or path.startswith(p + "/") for p in self.own_auth_prefixes)
        if scope["type"] != "http" or path in OPEN_PATHS or own_auth:
            return await self.app(scope, receive, send)
        given = bearer(dict(scope.get("headers") or []))
        if not key_matches(given, self.key):
            message = "missing API key: send Authorization: Bearer <key>" if given is None else "incorrect API key"
            error = ApiError(401, message, code="invalid_api_key")
            return await error.response({"WWW-Authenticate": "Bearer"})(scope, receive, send)
        await self.app(scope, receive, send)
