"""A fake Twilio Media Streams AI app: a strict WebSocket server for tests and demos.

Why: the gateway's promise is that an existing Media Streams app runs unchanged behind
Asterisk. This server behaves like a typical such app (greets with TTS audio followed by a
mark, optionally echoes the caller, barges in with ``clear`` on DTMF, hangs up on a timer)
and validates every frame it receives the way a strict app would, recording each deviation
from Twilio's behaviour (PROTOCOLS.md 8) in :attr:`AppSession.violations`. A test passes
the gateway through it and asserts ``violations == []``.

How: :class:`StreamValidator` is the pure checker (one instance per connection);
:class:`FakeTwilioApp` is a ``websockets`` asyncio server that records one
:class:`AppSession` per connection: every received event with its arrival time
(:func:`time.monotonic`), the mark echoes, the DTMF digits, the decoded inbound audio and
every message the app sent. :meth:`FakeTwilioApp.wait_for` lets tests await a condition
without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..dsp.g711 import ulaw_encode
from ..twilio.ids import ACCOUNT_PREFIX, CALL_PREFIX, STREAM_PREFIX, is_sid
from ..twilio.streams import DTMF_DIGITS, MEDIA_FORMAT

__all__ = [
    "FRAME_BYTES",
    "GREETING_MARK",
    "AppSession",
    "FakeTwilioApp",
    "ReceivedEvent",
    "StreamValidator",
    "tone_ulaw",
]

FRAME_BYTES: Final = 160
"""Bytes of mu-law in one 20 ms Twilio media frame."""

GREETING_MARK: Final = "greeting-end"
"""Name of the mark the fake app sends after its greeting audio."""

_RATE: Final = 8000
_HANGUP_TASK: Final = "fakeapp-hangup"


def tone_ulaw(ms: int, freq_hz: float = 440.0, amplitude: float = 0.3) -> bytes:
    """Return ``ms`` milliseconds of a sine tone as 8 kHz mu-law (8 bytes per ms)."""
    n = np.arange(ms * _RATE // 1000, dtype=np.float64)
    pcm = np.round(amplitude * 32767.0 * np.sin(2.0 * math.pi * freq_hz * n / _RATE))
    return ulaw_encode(pcm.astype("<i2").tobytes())


def _is_count(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StreamValidator:
    """Checks the Twilio -> app event sequence of one stream, like a strict app would.

    Feed every parsed event in arrival order to :meth:`feed`; it returns the violations
    that event causes (empty if none). Call :meth:`expect_mark` for each mark the app sends
    so that echoes can be checked (Twilio echoes marks in the order they were sent).
    """

    def __init__(self) -> None:
        """Start in the "nothing received" state."""
        self.state = "new"
        """One of ``new``, ``connected``, ``started``, ``stopped``."""
        self.count = 0
        self.sequence = 0
        self.chunk = 0
        self.next_timestamp: int | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.account_sid: str | None = None
        self.pending_marks: deque[str] = deque()

    def expect_mark(self, name: str) -> None:
        """Record that the app sent mark ``name``: an echo of it is now expected."""
        self.pending_marks.append(name)

    def feed(self, msg: Mapping[str, Any]) -> list[str]:
        """Check one received event; return its violations."""
        self.count += 1
        out: list[str] = []
        event = msg.get("event")
        prefix = f"#{self.count} {event if isinstance(event, str) else '?'}"

        def bad(text: str) -> None:
            out.append(f"{prefix}: {text}")

        if not isinstance(event, str):
            bad("missing or non-string 'event'")
            return out
        if self.state == "new":
            if event != "connected":
                bad("first event is not 'connected'")
                self.state = "connected"  # report it once, then judge this event normally
            else:
                self.state = "connected"
                if msg.get("protocol") != "Call" or msg.get("version") != "1.0.0":
                    bad("connected must carry protocol 'Call' and version '1.0.0'")
                if "sequenceNumber" in msg or "streamSid" in msg:
                    bad("connected must carry neither sequenceNumber nor streamSid")
                return out
        elif event == "connected":
            bad("connected sent again")
            return out
        if self.state == "stopped":
            bad("event after stop")
        elif self.state != "started" and event != "start":
            bad("event before start")

        seq = msg.get("sequenceNumber")
        if not _is_count(seq):
            bad(f"sequenceNumber must be a decimal string, got {seq!r}")
        else:
            assert isinstance(seq, str)
            if int(seq) != self.sequence + 1:
                bad(f"sequenceNumber {seq} does not follow {self.sequence}")
            self.sequence = int(seq)

        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            bad("missing streamSid")
        elif self.stream_sid is not None and sid != self.stream_sid:
            bad(f"streamSid {sid!r} differs from start's {self.stream_sid!r}")

        check = getattr(self, f"_check_{event}", None)
        if check is None:
            bad("unknown event kind")
        else:
            body = msg.get(event)
            if not isinstance(body, dict):
                bad(f"missing {event!r} object")
            else:
                check(msg, body, bad)
        return out

    def _check_start(self, msg: Mapping[str, Any], body: dict[str, Any], bad: _Bad) -> None:
        if self.state in ("started", "stopped"):
            bad("start sent again")
            return
        self.state = "started"
        if msg.get("sequenceNumber") != "1":
            bad("start must have sequenceNumber '1'")
        if not is_sid(ACCOUNT_PREFIX, body.get("accountSid")):
            bad(f"start.accountSid is not an AC sid: {body.get('accountSid')!r}")
        if not is_sid(CALL_PREFIX, body.get("callSid")):
            bad(f"start.callSid is not a CA sid: {body.get('callSid')!r}")
        if not is_sid(STREAM_PREFIX, body.get("streamSid")):
            bad(f"start.streamSid is not an MZ sid: {body.get('streamSid')!r}")
        if body.get("streamSid") != msg.get("streamSid"):
            bad("start.streamSid differs from the message's streamSid")
        self.stream_sid = body.get("streamSid")
        self.call_sid = body.get("callSid")
        self.account_sid = body.get("accountSid")
        if body.get("tracks") != ["inbound"]:
            bad(f"start.tracks must be ['inbound'], got {body.get('tracks')!r}")
        params = body.get("customParameters")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            bad(f"start.customParameters must be an object of strings, got {params!r}")
        fmt = body.get("mediaFormat")
        if (
            not isinstance(fmt, dict)
            or fmt != dict(MEDIA_FORMAT)
            or not _is_int(fmt["sampleRate"])
            or not _is_int(fmt["channels"])
        ):
            bad(f"start.mediaFormat must be {dict(MEDIA_FORMAT)}, got {fmt!r}")

    def _check_media(self, msg: Mapping[str, Any], body: dict[str, Any], bad: _Bad) -> None:
        if body.get("track") != "inbound":
            bad(f"media.track must be 'inbound', got {body.get('track')!r}")
        chunk = body.get("chunk")
        if not _is_count(chunk):
            bad(f"media.chunk must be a decimal string, got {chunk!r}")
        else:
            assert isinstance(chunk, str)
            if int(chunk) != self.chunk + 1:
                bad(f"media.chunk {chunk} does not follow {self.chunk}")
            self.chunk = int(chunk)
        payload = body.get("payload")
        size: int | None = None
        if not isinstance(payload, str):
            bad("media.payload missing or not a string")
        else:
            try:
                size = len(base64.b64decode(payload, validate=True))
            except (binascii.Error, ValueError):
                bad("media.payload is not valid base64")
            else:
                if size != FRAME_BYTES:
                    bad(f"media.payload is {size} bytes, expected {FRAME_BYTES}")
        stamp = body.get("timestamp")
        if not _is_count(stamp):
            bad(f"media.timestamp must be a decimal string, got {stamp!r}")
            self.next_timestamp = None
            return
        assert isinstance(stamp, str)
        if self.next_timestamp is not None and int(stamp) != self.next_timestamp:
            bad(f"media.timestamp {stamp} but {self.next_timestamp} expected from audio sent")
        self.next_timestamp = None if size is None else int(stamp) + size // 8

    def _check_dtmf(self, msg: Mapping[str, Any], body: dict[str, Any], bad: _Bad) -> None:
        if body.get("track") != "inbound_track":
            bad(f"dtmf.track must be 'inbound_track', got {body.get('track')!r}")
        digit = body.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            bad(f"dtmf.digit is not a DTMF digit: {digit!r}")

    def _check_mark(self, msg: Mapping[str, Any], body: dict[str, Any], bad: _Bad) -> None:
        name = body.get("name")
        if not isinstance(name, str):
            bad(f"mark.name must be a string, got {name!r}")
        elif not self.pending_marks or name not in self.pending_marks:
            bad(f"mark {name!r} echoed but never sent (or echoed twice)")
        else:
            if self.pending_marks[0] != name:
                bad(f"mark {name!r} echoed before {self.pending_marks[0]!r}")
            self.pending_marks.remove(name)

    def _check_stop(self, msg: Mapping[str, Any], body: dict[str, Any], bad: _Bad) -> None:
        if self.state == "started":
            self.state = "stopped"
        if body.get("accountSid") != self.account_sid or body.get("callSid") != self.call_sid:
            bad("stop.accountSid/callSid differ from start's")


_Bad = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One event received by the fake app: ``at`` is its :func:`time.monotonic` arrival."""

    at: float
    event: dict[str, Any]

    @property
    def kind(self) -> str:
        """The event's ``event`` field (``"?"`` if missing)."""
        kind = self.event.get("event")
        return kind if isinstance(kind, str) else "?"


@dataclass(eq=False)
class AppSession:
    """Everything one WebSocket connection to the fake app saw and did."""

    path: str
    """Request path of the WebSocket handshake."""
    headers: dict[str, str]
    """Handshake request headers, names lower-cased."""
    events: list[ReceivedEvent] = field(default_factory=list)
    """Every parsed JSON event received, in order."""
    violations: list[str] = field(default_factory=list)
    """Every deviation from Twilio's behaviour seen on this connection."""
    marks_echoed: list[str] = field(default_factory=list)
    """Names of the marks the gateway echoed back, in order."""
    dtmf: list[str] = field(default_factory=list)
    """DTMF digits received, in order."""
    inbound_audio: bytearray = field(default_factory=bytearray)
    """Concatenated decoded mu-law of every inbound media event."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every message the fake app sent, in order."""
    stream_sid: str | None = None
    call_sid: str | None = None
    account_sid: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    hung_up: bool = False
    """True if the app closed the socket (``hangup_after_ms``)."""
    close_code: int | None = None
    """WebSocket close code once the connection is over."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the connection is over."""
    validator: StreamValidator = field(default_factory=StreamValidator)

    def kinds(self) -> list[str]:
        """The ``event`` field of every received event, in order."""
        return [e.kind for e in self.events]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The received events whose ``event`` is ``kind``."""
        return [e.event for e in self.events if e.kind == kind]

    def sent_audio(self) -> bytes:
        """Concatenated decoded mu-law of every media message the app sent."""
        return b"".join(
            base64.b64decode(m["media"]["payload"]) for m in self.sent if m["event"] == "media"
        )


class FakeTwilioApp:
    """A WebSocket server behaving like a typical Twilio Media Streams AI app.

    Behaviour (all off by default, so the app is a silent recorder):

    * ``greeting_ms``: on ``start``, send that much tone as ``media`` messages of
      ``greeting_chunk_bytes`` bytes each (the last may be shorter), then a mark named
      :data:`GREETING_MARK`;
    * ``echo``: send every inbound media payload straight back;
    * ``clear_on_dtmf``: send ``clear`` when a ``dtmf`` event arrives;
    * ``hangup_after_ms``: close the socket that long after ``start``;
    * ``extra_on_start``: raw frames (``str``) or messages (dicts, ``streamSid`` added if
      absent) sent after the greeting, e.g. to test the gateway with odd input.
    """

    def __init__(
        self,
        *,
        greeting_ms: int = 0,
        greeting_chunk_bytes: int = 1000,
        greeting_freq_hz: float = 440.0,
        echo: bool = False,
        clear_on_dtmf: bool = False,
        hangup_after_ms: int | None = None,
        extra_on_start: Iterable[str | Mapping[str, Any]] = (),
        path: str = "/stream",
    ) -> None:
        """Configure the behaviour; nothing listens until :meth:`start`."""
        if greeting_chunk_bytes <= 0:
            raise ValueError("greeting_chunk_bytes must be positive")
        self.greeting_ms = greeting_ms
        self.greeting_chunk_bytes = greeting_chunk_bytes
        self.greeting_freq_hz = greeting_freq_hz
        self.echo = echo
        self.clear_on_dtmf = clear_on_dtmf
        self.hangup_after_ms = hangup_after_ms
        self.extra_on_start = list(extra_on_start)
        self.path = path
        self.sessions: list[AppSession] = []
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start listening on ``host:port`` (port 0: any free port, see :attr:`url`)."""
        if self._server is not None:
            raise RuntimeError("FakeTwilioApp already started")
        self._server = await serve(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        self._host, self._port = host, int(sockname[1])

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    async def __aenter__(self) -> FakeTwilioApp:
        """Start on an ephemeral local port."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the server."""
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port listened on (after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """The stream URL to put in ``<Stream url>``: ``ws://host:port/stream``."""
        return f"ws://{self._host}:{self._port}{self.path}"

    # -- waiting -------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; it is re-checked after every app activity.

        Raises TimeoutError after ``wait_s`` seconds.
        """
        async with asyncio.timeout(wait_s):
            while not predicate():
                await self._changed.wait()

    async def wait_for_session(self, index: int = 0, wait_s: float = 5.0) -> AppSession:
        """Wait until connection number ``index`` (from 0) exists and return its session."""
        await self.wait_for(lambda: len(self.sessions) > index, wait_s)
        return self.sessions[index]

    # -- connection ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        headers = (
            {k.lower(): v for k, v in ws.request.headers.raw_items()}
            if ws.request is not None
            else {}
        )
        session = AppSession(path=path, headers=headers)
        if path.split("?", 1)[0] != self.path:
            session.violations.append(f"connected to path {path!r}, expected {self.path!r}")
        self.sessions.append(session)
        self._notify()
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for frame in ws:
                await self._on_frame(ws, session, frame, tasks)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                if not (task.get_name() == _HANGUP_TASK and session.hung_up):
                    task.cancel()  # but let a hangup in progress finish its close handshake
            await asyncio.gather(*tasks, return_exceptions=True)
            session.close_code = ws.close_code
            session.closed.set()
            self._notify()

    async def _on_frame(
        self,
        ws: ServerConnection,
        session: AppSession,
        frame: str | bytes,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        arrival = time.monotonic()
        if not isinstance(frame, str):
            session.violations.append("received a binary frame (Twilio sends text frames)")
            return
        try:
            msg = json.loads(frame)
        except json.JSONDecodeError:
            session.violations.append(f"received a frame that is not JSON: {frame[:80]!r}")
            return
        if not isinstance(msg, dict):
            session.violations.append(f"received JSON that is not an object: {frame[:80]!r}")
            return
        session.events.append(ReceivedEvent(arrival, msg))
        session.violations.extend(session.validator.feed(msg))
        event = msg.get("event")
        if event == "start":
            self._on_start(ws, session, msg, tasks)
        elif event == "media":
            await self._on_media(ws, session, msg)
        elif event == "dtmf":
            body = msg.get("dtmf")
            digit = body.get("digit") if isinstance(body, dict) else None
            session.dtmf.append(str(digit))
            if self.clear_on_dtmf:
                await self._send(ws, session, {"event": "clear"})
        elif event == "mark":
            body = msg.get("mark")
            name = body.get("name") if isinstance(body, dict) else None
            session.marks_echoed.append(str(name))

    def _on_start(
        self,
        ws: ServerConnection,
        session: AppSession,
        msg: dict[str, Any],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        body = msg.get("start")
        if not isinstance(body, dict):
            return
        session.stream_sid = body.get("streamSid")
        session.call_sid = body.get("callSid")
        session.account_sid = body.get("accountSid")
        params = body.get("customParameters")
        if isinstance(params, dict):
            session.custom_parameters = {str(k): str(v) for k, v in params.items()}
        if self.greeting_ms > 0 or self.extra_on_start:
            self._spawn(tasks, self._greet(ws, session))
        if self.hangup_after_ms is not None:
            hangup = self._hangup_later(ws, session, self.hangup_after_ms)
            self._spawn(tasks, hangup, name=_HANGUP_TASK)

    @staticmethod
    def _spawn(
        tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None], name: str | None = None
    ) -> None:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _on_media(self, ws: ServerConnection, session: AppSession, msg: Any) -> None:
        body = msg.get("media")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, str):
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return
        session.inbound_audio += audio
        if self.echo:
            await self._send(ws, session, {"event": "media", "media": {"payload": payload}})

    async def _send(
        self, ws: ServerConnection, session: AppSession, msg: str | Mapping[str, Any]
    ) -> None:
        if isinstance(msg, str):
            await ws.send(msg)
            return
        full = dict(msg)
        full.setdefault("streamSid", session.stream_sid)
        if full.get("event") == "mark":
            session.validator.expect_mark(str(full["mark"]["name"]))
        session.sent.append(full)
        await ws.send(json.dumps(full))

    async def _greet(self, ws: ServerConnection, session: AppSession) -> None:
        try:
            if self.greeting_ms > 0:
                audio = tone_ulaw(self.greeting_ms, self.greeting_freq_hz)
                step = self.greeting_chunk_bytes
                for i in range(0, len(audio), step):
                    payload = base64.b64encode(audio[i : i + step]).decode("ascii")
                    await self._send(ws, session, {"event": "media", "media": {"payload": payload}})
                await self._send(ws, session, {"event": "mark", "mark": {"name": GREETING_MARK}})
            for extra in self.extra_on_start:
                await self._send(ws, session, extra)
        except ConnectionClosed:
            pass
        self._notify()

    async def _hangup_later(self, ws: ServerConnection, session: AppSession, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        session.hung_up = True
        await ws.close()
