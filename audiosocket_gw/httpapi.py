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
- **Bodies** (``read_body``, ``read_json``, ``read_form``): a size limit checked on the
  declared length and on what arrives; JSON must be UTF-8 with no NaN/Infinity, a
  nesting depth limit and an object at the top; a form must be UTF-8
  ``application/x-www-form-urlencoded`` with a bounded number of fields (repeated
  keys kept, as Twilio sends ``StatusCallbackEvent``); anything else is a 400/413
  ``JsonBodyError``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

__all__ = [
    "ConnectionGuard",
    "JsonBodyError",
    "api_error",
    "auth_middleware",
    "error_middleware",
    "read_body",
    "read_form",
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


async def read_body(request: web.Request, *, max_body: int = 64 * 1024) -> bytes:
    """The request's raw body, at most ``max_body`` bytes, or a 413 ``JsonBodyError``."""
    if request.content_length is not None and request.content_length > max_body:
        raise JsonBodyError(413, "too_large", "request body too large")
    raw = await request.content.read(max_body + 1)
    if len(raw) > max_body:
        raise JsonBodyError(413, "too_large", "request body too large")
    return raw


async def read_json(request: web.Request, *, max_body: int = 64 * 1024,
                    max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The request's body as a JSON object, or ``JsonBodyError``."""
    return parse_json_object(await read_body(request, max_body=max_body),
                             max_depth=max_depth)


MAX_FORM_FIELDS: Final = 200


def parse_form(raw: bytes) -> MultiDictProxy[str]:
    """A URL-encoded form (repeated keys kept), or a 400 ``JsonBodyError``."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise JsonBodyError(400, "bad_form",
                            "body must be a UTF-8 URL-encoded form") from None
    return MultiDictProxy(MultiDict(pairs))


async def read_form(request: web.Request, *,
                    max_body: int = 64 * 1024) -> MultiDictProxy[str]:
    """The request's body as a URL-encoded form, or ``JsonBodyError`` (413/400)."""
    return parse_form(await read_body(request, max_body=max_body))


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


# -- connection guard -------------------------------------------------------------------


class ConnectionGuard:
    """Bounds what one HTTP client can hold (aiohttp has no request-head timeout).

    * a connection must deliver its first complete request head (up to the blank line)
      within ``head_timeout`` seconds of connecting, else it is closed: half-sent
      headers (slowloris) cannot pin connections (an idle keep-alive connection is
      closed by aiohttp's ``keepalive_timeout``, which the gateway sets to 15 s);
    * at most ``per_peer`` connections from one IP address at a time.
    """

    def __init__(self, *, head_timeout: float = 10.0, per_peer: int = 64) -> None:
        self.head_timeout = head_timeout
        self.per_peer = per_peer
        self.peers: dict[str, int] = {}
        self.closed_slow = 0
        self.refused_peer = 0

    def wrap(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _GuardedProtocol(inner, self)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's handler; watches the first request head."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._peer = ""
        self._seen = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        guard = self._guard
        count = guard.peers.get(self._peer, 0)
        if count >= guard.per_peer:
            guard.refused_peer += 1
            log.warning("HTTP: %d connections from one peer already: refused", count)
            self._peer = ""
            transport.abort()
            return
        guard.peers[self._peer] = count + 1
        self._timer = asyncio.get_running_loop().call_later(guard.head_timeout, self._expire)
        self._started = True
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        self._guard.closed_slow += 1
        log.info("HTTP: no complete request head within %.0f s: connection closed",
                 self._guard.head_timeout)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._seen = (self._seen + data)[-(64 * 1024):]
            if b"\r\n\r\n" in self._seen:
                self._timer.cancel()
                self._timer = None
                self._seen = b""
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._peer:
            left = self._guard.peers.get(self._peer, 1) - 1
            if left > 0:
                self._guard.peers[self._peer] = left
            else:
                self._guard.peers.pop(self._peer, None)
        if self._started:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
