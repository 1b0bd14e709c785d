"""AI agent tools: what the model may call, and how a webhook tool is called.

An agent (tenants TOML) declares webhook tools (``[[agents.NAME.tools]]``) and enables
built-in ones (``builtin_tools``: ``end_call``, ``transfer_call``, ``send_dtmf``). The
Realtime backend declares them all in ``session.update`` (:func:`tool_definitions`)
and runs each function call of the model: built-ins act on the call
(``backends/openai.py``), webhook tools go through :func:`call_webhook`.

A webhook call is an HTTP POST of JSON::

    {"tool": "lookup_order", "tool_call_id": "call_...", "call_id": "<gateway call id>",
     "tenant": "acme", "agent": "support", "direction": "inbound",
     "from": "+1555...", "to": "+1555...", "arguments": {...}}

with ``Content-Type: application/json``, ``X-Aigw-Timestamp`` (Unix seconds) and, when
the tool names a ``secret_env``, ``X-Aigw-Signature: sha256=<hex>``: the HMAC-SHA256,
keyed by the secret, of ``<timestamp>.<body bytes>`` (:func:`sign`; a receiver checks it
with :func:`verify`, and refuses old timestamps). A 2xx answer's body (JSON, or text
wrapped as ``{"result": ...}``) becomes the function's output, at most
``MAX_OUTPUT`` characters. Anything else (non-2xx, timeout, connection error) becomes an
``{"error": ...}`` output the model can speak about: a tool never ends or stalls a call.

Nothing here touches a call or the model; the outcome labels (:data:`OUTCOMES`) are the
``outcome`` label of ``aigw_tool_calls_total``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from .dial import DTMF_DIGITS_RE
from .tenants import Agent, ToolSpec

__all__ = [
    "DTMF_DIGITS_RE",
    "MAX_OUTPUT",
    "OUTCOMES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "ToolResult",
    "call_webhook",
    "error_output",
    "redact",
    "sign",
    "tool_definitions",
    "verify",
]

SIGNATURE_HEADER: Final = "X-Aigw-Signature"
TIMESTAMP_HEADER: Final = "X-Aigw-Timestamp"
MAX_OUTPUT: Final = 8000
"""Characters of a webhook's answer handed to the model (the rest is cut)."""
OUTCOMES: Final = ("ok", "http_error", "timeout", "error", "invalid_arguments",
                   "unknown_tool", "busy")
_SECRET_KEYS: Final = re.compile(r"pass|secret|token|pin|card|cvv|ssn|iban|account",
                                 re.IGNORECASE)
_USER_AGENT: Final = "audiosocket-gw-tools/1"


# ---------------------------------------------------------------------------- schemas


def tool_definitions(agent: Agent | None) -> tuple[dict[str, Any], ...]:
    """The ``tools`` of the agent's Realtime session (built-ins first)."""
    if agent is None:
        return ()
    out: list[dict[str, Any]] = []
    builtins = agent.builtin_tools
    if "end_call" in builtins:
        out.append(_function(
            "end_call",
            "End the phone call. Say goodbye first: the call ends once the caller has "
            "heard everything you said.",
            {"type": "object", "properties": {"reason": {
                "type": "string", "description": "Why the call ends (short)."}}}))
    if "transfer_call" in builtins and agent.transfer_destinations:
        names = list(agent.transfer_destinations)
        described = "; ".join(
            f"{d.name}: {d.description}" if d.description else d.name
            for d in agent.transfer_destinations.values())
        props: dict[str, Any] = {"destination": {"type": "string", "enum": names}}
        attended = [d.name for d in agent.transfer_destinations.values()
                    if d.mode == "attended"]
        if attended:
            # An attended transfer's person hears this before accepting (attended.py).
            props["summary"] = {
                "type": "string", "maxLength": 400,
                "description": "For " + ", ".join(attended) + ": one or two sentences "
                "for the person taking the call (who is calling and why)."}
        out.append(_function(
            "transfer_call",
            "Transfer the caller to a person or team. Tell the caller first. "
            f"Destinations: {described}.",
            {"type": "object", "properties": props, "required": ["destination"]}))
    if "send_dtmf" in builtins:
        out.append(_function(
            "send_dtmf",
            "Press phone keys (DTMF) on the call, e.g. to navigate an automated menu. "
            "Digits 0-9, * and #; w waits half a second.",
            {"type": "object", "properties": {"digits": {
                "type": "string", "pattern": DTMF_DIGITS_RE.pattern}},
             "required": ["digits"]}))
    for spec in agent.tools:
        out.append(_function(spec.name, spec.description, dict(spec.parameters)))
    return tuple(out)


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": description,
            "parameters": parameters}


# ---------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` keyed by ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *,
           max_age_s: float = 300.0, now: float | None = None) -> bool:
    """Check a webhook request's signature and the age of its timestamp."""
    try:
        ts = float(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolResult:
    """How one function call ended: ``outcome`` (one of :data:`OUTCOMES`), the
    ``output`` string for ``function_call_output``, its latency and HTTP status."""

    outcome: str
    output: str
    latency_ms: int = 0
    status: int | None = None


def error_output(error: str, message: str) -> str:
    """An ``{"error", "message"}`` output the model can speak about."""
    return json.dumps({"error": error, "message": message}, ensure_ascii=False)


def redact(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` for the event log: values of secret-looking keys replaced."""
    out: dict[str, Any] = {}
    for key, value in list(arguments.items())[:32]:
        if _SECRET_KEYS.search(str(key)):
            out[str(key)] = "[redacted]"
        elif isinstance(value, str):
            out[str(key)] = value[:200]
        elif isinstance(value, int | float | bool) or value is None:
            out[str(key)] = value
        else:
            out[str(key)] = "[...]"
    return out


async def call_webhook(
    http: aiohttp.ClientSession,
    spec: ToolSpec,
    payload: Mapping[str, Any],
    secret: str | None,
) -> ToolResult:
    """POST ``payload`` to the tool's URL within ``spec.timeout_s``; never raises."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
               "User-Agent": _USER_AGENT}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        async with http.post(spec.url, data=body, headers=headers, allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as resp:
            raw = await resp.content.read(MAX_OUTPUT * 4 + 1)
            status = resp.status
    except TimeoutError:
        return ToolResult("timeout", error_output(
            "timeout", f"The {spec.name} service did not answer within "
            f"{spec.timeout_s:g} seconds."), took())
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return ToolResult("error", error_output(
            "unavailable", f"The {spec.name} service could not be reached "
            f"({exc.__class__.__name__})."), took())
    text = raw.decode("utf-8", errors="replace")
    if not 200 <= status < 300:
        return ToolResult("http_error", error_output(
            "http_error", f"The {spec.name} service answered with HTTP status {status}."),
            took(), status)
    try:
        json.loads(text)
        output = text
    except ValueError:
        output = json.dumps({"result": text}, ensure_ascii=False)
    if len(output) > MAX_OUTPUT:
        output = json.dumps({"result": output[:MAX_OUTPUT], "truncated": True},
                            ensure_ascii=False)
    return ToolResult("ok", output, took(), status)
