"""``AsteriskProvider``: calls placed through the gateway's HTTP API (``/v1/calls``).

Not the gateway-internal ``audiosocket_gw.telephony.AsteriskProvider`` (which drives
AMI inside the gateway process): this one is the application's client of that API,
over HTTP, with the standard library only (``urllib``).

Placing a call (``POST /v1/calls``) never places it twice: every create carries an
``Idempotency-Key`` header (a fresh UUID, or the caller's ``idempotency_key``) and is
retried with the SAME key after a timeout or a dropped connection; the gateway answers
a repeated key with the call it already placed. ``409`` (the first request with that
key is still being handled) is retried too.

Outcomes of a create:

- 201: the call id;
- connection refused / DNS / connect timeout (nothing was sent), HTTP 5xx or 429,
  ``/healthz`` failing (cached ``health_ttl`` seconds) or the circuit breaker open
  (``breaker_threshold`` consecutive failures open it for ``breaker_cooldown`` s):
  ``ProviderUnavailable(reason)``: no call was placed, the caller may use Twilio;
- a timeout after the request was sent, still unsettled after the retries:
  ``CallOutcomeUnknown`` (do NOT place the call elsewhere);
- another 4xx: ``RequestRejected``.

``metadata`` goes to the gateway as the call's metadata; its keys ``agent`` and
``timeout`` (ring seconds) become the API's own fields. ``update_call`` is
``POST /v1/calls/{id}/twiml`` (``{"twiml": ...}`` or ``{"url": ..., "method": "POST"}``):
the live call runs the new TwiML (its agent must run TwiML, backend ``twilio-stream``);
an unknown call or one not in progress is ``RequestRejected`` (404 / 409).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .base import (
    CallOutcomeUnknown,
    ProviderCall,
    ProviderRecording,
    ProviderUnavailable,
    RequestRejected,
    check_update,
)

__all__ = ["AsteriskProvider", "CircuitBreaker"]


class _NotSent(Exception):
    """The request never reached the gateway (safe to place the call elsewhere)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Ambiguous(Exception):
    """The request was sent but no answer came back (the call may exist)."""


class CircuitBreaker:
    """Open after ``threshold`` consecutive failures; one trial after ``cooldown`` s."""

    def __init__(self, threshold: int = 3, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.clock() - self.opened_at >= self.cooldown:
                self.opened_at = self.clock()  # half-open: one trial per cooldown
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = self.clock()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


def _not_sent_reason(exc: urllib.error.URLError) -> str | None:
    """Why the request cannot have reached the gateway, or None when it may have."""
    r = exc.reason
    if isinstance(r, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(r, TimeoutError | socket.timeout):
        return "connect_timeout"
    if isinstance(r, socket.gaierror | str):
        return "dns" if isinstance(r, socket.gaierror) else "connect_error"
    return None


class AsteriskProvider:
    """``TelephonyProvider`` over the gateway's ``/v1/calls`` API (see the module doc)."""

    name = "asterisk"

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 5.0,
                 retries: int = 2, retry_backoff: float = 0.2, health_ttl: float = 5.0,
                 health_timeout: float = 1.0, breaker_threshold: int = 3,
                 breaker_cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"gateway URL must be http(s)://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout, self.retries, self.retry_backoff = timeout, retries, retry_backoff
        self.health_ttl, self.health_timeout = health_ttl, health_timeout
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown, clock)
        self._clock, self._sleep = clock, sleep
        self._health: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AsteriskProvider({self.base_url!r})"  # never the token

    # -- HTTP ---------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                 headers: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except urllib.error.URLError as exc:
            reason = _not_sent_reason(exc)
            if reason is None:  # reset / broken pipe while sending: it may have arrived
                raise _Ambiguous(str(exc.reason)) from None
            raise _NotSent(reason) from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise _Ambiguous(type(exc).__name__) from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw[:200].decode("utf-8", "replace")}
        return status, payload

    def healthy(self) -> bool:
        """``GET /healthz`` answered 200 (cached ``health_ttl`` seconds)."""
        now = self._clock()
        with self._lock:
            if self._health is not None and now - self._health[0] < self.health_ttl:
                return self._health[1]
        try:
            status, _ = self._request("GET", "/healthz", timeout=self.health_timeout)
            ok = status == 200
        except (_NotSent, _Ambiguous):
            ok = False
        with self._lock:
            self._health = (now, ok)
        return ok

    # -- TelephonyProvider -----------------------------------------------------------

    def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                            metadata: Mapping[str, Any] | None = None, *,
                            idempotency_key: str | None = None) -> str:
        if not self.breaker.allow():
            raise ProviderUnavailable("circuit_open", "gateway circuit breaker is open")
        if not self.healthy():
            raise ProviderUnavailable("unhealthy", "gateway /healthz is failing")
        md = dict(metadata or {})
        body: dict[str, Any] = {"tenant": tenant_id, "to": to, "from": from_}
        for key in ("agent", "timeout"):
            if key in md:
                body[key] = md.pop(key)
        body["metadata"] = md
        key = idempotency_key or str(uuid.uuid4())
        ambiguous = False
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.retry_backoff * attempt)
            try:
                status, payload = self._request("POST", "/v1/calls", body,
                                                headers={"Idempotency-Key": key})
            except _NotSent as exc:
                if ambiguous:
                    continue  # the earlier attempt may have placed it: keep asking
                self.breaker.failure()
                self._health = None
                raise ProviderUnavailable(exc.reason) from None
            except _Ambiguous:
                ambiguous = True
                continue
            if status in (200, 201):
                self.breaker.success()
                return str(payload["id"])
            if status == 409:  # the same key is still in flight at the gateway
                ambiguous = True
                continue
            message = str((payload.get("error") or {}).get("message", "")) \
                if isinstance(payload, dict) else ""
            if status == 429:
                raise ProviderUnavailable("http_429", message)
            if status >= 500:
                self.breaker.failure()
                raise ProviderUnavailable(f"http_{status}", message)
            raise RequestRejected(status, message)
        self.breaker.failure()
        raise CallOutcomeUnknown(key)

    def rollout_state(self) -> dict[str, Any] | None:
        """The gateway's rollout state (``GET /v1/rollout``), None when unreachable."""
        try:
            status, payload = self._request("GET", "/v1/rollout", timeout=self.health_timeout)
        except (_NotSent, _Ambiguous):
            return None
        return payload if status == 200 and isinstance(payload, dict) else None

    def _call_path(self, call_id: str, suffix: str = "") -> str:
        return "/v1/calls/" + urllib.parse.quote(call_id, safe="") + suffix

    def _checked(self, method: str, path: str,
                 body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        try:
            status, payload = self._request(method, path, body)
        except _NotSent as exc:
            raise ProviderUnavailable(exc.reason) from None
        except _Ambiguous as exc:
            raise ProviderUnavailable("timeout", str(exc)) from None
        if status >= 500 or status == 429:
            raise ProviderUnavailable(f"http_{status}")
        if status >= 400 and status != 404:
            raise RequestRejected(status, str(payload))
        return status, payload

    def hangup(self, call_id: str) -> None:
        self._checked("POST", self._call_path(call_id, "/hangup"))

    def get_call(self, call_id: str) -> ProviderCall | None:
        status, c = self._checked("GET", self._call_path(call_id))
        if status == 404:
            return None
        return ProviderCall(id=str(c["id"]), provider="asterisk", status=str(c["status"]),
                            to=str(c.get("to") or ""), from_=str(c.get("from") or ""), raw=c)

    def update_call(self, call_id: str, *, twiml: str | None = None,
                    url: str | None = None) -> None:
        check_update(twiml, url)
        body = {"twiml": twiml} if twiml is not None else {"url": url, "method": "POST"}
        status, payload = self._checked("POST", self._call_path(call_id, "/twiml"), body)
        if status == 404:
            raise RequestRejected(404, "no such call")

    def get_recording(self, call_id: str) -> ProviderRecording | None:
        status, r = self._checked("GET", self._call_path(call_id, "/recording"))
        if status == 404:
            return None
        duration = r.get("duration")
        return ProviderRecording(call_id=call_id, provider="asterisk",
                                 status=str(r.get("status")), url=r.get("url"),
                                 duration_s=float(duration) if duration is not None else None,
                                 raw=r)
