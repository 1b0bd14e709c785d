"""A fake Twilio Media Streams AI app: a strict WebSocket server for tests, demos and bench.

Why: the gateway's promise is that an existing Media Streams app runs unchanged behind
Asterisk. This server behaves like a typical such app (greets with TTS audio followed by a
mark, optionally echoes the caller, barges in with ``clear`` on DTMF, hangs up on a timer)
and validates every frame it receives the way a strict app would, recording each deviation
from Twilio's behaviour (docs/PROTOCOLS.md §8) in :attr:`AppSession.violations`. A test passes
the gateway through it and asserts ``violations == []``.

It can also behave the way the official samples do
(twilio-samples/speech-assistant-openai-realtime-api-python, openai-realtime-twilio-demo),
knowing nothing about the gateway, only the Twilio wire protocol, so tests can check that
what such an app believes (marks echoed, audio played, where it cut) matches what the
caller heard. Each session keeps the samples' state under their names
(``latest_media_timestamp``, ``last_assistant_item``, ``mark_queue``,
``response_start_timestamp_twilio``), and:

* ``mark_each_chunk``: every response is sent the way the samples forward
  ``response.output_audio.delta``: one ``media`` message per delta, each followed by a
  ``mark`` named ``{item}:{n}``; the first delta sets ``response_start_timestamp_twilio =
  latest_media_timestamp``. Each ``mark`` echo pops the ``mark_queue``;
* speech detection stands in for OpenAI's ``input_audio_buffer.speech_started``: an
  energy detector on the decoded inbound mu-law (``speech_frames`` frames of mean
  ``|sample| >= speech_level`` in a row), on when ``barge_in`` or ``reply_ms`` is set;
* ``barge_in``: on speech start while marks are pending, do what the samples'
  ``handle_speech_started_event`` does: elapsed = ``latest_media_timestamp -
  response_start_timestamp_twilio`` (their ``audio_end_ms`` for
  ``conversation.item.truncate``), send ``clear``, empty the ``mark_queue``, forget the
  item; record it as an :class:`Interruption`, with how much the mark echoes say was
  played (the other way the samples track playback);
* ``reply_ms``: after the caller stops speaking (``silence_frames`` quiet frames), answer
  with that much audio (turn-taking), as deltas and marks again.

How: :class:`StreamValidator` is the pure checker (one instance per connection);
:class:`FakeTwilioApp` is a ``websockets`` asyncio server that records one
:class:`AppSession` per connection: every received event with its arrival time
(:func:`time.monotonic`), the mark echoes, the DTMF digits, the decoded inbound audio and
every message the app sent with its send time. :meth:`FakeTwilioApp.wait_for` lets tests
await a condition without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import itertools
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

from ..dsp.g711 import ulaw_decode, ulaw_encode
from ..twilio.ids import ACCOUNT_PREFIX, CALL_PREFIX, STREAM_PREFIX, is_sid
from ..twilio.streams import DTMF_DIGITS, MEDIA_FORMAT

__all__ = [
    "FRAME_BYTES",
    "GREETING_ITEM",
    "GREETING_MARK",
    "AppSession",
    "FakeTwilioApp",
    "Interruption",
    "ReceivedEvent",
    "StreamValidator",
    "mulaw_level",
    "tone_ulaw",
]

FRAME_BYTES: Final = 160
"""Bytes of mu-law in one 20 ms Twilio media frame."""

GREETING_ITEM: Final = "greeting"
"""Item name of the greeting response (replies are ``reply-1``, ``reply-2`` ...)."""

GREETING_MARK: Final = f"{GREETING_ITEM}-end"
"""Name of the mark the fake app sends after its greeting audio (``{item}-end``)."""

_RATE: Final = 8000
_MEDIA_PREFIXES: Final = ('{"event": "media"', '{"event":"media"')
"""How the gateway's ``media`` events start (``record=False``, neither echoing nor
listening: counted without parsing)."""
_HANGUP_TASK: Final = "fakeapp-hangup"


def tone_ulaw(ms: int, freq_hz: float = 440.0, amplitude: float = 0.3) -> bytes:
    """Return ``ms`` milliseconds of a sine tone as 8 kHz mu-law (8 bytes per ms)."""
    n = np.arange(ms * _RATE // 1000, dtype=np.float64)
    pcm = np.round(amplitude * 32767.0 * np.sin(2.0 * math.pi * freq_hz * n / _RATE))
    return ulaw_encode(pcm.astype("<i2").tobytes())


def mulaw_level(payload: bytes) -> float:
    """Mean absolute sample value of mu-law audio (the speech detector's measure)."""
    pcm = np.frombuffer(ulaw_decode(payload), dtype="<i2")
    return float(np.abs(pcm.astype(np.int32)).mean()) if len(pcm) else 0.0


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


@dataclass(frozen=True, slots=True)
class Interruption:
    """One barge-in, as the app computed it when it sent ``clear``."""

    at: float
    """:func:`time.monotonic` time the ``clear`` was sent."""
    item: str
    """The response cut (``last_assistant_item``)."""
    elapsed_ms: int
    """``latest_media_timestamp - response_start_timestamp_twilio`` (the samples' value)."""
    played_ms_by_marks: int
    """Audio of the item whose marks had come back before the interruption, in ms."""
    pending_marks: tuple[str, ...]
    """The ``mark_queue`` at that moment (audio the app believes was not played)."""


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
    sent_at: list[float] = field(default_factory=list)
    """:func:`time.monotonic` send time of each message of :attr:`sent` (same index)."""
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
    # The samples' per-call state, under their names.
    latest_media_timestamp: int = 0
    """``media.timestamp`` of the last inbound media event."""
    last_assistant_item: str | None = None
    """The response being played, as far as the app knows (None after a barge-in)."""
    mark_queue: list[str] = field(default_factory=list)
    """Marks sent and not yet echoed: each echo pops one, a barge-in empties it."""
    response_start_timestamp_twilio: int | None = None
    """``latest_media_timestamp`` when the current response's first delta was sent."""
    # What the speech detector and the responses did.
    responses: list[str] = field(default_factory=list)
    """Item names of the responses started, in order (``greeting``, ``reply-1`` ...)."""
    inbound_levels: list[tuple[float, int, float]] = field(default_factory=list)
    """(arrival, media timestamp, level) of every inbound media frame, when listening."""
    speech_starts: list[tuple[float, int]] = field(default_factory=list)
    """(arrival, media timestamp) of each detected caller speech start."""
    interruptions: list[Interruption] = field(default_factory=list)
    """Every barge-in (``barge_in``), in order."""
    received: int = 0
    """Events received (JSON objects), kept also with ``record=False``."""
    streamed: int = 0
    """``media`` messages sent by the ``stream_chunk_ms`` tone."""
    _mark_audio: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)
    _played_bytes: dict[str, int] = field(default_factory=dict, repr=False)
    _loud_run: int = field(default=0, repr=False)
    _quiet_run: int = field(default=0, repr=False)
    _speaking: bool = field(default=False, repr=False)

    def kinds(self) -> list[str]:
        """The ``event`` field of every received event, in order."""
        return [e.kind for e in self.events]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The received events whose ``event`` is ``kind``."""
        return [e.event for e in self.events if e.kind == kind]

    def timed_sent(self) -> list[tuple[float, dict[str, Any]]]:
        """(send time, message) of every message the app sent, in order."""
        return list(zip(self.sent_at, self.sent, strict=True))

    def sent_marks(self) -> list[tuple[float, str]]:
        """(send time, name) of every mark the app sent."""
        return [(t, m["mark"]["name"]) for t, m in self.timed_sent() if m["event"] == "mark"]

    def mark_echoes(self) -> list[tuple[float, str]]:
        """(arrival, name) of every mark echo received."""
        return [
            (e.at, str(e.event["mark"].get("name")))
            for e in self.events
            if e.kind == "mark" and isinstance(e.event.get("mark"), dict)
        ]

    def sent_audio(self) -> bytes:
        """Concatenated decoded mu-law of every media message the app sent."""
        return b"".join(
            base64.b64decode(m["media"]["payload"]) for m in self.sent if m["event"] == "media"
        )


class FakeTwilioApp:
    """A WebSocket server behaving like a typical Twilio Media Streams AI app.

    Behaviour (all off by default, so the app is a silent recorder):

    * ``greeting_ms``: on ``start``, send that much tone (``greeting_freq_hz``) as
      ``media`` messages of ``greeting_chunk_bytes`` bytes each (the last may be shorter),
      then a mark named :data:`GREETING_MARK`;
    * ``mark_each_chunk``: instead, follow every ``media`` message of a response with a
      mark named ``{item}:{n}`` (the samples' way, one per Realtime audio delta);
    * ``echo``: send every inbound media payload straight back;
    * ``clear_on_dtmf``: send ``clear`` when a ``dtmf`` event arrives;
    * ``barge_in``: send ``clear`` when the caller starts speaking over a response whose
      marks are pending (the samples' ``handle_speech_started_event``, see the module
      docstring); recorded in :attr:`AppSession.interruptions`;
    * ``reply_ms``: when the caller stops speaking, answer with that much tone
      (``reply_freq_hz``), chunked and marked like the greeting;
    * ``speech_level``, ``speech_frames``, ``silence_frames``: the speech detector
      (mean ``|sample|`` per 20 ms frame; loud frames in a row that start speech, quiet
      ones that end it), which runs only with ``barge_in`` or ``reply_ms``;
    * ``hangup_after_ms``: close the socket that long after ``start``;
    * ``extra_on_start``: raw frames (``str``) or messages (dicts, ``streamSid`` added if
      absent) sent after the greeting, e.g. to test the gateway with odd input;
    * ``stream_chunk_ms``: from ``start`` until the connection closes, stream a tone
      without end in ``media`` messages of that much audio each, paced at real time after
      a first ``stream_lead_ms`` sent at once (an app talking for the whole call, as
      ``make bench`` needs); one task paces every session, the messages bypass
      :attr:`AppSession.sent`;
    * ``record=False``: keep counts only (:attr:`AppSession.received`), not the events,
      the inbound audio or the sent messages, and skip the validator (a cheap peer for
      long, large benchmarks; memory stays flat).
    """

    def __init__(
        self,
        *,
        greeting_ms: int = 0,
        greeting_chunk_bytes: int = 1000,
        greeting_freq_hz: float = 440.0,
        mark_each_chunk: bool = False,
        echo: bool = False,
        clear_on_dtmf: bool = False,
        barge_in: bool = False,
        reply_ms: int = 0,
        reply_freq_hz: float = 660.0,
        speech_level: float = 1000.0,
        speech_frames: int = 2,
        silence_frames: int = 15,
        hangup_after_ms: int | None = None,
        extra_on_start: Iterable[str | Mapping[str, Any]] = (),
        path: str = "/stream",
        stream_chunk_ms: int = 0,
        stream_lead_ms: int = 0,
        record: bool = True,
    ) -> None:
        """Configure the behaviour; nothing listens until :meth:`start`."""
        if greeting_chunk_bytes <= 0:
            raise ValueError("greeting_chunk_bytes must be positive")
        if stream_chunk_ms < 0 or stream_lead_ms < 0:
            raise ValueError("stream_chunk_ms and stream_lead_ms must not be negative")
        self.stream_chunk_ms = stream_chunk_ms
        self.stream_lead_ms = stream_lead_ms
        self.record = record
        self._streams: list[tuple[float, int, ServerConnection, AppSession, int]] = []
        self._stream_seq = itertools.count()
        self._streamer: asyncio.Task[None] | None = None
        self.greeting_ms = greeting_ms
        self.greeting_chunk_bytes = greeting_chunk_bytes
        self.greeting_freq_hz = greeting_freq_hz
        self.mark_each_chunk = mark_each_chunk
        self.echo = echo
        self.clear_on_dtmf = clear_on_dtmf
        self.barge_in = barge_in
        self.reply_ms = reply_ms
        self.reply_freq_hz = reply_freq_hz
        self.speech_level = speech_level
        self.speech_frames = speech_frames
        self.silence_frames = silence_frames
        self.listens = barge_in or reply_ms > 0
        """Whether the speech detector runs (``barge_in`` or ``reply_ms``)."""
        self.hangup_after_ms = hangup_after_ms
        self.extra_on_start = list(extra_on_start)
        self.path = path
        self.sessions: list[AppSession] = []
        self._live: dict[ServerConnection, AppSession] = {}  # open connections, oldest first
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
        if self.stream_chunk_ms > 0:
            self._streamer = asyncio.get_running_loop().create_task(self._stream_loop())

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._streamer is not None:
            self._streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._streamer
            self._streamer = None
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

    # -- faults --------------------------------------------------------------------------

    @property
    def live_sessions(self) -> list[AppSession]:
        """Sessions whose connection is open right now, oldest first."""
        return list(self._live.values())

    def drop_live(self, count: int) -> list[str | None]:
        """Abort up to ``count`` open connections that got their ``start``, oldest first,
        without a close frame (an app crash or a network cut); returns their ``callSid``."""
        victims = [(ws, s) for ws, s in self._live.items() if s.call_sid][:max(0, count)]
        for ws, _ in victims:
            ws.transport.abort()
        return [s.call_sid for _, s in victims]

    def forget_closed(self) -> list[AppSession]:
        """Remove the sessions whose connection is over from :attr:`sessions` and return
        them (a long run keeps memory bounded by calling this now and then)."""
        done = [s for s in self.sessions if s.closed.is_set()]
        self.sessions = [s for s in self.sessions if not s.closed.is_set()]
        return done

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
        self._live[ws] = session
        self._notify()
        tasks: set[asyncio.Task[None]] = set()
        lean = not self.record and not self.echo and not self.listens
        try:
            async for frame in ws:
                if lean and isinstance(frame, str) and frame.startswith(_MEDIA_PREFIXES):
                    session.received += 1  # a media event: nothing to do with it here
                    continue
                await self._on_frame(ws, session, frame, tasks)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._live.pop(ws, None)
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
        session.received += 1
        if self.record:
            session.events.append(ReceivedEvent(arrival, msg))
            session.violations.extend(session.validator.feed(msg))
        event = msg.get("event")
        if event == "start":
            self._on_start(ws, session, msg, tasks)
        elif event == "media":
            await self._on_media(ws, session, msg, arrival, tasks)
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
            if session.mark_queue:  # the samples pop one per echo, whatever its name
                session.mark_queue.pop(0)
                item, size = session._mark_audio.get(str(name), ("", 0))
                session._played_bytes[item] = session._played_bytes.get(item, 0) + size

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
        if self.stream_chunk_ms > 0:
            due = time.monotonic() - self.stream_lead_ms / 1000
            heapq.heappush(self._streams, (due, next(self._stream_seq), ws, session, 0))
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

    async def _on_media(
        self,
        ws: ServerConnection,
        session: AppSession,
        msg: Any,
        arrival: float,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        body = msg.get("media")
        if not isinstance(body, dict):
            return
        stamp = body.get("timestamp")
        if isinstance(stamp, str) and _is_count(stamp):
            session.latest_media_timestamp = int(stamp)
        payload = body.get("payload")
        if not isinstance(payload, str):
            return
        if self.echo and not self.record and not self.listens:
            await self._send(ws, session, {"event": "media", "media": {"payload": payload}})
            return
        if not self.record and not self.listens:
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return
        if self.record:
            session.inbound_audio += audio
        if self.echo:
            await self._send(ws, session, {"event": "media", "media": {"payload": payload}})
        if self.listens:
            await self._detect_speech(ws, session, audio, arrival, tasks)

    async def _detect_speech(
        self,
        ws: ServerConnection,
        session: AppSession,
        audio: bytes,
        arrival: float,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        """The stand-in for OpenAI's ``speech_started`` / end of the caller's turn."""
        level = mulaw_level(audio)
        stamp = session.latest_media_timestamp
        session.inbound_levels.append((arrival, stamp, level))
        if level >= self.speech_level:
            session._loud_run, session._quiet_run = session._loud_run + 1, 0
        else:
            session._loud_run, session._quiet_run = 0, session._quiet_run + 1
        if not session._speaking and session._loud_run >= self.speech_frames:
            session._speaking = True
            session.speech_starts.append((arrival, stamp))
            if self.barge_in and session.last_assistant_item:
                await self._handle_speech_started_event(ws, session)
        elif session._speaking and session._quiet_run >= self.silence_frames:
            session._speaking = False
            if self.reply_ms > 0:
                item = f"reply-{len(session.responses)}"
                self._spawn(tasks, self._respond_task(ws, session, item, self.reply_ms,
                                                      self.reply_freq_hz))

    async def _handle_speech_started_event(
        self, ws: ServerConnection, session: AppSession
    ) -> None:
        """The caller spoke over the response: cut it (the samples' logic)."""
        start = session.response_start_timestamp_twilio
        if not session.mark_queue or start is None:
            return
        elapsed_ms = session.latest_media_timestamp - start
        item = session.last_assistant_item or ""
        # The truncate an OpenAI app would send here:
        # {"type": "conversation.item.truncate", "item_id": item,
        #  "content_index": 0, "audio_end_ms": elapsed_ms}
        at = await self._send(ws, session, {"event": "clear"})
        session.interruptions.append(Interruption(
            at=at,
            item=item,
            elapsed_ms=elapsed_ms,
            played_ms_by_marks=session._played_bytes.get(item, 0) // 8,
            pending_marks=tuple(session.mark_queue),
        ))
        session.mark_queue.clear()
        session.last_assistant_item = None
        session.response_start_timestamp_twilio = None

    async def _send(
        self, ws: ServerConnection, session: AppSession, msg: str | Mapping[str, Any]
    ) -> float:
        """Send ``msg``; return its :func:`time.monotonic` send time."""
        at = time.monotonic()
        if isinstance(msg, str):
            await ws.send(msg)
            return at
        full = dict(msg)
        full.setdefault("streamSid", session.stream_sid)
        if full.get("event") == "mark":
            session.validator.expect_mark(str(full["mark"]["name"]))
        if self.record:
            session.sent.append(full)
            session.sent_at.append(at)
        await ws.send(json.dumps(full))
        return at

    async def _send_mark(
        self, ws: ServerConnection, session: AppSession, name: str, item: str, size: int
    ) -> None:
        """Send mark ``name`` after ``size`` bytes of ``item``'s audio (the samples'
        ``send_mark``); queued before it leaves, so its echo always finds it."""
        session.mark_queue.append(name)
        session._mark_audio[name] = (item, size)
        await self._send(ws, session, {"event": "mark", "mark": {"name": name}})

    async def _respond(
        self, ws: ServerConnection, session: AppSession, item: str, ms: int, freq_hz: float
    ) -> None:
        """Send a response's audio as the samples forward Realtime audio deltas."""
        audio = tone_ulaw(ms, freq_hz)
        step = self.greeting_chunk_bytes
        session.responses.append(item)
        for n, i in enumerate(range(0, len(audio), step)):
            chunk = audio[i : i + step]
            payload = base64.b64encode(chunk).decode("ascii")
            await self._send(ws, session, {"event": "media", "media": {"payload": payload}})
            if session.response_start_timestamp_twilio is None:
                session.response_start_timestamp_twilio = session.latest_media_timestamp
            session.last_assistant_item = item
            if self.mark_each_chunk:
                await self._send_mark(ws, session, f"{item}:{n}", item, len(chunk))
        if not self.mark_each_chunk:
            await self._send_mark(ws, session, f"{item}-end", item, len(audio))

    async def _respond_task(
        self, ws: ServerConnection, session: AppSession, item: str, ms: int, freq_hz: float
    ) -> None:
        try:
            await self._respond(ws, session, item, ms, freq_hz)
        except ConnectionClosed:
            pass
        self._notify()

    async def _greet(self, ws: ServerConnection, session: AppSession) -> None:
        try:
            if self.greeting_ms > 0:
                await self._respond(ws, session, GREETING_ITEM, self.greeting_ms,
                                    self.greeting_freq_hz)
            for extra in self.extra_on_start:
                await self._send(ws, session, extra)
        except ConnectionClosed:
            pass
        self._notify()

    async def _stream_loop(self) -> None:
        """Pace every streaming session's tone (``stream_chunk_ms``): one task for all."""
        chunk_s = self.stream_chunk_ms / 1000
        step = self.stream_chunk_ms * _RATE // 1000
        period = tone_ulaw(1000)  # 440 Hz: a whole number of cycles, so it loops cleanly
        payloads: dict[int, str] = {}

        def payload(offset: int) -> str:
            if offset not in payloads:
                data = (period + period)[offset:offset + step]
                payloads[offset] = base64.b64encode(data).decode("ascii")
            return payloads[offset]

        heap = self._streams
        while True:
            now = time.monotonic()
            if not heap or heap[0][0] > now:
                wait = 0.005 if not heap else min(0.005, heap[0][0] - now)
                await asyncio.sleep(wait)
                continue
            due, seq, ws, session, offset = heapq.heappop(heap)
            if session.closed.is_set():
                continue
            try:
                while due <= now:
                    sid = json.dumps(session.stream_sid)
                    await ws.send('{"event":"media","streamSid":' + sid
                                  + ',"media":{"payload":"' + payload(offset) + '"}}')
                    session.streamed += 1
                    offset = (offset + step) % len(period)
                    due += chunk_s
            except ConnectionClosed:
                continue
            heapq.heappush(heap, (due, seq, ws, session, offset))

    async def _hangup_later(self, ws: ServerConnection, session: AppSession, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        session.hung_up = True
        await ws.close()
