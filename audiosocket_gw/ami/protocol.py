"""Asterisk Manager Interface (AMI) codec, sans-I/O.

AMI (docs/PROTOCOLS.md §2.1) is a line protocol on TCP 5038. On connect
Asterisk sends one banner line (``Asterisk Call Manager/11.0.0``, *not* followed by
a blank line); after that every message is ``Key: Value`` lines ended by an empty
line. Keys are case-insensitive and may repeat (``Variable``, ``ChanVariable``,
``Output``). Asterisk writes CRLF but also accepts bare LF, and so do we.

Why our own codec instead of panoramisk's parser: panoramisk decodes each TCP chunk
on its own (a UTF-8 character split across two reads is lost) and its ``Message``
returns ``''`` for a missing key. This module buffers raw bytes, decodes whole lines
only, keeps every header in order, and returns ``None`` for what is not there. It
does no I/O, keeps no clock and logs nothing: the asyncio client feeds it bytes and
writes the bytes :func:`encode_action` returns.

Parsing rules (``AmiParser``):

* A value is everything after the first ``:`` minus exactly one separating space,
  so ``AccountCode: `` gives ``''`` and the padded ``Value:   minrxlost=...`` of
  ``RTPAUDIOQOSLOSS`` keeps its padding. Keys are stripped.
* Undecodable bytes are replaced (U+FFFD), never fatal.
* A line without a usable ``Key:`` is garbage: counted in ``garbage_lines`` and
  skipped, never fatal. Exception: the raw body of a legacy ``Response: Follows``
  Command reply is kept as ``Output`` headers up to ``--END COMMAND--``.
* Extra blank lines between messages are ignored.

Errors
------
``AmiError`` is the root of the family.

* ``AmiProtocolError``: *the peer* sent something we refuse to buffer (a line longer
  than ``max_line`` bytes, more than ``max_headers`` headers in one message). The
  parser is unusable afterwards (every later ``feed`` raises again); the client's
  one action is: log, count, close the connection and reconnect.
* ``AmiUsageError``: *we* misused the API, for example a CR, LF or NUL in an action
  key or value (header injection is impossible by construction), an empty action
  name, a line Asterisk would truncate, or ``Action``/``ActionID`` passed as a field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, overload

__all__ = [
    "AMI_MAX_ACTION_HEADERS",
    "AMI_MAX_ACTION_LINE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_LINE",
    "AmiError",
    "AmiMessage",
    "AmiParser",
    "AmiProtocolError",
    "AmiUsageError",
    "c_unescape",
    "encode_action",
]

# Limits for what we accept from the peer.
DEFAULT_MAX_LINE: Final = 8192
"""Longest line (bytes, without the line end) accepted from Asterisk."""
DEFAULT_MAX_HEADERS: Final = 512
"""Most headers accepted in one message."""

# Limits of what Asterisk accepts from us (manager.c: 1024-byte input buffer,
# AST_MAX_MANHEADERS = 128). Beyond them Asterisk truncates or drops silently.
AMI_MAX_ACTION_LINE: Final = 1024
"""Longest action line we send, in bytes, CRLF included."""
AMI_MAX_ACTION_HEADERS: Final = 128
"""Most headers (``Action`` and ``ActionID`` included) in one action we send."""

_END_COMMAND: Final = "--END COMMAND--"
_BANNER_RE: Final = re.compile(r"^(?P<name>[^:]*Call Manager[^:/]*)/(?P<version>\S+)\s*$")
_HEADER_KEY_RE: Final = re.compile(r"^[^\s:]+$")
_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_.\-()]+$")
_FORBIDDEN_CHARS: Final = ("\r", "\n", "\x00")


class AmiError(Exception):
    """Root of the AMI codec errors."""


class AmiProtocolError(AmiError):
    """The peer sent something we cannot parse; the connection must be closed."""


class AmiUsageError(AmiError):
    """We misused the API (for example a CR/LF/NUL in an action value)."""


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI message: its headers, in wire order, keys as sent.

    Lookups are case-insensitive. A message is an event when it has an ``Event``
    header (an ``OriginateResponse`` event also carries ``Response``), a response
    when it has ``Response`` and no ``Event``.
    """

    headers: tuple[tuple[str, str], ...]

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str) -> str: ...

    @overload
    def get(self, key: str, default: None) -> str | None: ...

    def get(self, key: str, default: str | None = None) -> str | None:
        """First value of ``key`` (case-insensitive), else ``default``."""
        wanted = key.lower()
        for name, value in self.headers:
            if name.lower() == wanted:
                return value
        return default

    def getall(self, key: str) -> list[str]:
        """Every value of ``key`` (case-insensitive), in wire order."""
        wanted = key.lower()
        return [value for name, value in self.headers if name.lower() == wanted]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    @property
    def event(self) -> str | None:
        """The ``Event`` name, or ``None`` for a response."""
        return self.get("Event")

    @property
    def response(self) -> str | None:
        """The ``Response`` value (``Success``, ``Error``, ``Follows``...)."""
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        """The echoed ``ActionID``, if any."""
        return self.get("ActionID")

    @property
    def is_event(self) -> bool:
        return self.event is not None

    @property
    def is_response(self) -> bool:
        return self.event is None and self.response is not None

    def variables(self) -> dict[str, str]:
        """``k=v`` pairs of the ``ChanVariable:`` and ``Variable:`` lines.

        Values without ``=`` (the ``Variable: NAME`` of a ``VarSet`` event) are not
        pairs and are skipped; a later repeat of a name wins.
        """
        out: dict[str, str] = {}
        for name, value in self.headers:
            if name.lower() not in ("chanvariable", "variable"):
                continue
            var, sep, val = value.partition("=")
            var = var.strip()
            if sep and var:
                out[var] = val
        return out

    def to_dict(self) -> dict[str, str]:
        """Headers as a dict, first value per key (like :meth:`get`), key as first sent.

        Repeated keys keep only their first value here: use :meth:`getall` for them.
        """
        out: dict[str, str] = {}
        seen: set[str] = set()
        for name, value in self.headers:
            low = name.lower()
            if low not in seen:
                seen.add(low)
                out[name] = value
        return out


class AmiParser:
    """Incremental AMI parser: ``feed(bytes) -> list[AmiMessage]``.

    Accepts any split of the stream (one byte at a time included), CRLF or LF.
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        if max_line < 1 or max_headers < 1:
            raise AmiUsageError("max_line and max_headers must be positive")
        self._max_line = max_line
        self._max_headers = max_headers
        self._buf = bytearray()
        self._scan_from = 0
        self._headers: list[tuple[str, str]] = []
        self._first_line = True
        self._follows_body = False
        self._failed: str | None = None
        self.banner: str | None = None
        """The banner line (``Asterisk Call Manager/11.0.0``), once seen."""
        self.version: str | None = None
        """The AMI version from the banner (``11.0.0``), once seen."""
        self.garbage_lines = 0
        """Lines skipped because they were not ``Key: Value``."""

    @property
    def buffered(self) -> int:
        """Bytes held: a partial line plus the headers of a partial message count."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[AmiMessage]:
        """Consume ``data``; return the messages it completed, in order."""
        if self._failed is not None:
            raise AmiProtocolError(f"parser failed earlier: {self._failed}")
        self._buf += data
        out: list[AmiMessage] = []
        start = 0
        buf = self._buf
        while True:
            nl = buf.find(b"\n", max(start, self._scan_from))
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            if end - start > self._max_line:
                self._fail(f"line longer than {self._max_line} bytes")
            line = bytes(buf[start:end]).decode("utf-8", errors="replace")
            start = nl + 1
            self._scan_from = start
            msg = self._line(line)
            if msg is not None:
                out.append(msg)
        if start:
            del buf[:start]
        self._scan_from = len(buf)
        # A partial line may hold a trailing CR: allow it one extra byte.
        if len(buf) > self._max_line + 1:
            self._fail(f"line longer than {self._max_line} bytes")
        return out

    def _fail(self, reason: str) -> None:
        self._failed = reason
        raise AmiProtocolError(reason)

    def _line(self, line: str) -> AmiMessage | None:
        if self._first_line:
            self._first_line = False
            m = _BANNER_RE.match(line)
            if m is not None:
                self.banner = line.rstrip()
                self.version = m.group("version")
                return None
        if line == "":
            return self._finish()
        if self._follows_body:
            if line.rstrip() == _END_COMMAND:
                self._follows_body = False
            else:
                self._add("Output", line)
            return None
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and _HEADER_KEY_RE.match(key):
            self._add(key, value[1:] if value.startswith(" ") else value)
            return None
        if self._is_follows():
            # Legacy ``Response: Follows`` Command reply: raw text lines.
            if line.rstrip() != _END_COMMAND:
                self._follows_body = True
                self._add("Output", line)
            return None
        self.garbage_lines += 1
        return None

    def _add(self, key: str, value: str) -> None:
        if len(self._headers) >= self._max_headers:
            self._fail(f"more than {self._max_headers} headers in one message")
        self._headers.append((key, value))

    def _is_follows(self) -> bool:
        return bool(self._headers) and (
            self._headers[0][0].lower() == "response"
            and self._headers[0][1].strip().lower() == "follows"
        )

    def _finish(self) -> AmiMessage | None:
        self._follows_body = False
        if not self._headers:
            return None
        msg = AmiMessage(tuple(self._headers))
        self._headers = []
        return msg


def _check_text(what: str, text: str) -> None:
    if not isinstance(text, str):
        raise AmiUsageError(f"{what} must be str, not {type(text).__name__}")
    for ch in _FORBIDDEN_CHARS:
        if ch in text:
            raise AmiUsageError(f"{what} contains a forbidden character {ch!r}: {text!r}")


def _check_key(key: str) -> None:
    _check_text("field name", key)
    if not _KEY_RE.match(key):
        raise AmiUsageError(f"invalid field name {key!r}")


def _iter_fields(
    fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]],
) -> Iterable[tuple[str, str]]:
    if isinstance(fields, Mapping):
        for key, value in fields.items():
            if isinstance(value, str):
                yield key, value
            elif isinstance(value, Sequence):
                for item in value:
                    yield key, item
            else:
                raise AmiUsageError(f"value of {key!r} must be str or a sequence of str")
    else:
        for pair in fields:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise AmiUsageError(f"fields must be (key, value) pairs, got {pair!r}")
            yield pair


def encode_action(
    action: str,
    fields: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] = (),
    action_id: str | None = None,
) -> bytes:
    """Encode one action: ``Action``, then ``ActionID``, then ``fields``, CRLF, blank line.

    A list value repeats its key (``{"Variable": ["a=1", "b=2"]}``). Raises
    :class:`AmiUsageError` for CR/LF/NUL anywhere, a bad or reserved field name, an
    empty action, a line over ``AMI_MAX_ACTION_LINE`` bytes or more than
    ``AMI_MAX_ACTION_HEADERS`` headers.
    """
    _check_text("action", action)
    if not action or not _KEY_RE.match(action):
        raise AmiUsageError(f"invalid action name {action!r}")
    lines: list[tuple[str, str]] = [("Action", action)]
    if action_id is not None:
        _check_text("action_id", action_id)
        if not action_id:
            raise AmiUsageError("action_id must not be empty")
        lines.append(("ActionID", action_id))
    for key, value in _iter_fields(fields):
        _check_key(key)
        if key.lower() in ("action", "actionid"):
            raise AmiUsageError(f"{key!r} is reserved: use the action/action_id arguments")
        _check_text(f"value of {key!r}", value)
        lines.append((key, value))
    if len(lines) > AMI_MAX_ACTION_HEADERS:
        raise AmiUsageError(f"more than {AMI_MAX_ACTION_HEADERS} headers in one action")
    out = bytearray()
    for key, value in lines:
        try:
            raw = f"{key}: {value}\r\n".encode()
        except UnicodeEncodeError as exc:
            raise AmiUsageError(f"value of {key!r} is not encodable as UTF-8") from exc
        if len(raw) > AMI_MAX_ACTION_LINE:
            raise AmiUsageError(
                f"line for {key!r} is {len(raw)} bytes, Asterisk accepts {AMI_MAX_ACTION_LINE}"
            )
        out += raw
    out += b"\r\n"
    return bytes(out)


_C_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


def c_unescape(value: str) -> str:
    """Undo Asterisk's ``ast_escape_c`` (VarSet ``Value``, snapshot ``CallerIDName``).

    ``he said \\"hi\\"`` -> ``he said "hi"``, ``back\\\\slash`` -> ``back\\slash``.
    An unknown escape or a trailing lone backslash is kept as is.
    """
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\" and i + 1 < n and value[i + 1] in _C_ESCAPES:
            out.append(_C_ESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def audiosocket_call_id(application: str | None, app_data: str | None) -> str | None:
    """The AudioSocket UUID (our call id) named by a dialplan step, if any.

    Handles ``AudioSocket`` (``AppData: <uuid>,<host:port>``), the same run inside
    ``TryExec`` (``AppData: AudioSocket(<uuid>,<host:port>)``, how our dialplan runs it
    so a dead gateway leads to the fallback) and the channel driver in ``Dial``
    (``AudioSocket/<host:port>/<uuid>[/c(...)]``). Only a well-formed UUID is returned.
    """
    app = (application or "").strip().lower()
    data = (app_data or "").strip()
    if app == "tryexec":
        inner = data
        if inner.lower().startswith("audiosocket(") and inner.endswith(")"):
            app, data = "audiosocket", inner[len("audiosocket(") : -1]
        else:
            return None
    candidate: str | None = None
    if app == "audiosocket":
        candidate = data.split(",", 1)[0].strip()
    elif app == "dial":
        for target in data.split(",", 1)[0].split("&"):
            tech, _, rest = target.strip().partition("/")
            if tech.lower() == "audiosocket":
                parts = rest.split("/")
                if len(parts) >= 2:
                    candidate = parts[1].strip()
                    break
    if candidate and _UUID_RE.match(candidate):
        return candidate.lower()
    return None
