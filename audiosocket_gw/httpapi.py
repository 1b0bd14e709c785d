"""The HTTP layer every route shares: one auth check, one error shape, one body reader.

- **Auth** (``auth_middleware``): when a token is configured (``AIGW_API_TOKEN``;
  required off loopback), every request except the public paths (``/healthz``, and
  ``/metrics`` only with ``AIGW_METRICS_PUBLIC=1``) needs
  ``Authorization: Bearer <token>``, compared in constant time on bytes (a header
  that is not ASCII is simply wrong, never a 500). Paths under ``/2010-04-01/`` use
  Twilio's own per-tenant Basic auth and are left to their handlers.
- **Errors**: ``{"error": {"code": "...", "message": "..."}}`` with the HTTP status
  (``api_error``). An unexpected exception in a handler is logged and answered
  ``503 internal`` (never a bare 500 page): a handler bug must not look like success
  and must not leak a traceback.
- **JSON bodies** (``read_json``): a size limit, UTF-8, no NaN/Infinity, a nesting
  depth limit, an object at the top; anything else is a 400/413 ``JsonBodyError``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

__all__ = [
    "JsonBodyError",
    "api_error",
    "auth_middleware",
    "error_middleware",
    "read_json",
]

log = logging.getLogger("audiosocket_gw.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS: Final = frozenset({"/healthz"})
TWILIO_PREFIX: Final = "/2010-04-01/"
MAX_DEPTH: Final = 16


def api_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """The one error shape of the gateway's own API."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers or None)


class JsonBodyError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> web.Response:
        return api_error(self.status, self.code, str(self))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number; one that overflows to infinity (``1e400``) is refused like
    ``Infinity`` (the store, and any JSON reader of ours, refuses non-finite floats)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping past ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_json_object(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Decode a JSON object strictly (see the module docstring)."""
    if raw.count(b"[") + raw.count(b"{") > 10_000:
        raise JsonBodyError(400, "bad_json", "JSON nested or repeated too much")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text or "null", parse_constant=_reject_constant,
                           parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise JsonBodyError(400, "bad_json", "body must be a JSON object") from None
    if not isinstance(value, dict):
        raise JsonBodyError(400, "bad_json", "body must be a JSON object")
    if _depth(value, max_depth) > max_depth:
        raise JsonBodyError(400, "bad_json", f"JSON nested deeper than {max_depth}")
    return value


async def read_json(request: web.Request, *, max_body: int = 64 * 1024,
                    max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The request's body as a JSON object, or ``JsonBodyError``."""
    if request.content_length is not None and request.content_length > max_body:
        raise JsonBodyError(413, "too_large", "request body too large")
    raw = await request.content.read(max_body + 1)
    if len(raw) > max_body:
        raise JsonBodyError(413, "too_large", "request body too large")
    return parse_json_object(raw, max_depth=max_depth)


def bearer_ok(header: str, token: bytes) -> bool:
    """``Authorization: Bearer <token>`` in constant time; any odd header is False."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        raw = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeError:
        return False
    return hmac.compare_digest(raw, token)


def auth_middleware(token: str | None, *, public: frozenset[str] = PUBLIC_PATHS,
                    signed: Callable[[str, web.Request], bool] | None = None) -> Any:
    """The one bearer-token check (no token configured: everything is open).

    ``signed(token, request)``, when given, may accept a request without the header
    that carries its own short-lived signature (the console's recording links, for
    an ``<audio>`` element that cannot send headers)."""
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in public or request.path.startswith(
                TWILIO_PREFIX):
            return await handler(request)
        if not bearer_ok(request.headers.get("Authorization", ""), expected) and not (
                signed is not None and token and signed(token, request)):
            return api_error(401, "unauthorized", "missing or wrong bearer token",
                             **{"WWW-Authenticate": 'Bearer realm="audiosocket-gw"'})
        return await handler(request)

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn stray exceptions into the error shape (4xx from aiohttp stay as they are)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return api_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason,
                             **{k: v for k, v in exc.headers.items()
                                if k in ("Allow", "Retry-After", "WWW-Authenticate")})
        raise
    except JsonBodyError as exc:
        return exc.response()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return api_error(503, "internal", "the gateway could not handle this request")
