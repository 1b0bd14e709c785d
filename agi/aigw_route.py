#!/usr/bin/env python3
"""AGI router: ask the gateway where this inbound call goes, set ``AIGW_*`` variables.

Run by ``[aigw-inbound]`` (``dialplan/extensions_aigw.conf``) as a process AGI, once
per call::

    same => n,AGI(aigw_route.py)                 ; or AGI(aigw_route.py,<route URL>)

It reads the AGI environment (``agi_extension``/``agi_dnid``, ``agi_callerid``,
``agi_uniqueid``, ``agi_channel``), POSTs them as JSON to the gateway's
``/v1/route`` (URL: ``agi_arg_1``, else env ``AIGW_ROUTE_URL``, else
``http://127.0.0.1:9094/v1/route``) and sets on the channel:

``AIGW_STATUS`` ok | busy | unknown | unavailable, ``AIGW_CALL_ID``,
``AIGW_AUDIOSOCKET``, ``AIGW_AUDIOSOCKET_ALT`` (other gateway nodes to try when
``AIGW_AUDIOSOCKET`` refuses the connection, ``&``-separated; each checked like
``AIGW_AUDIOSOCKET``, the ones that fail dropped), ``AIGW_TENANT``, ``AIGW_AGENT``,
``AIGW_RECORD``, ``AIGW_RECORDING_FILE``, ``AIGW_FALLBACK``.

All nine are set on every run (empty when not applicable), ``AIGW_STATUS`` last, so
nothing stale or pre-set on the channel survives. ``unavailable`` means the gateway
did not answer in time (``AIGW_ROUTE_TIMEOUT`` seconds, default 1.5, total), answered
with an error, or answered something that fails validation.

Security: DID and caller ID are attacker-controlled. They only travel to the gateway
inside a JSON body; no value derived from them is ever set on the channel. Every
value the gateway returns is checked against a strict pattern (UUID, ``host:port``,
``[A-Za-z0-9_.-]`` ids, a safe absolute ``.wav`` path, a plain dial string) before it
is quoted for ``SET VARIABLE``; a value that fails is never set. Beyond the shape: the
AudioSocket address must be the gateway's (the route URL's host, any loopback address
when that is loopback, or listed in ``AIGW_AUDIOSOCKET_ALLOW``), the recording file
must be ``<AIGW_MIXMONITOR_DIR>/<tenant>/<call id>.wav``, and the fallback a dial
string of ``AIGW_FALLBACK_TECHS`` (default PJSIP, SIP, IAX2, DAHDI; never ``Local/``).

AGI quirks handled (docs/PROTOCOLS.md §3.2, §3.4): on caller hangup a process AGI gets
SIGHUP and no ``HANGUP`` line while the channel waits for the script, so SIGHUP exits
at once; pyst2 writes debug (including the caller ID) to stderr, so it gets a null
stream; pyst2 does not escape quotes (we quote ourselves) and raises on an inline
``HANGUP`` or a closed pipe (we exit). With ``--recording-done`` the script is
MixMonitor's post-process hook instead (``recording_done``). Bearer token: env
``AIGW_API_TOKEN``, or the file named by ``AIGW_API_TOKEN_FILE`` (default
``/etc/audiosocket-gw/agi-token`` when readable). Standard library + pyst2 only, so
start-up stays short.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9094/v1/route"
DEFAULT_TIMEOUT = 1.5
DEFAULT_TOKEN_FILE = "/etc/audiosocket-gw/agi-token"
MAX_RESPONSE = 8192

VARIABLES = (
    "AIGW_CALL_ID",
    "AIGW_AUDIOSOCKET",
    "AIGW_AUDIOSOCKET_ALT",
    "AIGW_TENANT",
    "AIGW_AGENT",
    "AIGW_RECORD",
    "AIGW_RECORDING_FILE",
    "AIGW_FALLBACK",
    "AIGW_STATUS",  # last: "ok" is only visible once everything else is set
)
STATUSES = ("ok", "busy", "unknown", "unavailable")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HOSTPORT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})")
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WAV = re.compile(r"/[A-Za-z0-9_./-]{1,250}\.wav")
_DIAL = re.compile(r"[A-Za-z0-9]{1,16}/[A-Za-z0-9@_.+:/-]{1,200}")
_FIELD_LIMITS = {"did": 64, "caller": 128, "uniqueid": 64, "channel": 256}


class Unavailable(Exception):
    """The gateway did not give a usable answer; the message says why (no caller data)."""


class _Deadline(Exception):
    """Raised by the SIGALRM handler when the total time budget is spent."""


# -- pure helpers --------------------------------------------------------------------


def quote(value: str) -> str:
    """``value`` as one quoted AGI argument (``\\`` and ``"`` escaped).

    Asterisk consumes the quotes and escapes (docs/PROTOCOLS.md §3.3). Values reaching here
    are already validated, so this is defence in depth; control characters, which
    would end the command line, are refused outright.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("control character in an AGI argument")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _safe_path(p: str) -> bool:
    return bool(_WAV.fullmatch(p)) and ".." not in p.split("/") and "//" not in p


def _hostport_ok(v: str) -> bool:
    m = _HOSTPORT.fullmatch(v)
    return m is not None and 1 <= int(m.group(1)) <= 65535


_LOOPBACK_HOSTS = ("localhost", "::1")
DEFAULT_RECORDING_DIR = "/var/spool/asterisk/monitor"
DEFAULT_FALLBACK_TECHS = ("PJSIP", "SIP", "IAX2", "DAHDI")


def _host_of(hostport: str) -> str:
    host = hostport.rpartition(":")[0]
    return host[1:-1].lower() if host.startswith("[") else host.lower()


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or bool(re.fullmatch(r"127(?:\.\d{1,3}){3}", host))


def audiosocket_allowed(address: str, route_url: str, env: Mapping[str, str]) -> bool:
    """The AudioSocket address is the gateway's: the route URL's host (any loopback
    address when that is loopback), or a host / host:port listed in
    ``AIGW_AUDIOSOCKET_ALLOW`` (comma-separated; other gateway nodes)."""
    if not _hostport_ok(address):
        return False
    host = _host_of(address)
    allow = {a.strip().lower() for a in env.get("AIGW_AUDIOSOCKET_ALLOW", "").split(",")
             if a.strip()}
    if address.lower() in allow or host in allow or f"[{host}]" in allow:
        return True
    m = re.match(r"https?://(\[[^\]]+\]|[^/:]+)", route_url)
    route_host = (m.group(1).strip("[]").lower() if m else "")
    if _is_loopback(route_host):
        return _is_loopback(host)
    return host == route_host


MAX_ALTERNATES = 8


def alternates(value: str, primary: str, route_url: str, env: Mapping[str, str]) -> str:
    """``AIGW_AUDIOSOCKET_ALT`` checked: the ``&``-separated fallback gateway addresses
    that pass ``audiosocket_allowed`` (others dropped), without the primary or
    repeats, at most ``MAX_ALTERNATES``; "" when none is left."""
    out: list[str] = []
    for addr in value.split("&")[: MAX_ALTERNATES * 2]:
        if addr and addr != primary and addr not in out and \
                audiosocket_allowed(addr, route_url, env):
            out.append(addr)
    return "&".join(out[:MAX_ALTERNATES])


def recording_file_ok(path: str, call_id: str, env: Mapping[str, str]) -> bool:
    """Exactly ``<AIGW_MIXMONITOR_DIR>/<tenant>/<call id>.wav`` (the gateway's layout)."""
    root = (env.get("AIGW_MIXMONITOR_DIR") or DEFAULT_RECORDING_DIR).rstrip("/")
    if not _safe_path(path) or not path.startswith(root + "/"):
        return False
    tenant, sep, name = path[len(root) + 1:].partition("/")
    return bool(sep) and bool(_ID.fullmatch(tenant)) and tenant[0] not in "._-" \
        and name == f"{call_id}.wav"


def dial_ok(dial: str, env: Mapping[str, str]) -> bool:
    """A plain dial string of an allowed technology (``AIGW_FALLBACK_TECHS``, default
    PJSIP, SIP, IAX2, DAHDI): never ``Local/`` (it would enter any dialplan context)."""
    if not _DIAL.fullmatch(dial):
        return False
    techs = [t.strip().upper() for t in env.get("AIGW_FALLBACK_TECHS", "").split(",")
             if t.strip()] or list(DEFAULT_FALLBACK_TECHS)
    tech = dial.split("/", 1)[0].upper()
    return tech in techs and tech != "LOCAL"


def validate(answer: object, *, route_url: str = DEFAULT_URL,
             env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The gateway's JSON answer -> the nine variables to set, all validated.

    Raises ``Unavailable`` when the answer is malformed or an ``ok`` answer lacks a
    valid call id or AudioSocket address (one of the gateway's: ``audiosocket_allowed``).
    Optional values that fail are emptied: a fallback that is not a plain dial string
    of an allowed technology, a recording file outside ``AIGW_MIXMONITOR_DIR`` or not
    named after the call.
    """
    env = os.environ if env is None else env
    if not isinstance(answer, dict):
        raise Unavailable("answer is not a JSON object")
    raw = answer.get("variables")
    if not isinstance(raw, dict):
        raise Unavailable("answer has no variables")
    got: dict[str, str] = {k: v for k, v in raw.items() if isinstance(v, str)}
    status = got.get("AIGW_STATUS", "")
    if status not in ("ok", "busy", "unknown"):
        raise Unavailable("answer has an invalid status")
    out = dict.fromkeys(VARIABLES, "")
    out["AIGW_STATUS"] = status
    for key in ("AIGW_TENANT", "AIGW_AGENT"):
        if _ID.fullmatch(got.get(key, "")):
            out[key] = got[key]
    if dial_ok(got.get("AIGW_FALLBACK", ""), env):
        out["AIGW_FALLBACK"] = got["AIGW_FALLBACK"]
    out["AIGW_RECORD"] = "1" if got.get("AIGW_RECORD") == "1" else "0"
    if status == "ok":
        call_id = got.get("AIGW_CALL_ID", "")
        address = got.get("AIGW_AUDIOSOCKET", "")
        if not _UUID.fullmatch(call_id):
            raise Unavailable("ok answer without a valid call id")
        if not audiosocket_allowed(address, route_url, env):
            raise Unavailable("ok answer without a valid AudioSocket address of the gateway")
        out["AIGW_CALL_ID"] = call_id
        out["AIGW_AUDIOSOCKET"] = address
        out["AIGW_AUDIOSOCKET_ALT"] = alternates(got.get("AIGW_AUDIOSOCKET_ALT", ""),
                                                 address, route_url, env)
        rec_file = got.get("AIGW_RECORDING_FILE", "")
        if out["AIGW_RECORD"] == "1":
            if recording_file_ok(rec_file, call_id, env):
                out["AIGW_RECORDING_FILE"] = rec_file
            else:
                out["AIGW_RECORD"] = "0"  # never record to a path we did not check
    else:
        out["AIGW_RECORD"] = "0"
    return out


def unavailable() -> dict[str, str]:
    """The variables for "gateway did not answer"."""
    out = dict.fromkeys(VARIABLES, "")
    out["AIGW_RECORD"] = "0"
    out["AIGW_STATUS"] = "unavailable"
    return out


def _clean(s: str, limit: int) -> str:
    return "".join(c for c in s if c.isprintable())[:limit]


def request_body(env: Mapping[str, str]) -> bytes:
    """The ``/v1/route`` JSON body from the AGI environment (bounded, printable)."""
    did = env.get("agi_extension", "")
    if did in ("", "s", "i", "t", "h"):
        did = env.get("agi_dnid", "")
    caller = env.get("agi_callerid", "")
    if caller == "unknown":
        caller = ""
    fields = {
        "did": did,
        "caller": caller,
        "uniqueid": env.get("agi_uniqueid", ""),
        "channel": env.get("agi_channel", ""),
    }
    return json.dumps(
        {k: _clean(v, _FIELD_LIMITS[k]) for k, v in fields.items()}
    ).encode()


def _token(env: Mapping[str, str]) -> str:
    tok = env.get("AIGW_API_TOKEN", "")
    if tok:
        return tok.strip()
    path = env.get("AIGW_API_TOKEN_FILE", DEFAULT_TOKEN_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096).strip()
    except OSError:
        return ""


# -- I/O -----------------------------------------------------------------------------


def ask_gateway(url: str, body: bytes, token: str, timeout: float) -> Any:
    """POST ``body`` to ``url``; the decoded JSON answer. ``Unavailable`` otherwise.

    ``timeout`` bounds the whole exchange (connect, send, a slow trickle of bytes),
    enforced with SIGALRM on top of the socket timeout.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unavailable("route URL must be http(s)://host[:port]/path")
    conn_cls: type[http.client.HTTPConnection] = http.client.HTTPConnection
    if parts.scheme == "https":
        conn_cls = http.client.HTTPSConnection
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def on_alarm(signum: int, frame: object) -> None:
        raise _Deadline()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE + 1)
        finally:
            conn.close()
    except _Deadline:
        raise Unavailable(f"no answer within {timeout:.1f} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"request failed: {type(exc).__name__}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if resp.status != 200:
        raise Unavailable(f"gateway answered HTTP {resp.status}")
    if len(data) > MAX_RESPONSE:
        raise Unavailable("answer too large")
    try:
        return json.loads(data)
    except ValueError:
        raise Unavailable("answer is not JSON") from None


def _exit_now(signum: int, frame: object) -> None:
    # The caller hung up: Asterisk keeps the channel until we exit (docs/PROTOCOLS.md §3.2).
    os._exit(0)


def _log(msg: str) -> None:
    try:
        sys.stderr.write(f"aigw_route: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def recording_done(call_id: str, base_url: str) -> int:
    """MixMonitor's post-process hook: tell the gateway the WAV of ``call_id`` is closed.

    Run by Asterisk as ``aigw_route.py --recording-done <call id> [<gateway base URL>]``
    (not as an AGI): the dialplan writes ``^{AIGW_CALL_ID}`` so the id is expanded
    when MixMonitor starts (docs/PROTOCOLS.md §5.3). Sends the same bearer token as the
    route request, which is why this is not a bare ``curl``.
    """
    if not _UUID.fullmatch(call_id):
        _log("recording-done: invalid call id")
        return 2
    base = (base_url or os.environ.get("AIGW_HTTP_URL") or "http://127.0.0.1:9094").rstrip("/")
    url = f"{base}/v1/recordings/mixmonitor-done?call_id={call_id}"
    try:
        ask_gateway(url, b"", _token(os.environ), 10.0)
    except Unavailable as exc:
        _log(f"recording-done {call_id}: {exc}")
        return 1
    return 0


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--recording-done":
        return recording_done(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    signal.signal(signal.SIGHUP, _exit_now)
    from asterisk.agi import AGI  # pyst2

    # Asterisk may pass any bytes in caller ID names: decode leniently, and split
    # lines on "\n" only (a "\r" in a value must not start a new line).
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace",
                              newline="\n", write_through=True)
    devnull = open(os.devnull, "w")  # pyst2's debug output would log caller IDs
    try:
        agi = AGI(stdin=stdin, stdout=stdout, stderr=devnull)
    except (ValueError, OSError):
        return 0
    # pyst2 installed its own (flag-only) SIGHUP handler: put ours back, and honour a
    # SIGHUP that arrived while the environment was being read.
    signal.signal(signal.SIGHUP, _exit_now)
    if agi._got_sighup:
        return 0
    env: dict[str, str] = dict(agi.env)
    url = env.get("agi_arg_1") or os.environ.get("AIGW_ROUTE_URL") or DEFAULT_URL
    try:
        timeout = float(os.environ.get("AIGW_ROUTE_TIMEOUT") or DEFAULT_TIMEOUT)
        if not 0 < timeout <= 30:
            raise ValueError
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    try:
        variables = validate(ask_gateway(url, request_body(env), _token(os.environ), timeout),
                             route_url=url)
    except Unavailable as exc:
        _log(f"gateway unavailable ({exc}); uniqueid {_clean(env.get('agi_uniqueid', ''), 64)}")
        variables = unavailable()
    try:
        for name in VARIABLES:
            agi.execute("SET VARIABLE", name, quote(variables[name]))
    except Exception as exc:  # pyst2: AGIHangup, AGIError, ValueError on "HANGUP", EPIPE
        _log(f"stopped: {type(exc).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
