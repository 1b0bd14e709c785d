"""``twilio-stream`` backend: the gateway plays Twilio's part toward a Media Streams app.

Why: teams leaving Twilio already have an AI voice app speaking the bidirectional Media
Streams protocol (``<Connect><Stream>``). This backend connects to that app as Twilio
would, so the app runs unchanged and only the media source changes (docs/PROTOCOLS.md §8).

How, per call (:class:`TwilioStreamSession`):

* ``start()``: with TwiML (the agent's ``voice_url``, or the ``<Dial action>`` of a leg
  resumed after a dial), run it for the whole call with a
  :class:`~audiosocket_gw.twilio.twiml_exec.TwimlRunner` (this session is its
  :class:`~audiosocket_gw.twilio.twiml_exec.TwimlHost`: ``<Say>``, ``<Gather>``,
  ``<Record>``, ``<Dial>``, forks, streams; docs/TWIML.md); ``redirect()`` replaces the
  running TwiML live. Without TwiML, stream to the agent's ``stream_url`` (the default
  agent's comes from ``--stream-url``). A stream: open a websockets client connection and
  send ``connected`` and ``start`` (``customParameters`` from the TwiML ``<Parameter>`` or
  the call metadata). All wire frames come from the pure
  :class:`~audiosocket_gw.twilio.TwilioStreamEncoder`.
* Caller audio (``on_audio``, any Asterisk frame size: 320 bytes per 20 ms, 480 per
  30 ms...) is mu-law encoded and re-cut into 160-byte chunks, each sent as one ``media``
  event as soon as it is complete (a 30 ms frame yields one chunk and keeps half a chunk
  for the next one). Asterisk sends nothing while the caller's channel produces no
  frames, but Twilio always streams: one backend-wide subscription to the gateway's
  pacer (``control.ticker.every(1, ...)``: no task or timer of its own, none per call)
  checks every session each tick, and when no caller audio came for more than 40 ms it
  pads the
  partial chunk with mu-law silence (0xFF) and sends silence chunks until the stream's
  audio time catches up with the wall clock. ``timestamp`` is therefore audio time,
  continuous across gaps, as the app expects.
* From the app: ``media`` (any size) is decoded and queued in order (``control.play``);
  ``mark`` is placed after everything queued (``control.mark``) and echoed from
  ``on_marks``, which the bridge calls exactly when the audio before the mark has been
  written to Asterisk (or at once when nothing is queued); ``clear`` drops queued audio on
  the next tick (``control.clear``) and the bridge reports every pending mark at once,
  which are echoed. Because the playout buffer holds back a partial last frame while an
  utterance streams, a ``mark`` and 60 ms without app media both close the utterance
  (``end_of_audio``) so the tail is played padded instead of waiting forever.
* DTMF -> ``dtmf``; the call ending -> ``stop`` then a normal close.
* The app closing the socket hangs the call up (reason ``app-closed``) unless the agent
  extra ``on_app_close = "continue"``. Malformed app messages are logged (the first few
  per call) and counted, never fatal.

Sends never block the audio path: events go through a bounded queue to one writer task;
when the app stops reading and the queue is full, media is dropped (counted) before a
sequence number is spent on it, so the stream the app sees stays consistent.

Agent extras used: ``on_app_close`` (``hangup`` | ``continue``), ``fallback`` (``hangup``
| ``announce``: what happens when the app or its webhook is down), ``account_sid``,
``auth_token_env`` (the call's identity: see :mod:`audiosocket_gw.twilio.ids`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..config import Config, ConfigError, format_hostport, parse_hostport
from ..dial import DIAL_OUTCOME_WAIT_S, DTMF_PAUSE_S, DialRequest
from ..dsp.g711 import ulaw_decode, ulaw_encode
from ..recordings.settings import RecordingSettings
from ..recordings.transcribe import HttpTranscriber, Transcriber
from ..settings import TtsSettings
from ..tenants import Agent, Tenant, TenantsConfig, load_tenants
from ..tts import CachedTts, build_tts
from ..twilio.callopts import KEYS as CALL_OPTION_KEYS
from ..twilio.callopts import CallOptions
from ..twilio.fork import MediaFork
from ..twilio.ids import account_sid_for, auth_token_for, call_sid_for, stream_sid_for
from ..twilio.streams import (
    DTMF_DIGITS,
    AppClear,
    AppMark,
    AppMedia,
    StreamProtocolError,
    TwilioStreamEncoder,
    parse_app_message,
)
from ..twilio.twiml import ConnectStream, StartStream, TwimlError, parse_twiml
from ..twilio.twiml_exec import (
    DIAL_ACTION_KEY,
    DIAL_CALL_SID_KEY,
    DIAL_DIRECTION_KEY,
    DIAL_FROM_KEY,
    DIAL_METHOD_KEY,
    DIAL_TO_KEY,
    RECORD_VERB_DIR,
    TwimlContext,
    TwimlRunner,
)
from ..twilio.urlpolicy import PolicyResolver, UrlRefused, check_ws_url
from ..twilio.urls import recording_media_url
from ..twilio.webhook import WebhookError, announcement_pcm, voice_params
from ..wssend import send_now
from .base import (
    Backend,
    BackendError,
    BackendSession,
    CallControl,
    CallInfo,
    CallLog,
    Subscription,
)

log = logging.getLogger("audiosocket_gw.backends.twilio_stream")

CHUNK: Final = 160
"""mu-law bytes in one 20 ms media event."""
SILENCE_ULAW: Final = b"\xff" * CHUNK
GAP_S: Final = 0.040
"""No caller audio for longer than this: stream silence in its place."""
PLAY_DIGIT_S: Final = 0.3
"""About how long one ``<Play digits>`` tone takes (PlayDTMF's 250 ms and the reply)."""
APP_IDLE_S: Final = 0.060
"""No app media for this long: the app's utterance is over, play its partial tail."""
MAX_FILL_PER_TICK: Final = 5
"""Silence chunks sent per pacer tick at most (no burst after a stalled loop)."""
_INTERNAL_MARK: Final = "\x00aigw-internal-"
_MAX_LOGGED_ERRORS: Final = 5


class TwilioStreamMetrics:
    """The backend's Prometheus metrics (``aigw_twilio_*``), on the given registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry(auto_describe=True)
        self.registry = r
        self.mark_echo_delay = Histogram(
            "aigw_twilio_mark_echo_delay_seconds",
            "From a mark received from the app to its echo (the audio before it played).",
            buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.app_connect_failures = Counter(
            "aigw_twilio_app_connect_failures",
            "Media Streams app connections (or voice webhooks) that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.app_messages_rejected = Counter(
            "aigw_twilio_app_messages_rejected",
            "Malformed messages received from Media Streams apps (dropped).",
            registry=r,
        )
        self.media_dropped = Counter(
            "aigw_twilio_media_dropped",
            "Caller media events not sent because the app was not reading.",
            registry=r,
        )
        self.twiml_events = Counter(
            "aigw_twiml_events",
            "TwiML execution events by kind (verb, say-skipped, play-skipped, "
            "speech-ignored, transcription-failed) and label (verb name or reason).",
            ["event", "label"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "aigw_twilio_webhook_seconds",
            "Voice webhook round trip (POST to TwiML parsed).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )


class TwilioStreamBackend(Backend):
    """Factory of :class:`TwilioStreamSession`; owns the shared tick and HTTP client."""

    name = "twilio-stream"
    local_barge_in = False  # the app barges in itself, with `clear`

    def __init__(
        self,
        *,
        stream_url: str | None = None,
        tenants: Mapping[str, Tenant] | None = None,
        env: Mapping[str, str] | None = None,
        metrics: TwilioStreamMetrics | None = None,
        # Timeouts (seconds)
        connect_timeout: float = 5.0,
        webhook_timeout: float = 5.0,
        close_timeout: float = 2.0,
        # Limits
        send_queue: int = 500,
        max_message_bytes: int = 2 * 1024 * 1024,
        # TwiML execution
        tts: CachedTts | None = None,
        stt: Transcriber | None = None,
        data_dir: Path | None = None,
        api_base: str = "http://127.0.0.1:9094",
        allow_private: bool = True,
    ) -> None:
        """``stream_url`` is the default agent's URL; ``tenants`` (by id) hold each
        tenant's Twilio identity; ``env`` is where auth tokens are read (the gateway
        passes its settings' snapshot of the environment; none: requests go unsigned).
        ``tts`` speaks ``<Say>`` (None: skipped); ``stt`` transcribes ``<Gather
        input=speech>`` and ``<Record transcribe>``; ``<Record>`` files go under
        ``data_dir/recordings/twiml``; ``api_base`` prefixes their ``RecordingUrl``."""
        self.tts = tts
        self.stt = stt
        self.recordings_dir = None if data_dir is None else data_dir / RECORD_VERB_DIR
        self.api_base = api_base
        self.allow_private = allow_private
        """TwiML URLs may lead to loopback/private addresses (twilio/urlpolicy.py)."""
        self.stream_url = stream_url
        self.tenants = dict(tenants or {})
        self.env: Mapping[str, str] = {} if env is None else env
        self.metrics = metrics or TwilioStreamMetrics()
        self.connect_timeout = connect_timeout
        self.webhook_timeout = webhook_timeout
        self.close_timeout = close_timeout
        self.send_queue = send_queue
        self.max_message_bytes = max_message_bytes
        self.sessions: set[TwilioStreamSession] = set()
        self._ticking: tuple[TwilioStreamSession, ...] = ()
        self._tick_sub: Subscription | None = None
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(
        cls, config: Config, registry: CollectorRegistry | None = None, *,
        tenants: TenantsConfig | None = None, env: Mapping[str, str] | None = None,
        tts: TtsSettings | None = None, recording: RecordingSettings | None = None,
        allow_private: bool = True,
    ) -> TwilioStreamBackend:
        """Build from the gateway config: ``stream_url`` and the tenants.

        ``registry``: the gateway's metrics registry (a private one when None, so the
        ``aigw_twilio_*`` metrics are then counted but not exported). ``tenants``: the
        gateway's loaded tenants (read from ``config.config`` when None); ``env``: where
        tenant-named auth tokens are read; ``tts``: the ``<Say>`` engine settings (a
        startup warning when no engine is available); ``recording``: its transcription
        endpoint serves ``<Gather input=speech>`` and ``<Record transcribe>``.
        """
        if tenants is None:
            tenants = load_tenants(config.config)
        data_dir = Path(config.data_dir)
        host, port = parse_hostport(config.http, setting="--http/AIGW_HTTP")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return cls(stream_url=config.stream_url, tenants=tenants.tenants, env=env,
                   metrics=TwilioStreamMetrics(registry), allow_private=allow_private,
                   tts=build_tts(tts or TtsSettings(), data_dir),
                   stt=(HttpTranscriber(recording.transcribe_url, recording.transcribe_model,
                                        recording.transcribe_key, recording.transcribe_timeout_s)
                        if recording is not None and recording.transcribe_url else None),
                   data_dir=data_dir, api_base=f"http://{format_hostport(host, port)}")

    def check_agent(self, agent: Agent) -> None:
        for key, allowed in (("on_app_close", ("hangup", "continue")),
                             ("fallback", ("hangup", "announce"))):
            value = agent.extra.get(key)
            if value is not None and value not in allowed:
                raise ConfigError(
                    f"agent extra {key!r}: {value!r} is not one of {', '.join(allowed)}")
        if not (agent.stream_url or agent.voice_url or self.stream_url):
            raise ConfigError("a twilio-stream agent needs stream_url or voice_url "
                              "(or --stream-url for the default agent)")

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        return TwilioStreamSession(self, call, control)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP client (webhooks, ``<Play>`` downloads), created on first use."""
        if self._http is None or self._http.closed:
            # TwiML URLs are the app's: never toward metadata/link-local addresses
            # (twilio/urlpolicy.py), nor private ones unless allowed.
            resolver = PolicyResolver(allow_private=self.allow_private)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=256))
        return self._http

    async def aclose(self) -> None:
        if self._tick_sub is not None:
            self._tick_sub.cancel()
            self._tick_sub = None
        if self.tts is not None:
            await self.tts.aclose()
        if self.stt is not None:
            await self.stt.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the shared tick (the gateway's pacer) ------------------------------------------

    def _register(self, session: TwilioStreamSession) -> None:
        self.sessions.add(session)
        self._ticking = tuple(self.sessions)
        if self._tick_sub is None:
            self._tick_sub = session.control.ticker.every(1, self._tick)

    def _unregister(self, session: TwilioStreamSession) -> None:
        self.sessions.discard(session)
        self._ticking = tuple(self.sessions)
        if not self.sessions and self._tick_sub is not None:
            self._tick_sub.cancel()
            self._tick_sub = None

    def _tick(self, now: float) -> None:
        """Every pacer tick (after the frames went out): each streaming session's turn."""
        for session in self._ticking:
            try:
                session.tick(now)
            except Exception:
                session.log.exception("twilio-stream tick failed")
                self._unregister(session)


@dataclass(frozen=True)
class TwimlSource:
    """A call's first TwiML: fetched from ``url`` with ``method`` (plus ``extra`` form
    fields), or the inline ``twiml`` (relative URLs in it resolve against ``url``)."""

    url: str
    method: str = "POST"
    extra: dict[str, str] = field(default_factory=dict)
    twiml: str | None = None


class TwilioStreamSession(BackendSession):
    """One call: its TwiML (when the agent has a ``voice_url``) and its Media Streams."""

    def __init__(self, backend: TwilioStreamBackend, info: CallInfo, control: CallControl) -> None:
        self.backend = backend
        self.info = info
        self.control = control
        self.log = CallLog.for_call(log, info)
        agent = info.agent_cfg
        self.extra: Mapping[str, str] = agent.extra if agent is not None else {}
        tenant = backend.tenants.get(info.tenant)
        meta = info.metadata
        self.parent_call_id = meta.get("parent_call_id") or None
        # A leg resumed after <Dial action> is the same call to the app: same CallSid.
        self.call_sid = (meta.get(DIAL_CALL_SID_KEY)
                         or call_sid_for(self.parent_call_id or info.call_id))
        self.account_sid = account_sid_for(info.tenant, tenant=tenant, agent=agent,
                                           env=backend.env)
        self.token = auth_token_for(tenant=tenant, agent=agent, env=backend.env)
        self.encoder: TwilioStreamEncoder | None = None
        self.ws: ClientConnection | None = None
        self.streaming = False
        self.closing = False
        self.errors = 0
        self.media_dropped = 0
        # Unbounded queue, bounded by hand (``_room``) so stop can always be queued last.
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._limit = backend.send_queue
        self._pending_in = bytearray()
        self._stream_t0 = 0.0
        self._last_caller = 0.0
        self._last_app_media = 0.0
        self._app_tail_open = False
        self._mark_times: dict[str, deque[float]] = {}
        self._internal: dict[str, asyncio.Future[None]] = {}
        self._internal_n = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._start_task: asyncio.Task[object] | None = None
        # TwiML
        self.runner: TwimlRunner | None = None
        self._program: asyncio.Task[Any] | None = None
        self._stream_done: asyncio.Future[bool] | None = None
        self._stream_cb: tuple[str, str, str] | None = None  # url, method, name
        self._streams = 0
        self.forks: dict[str, MediaFork] = {}
        self._dial_request: DialRequest | None = None

    # -- start -----------------------------------------------------------------------

    async def _learn_dial_outcome(self) -> None:
        """A leg resumed after ``<Dial action>``: how the Dial ended (``dial_status``,
        ``dial_duration``, ``dial_call_sid`` in the metadata), from call control."""
        meta = self.info.metadata
        if not self.parent_call_id or not meta.get(DIAL_ACTION_KEY) \
                or meta.get("dial_status"):
            return
        out = await self.control.dial_outcome(DIAL_OUTCOME_WAIT_S)
        if out is None:
            self.log.warning("<Dial action>: the dial's outcome is unknown (failed)")
            return
        self.info = replace(self.info, metadata={
            **meta, "dial_status": out.status, "dial_duration": str(out.duration_s),
            "dial_call_sid": out.dial_call_sid})

    def _twiml_source(self) -> TwimlSource | None:
        """Where this call's first TwiML comes from.

        A leg resumed after ``<Dial action>``: the action, with ``DialCallStatus``...;
        else the agent's ``voice_url``; None: no TwiML, stream to the agent's URL.
        """
        meta = self.info.metadata
        if self.parent_call_id and meta.get(DIAL_ACTION_KEY):
            status = meta.get("dial_status") or "failed"
            return TwimlSource(meta[DIAL_ACTION_KEY], meta.get(DIAL_METHOD_KEY) or "POST", {
                "DialCallStatus": status,
                "DialCallDuration": meta.get("dial_duration") or "0",
                "DialCallSid": meta.get("dial_call_sid") or "",
                "DialBridged": "true" if status in ("completed", "answered") else "false",
            })
        # A call placed through the Twilio REST API carries its own Url/Method or Twiml
        # (twilio/callopts.py), which win over the agent's voice_url.
        opts = CallOptions.from_metadata(meta)
        if opts.has_twiml:
            return TwimlSource(opts.twiml_url, opts.twiml_method or "POST",
                               twiml=opts.twiml or None)
        agent = self.info.agent_cfg
        if agent is not None and agent.voice_url:
            return TwimlSource(agent.voice_url)
        return None

    def _call_form(self) -> dict[str, str]:
        params = voice_params(self.info, self.call_sid, self.account_sid)
        meta = self.info.metadata
        if self.parent_call_id:
            for key, field_ in ((DIAL_FROM_KEY, "From"), (DIAL_TO_KEY, "To"),
                                (DIAL_DIRECTION_KEY, "Direction")):
                if meta.get(key):
                    params[field_] = meta[key]
            params["Caller"], params["Called"] = params["From"], params["To"]
            params["CallStatus"] = "in-progress"
        return params

    def _runner(self) -> TwimlRunner:
        if self.runner is None:
            backend = self.backend
            events = backend.metrics.twiml_events

            def count(event: str, label: str) -> None:
                events.labels(event, label).inc()

            self.runner = TwimlRunner(self, TwimlContext(
                http=backend.http,
                call_id=self.info.call_id,
                params=self._call_form(),
                token=self.token,
                time_limit=backend.webhook_timeout,
                call_log=self.log,
                tts=backend.tts,
                stt=backend.stt,
                recordings_dir=backend.recordings_dir,
                recording_url=lambda sid: recording_media_url(
                    backend.api_base, self.account_sid, sid),
                observe_latency=backend.metrics.webhook_latency.observe,
                count=count,
            ))
        return self.runner

    async def start(self) -> None:
        self._start_task = asyncio.current_task()
        await self._learn_dial_outcome()
        source = self._twiml_source()
        if source is not None:
            self._program = self._start_task
            try:
                verbs = parse_twiml(source.twiml) if source.twiml is not None else None
            except TwimlError as exc:
                raise BackendError(f"invalid TwiML for this call: {exc}",
                                   reason="bad-twiml") from None
            try:
                await self._runner().run(source.url, source.method, extra=source.extra,
                                         verbs=verbs)
            except WebhookError as exc:
                await self._fail(f"voice webhook failed: {exc}", exc.reason)
            return
        agent = self.info.agent_cfg
        stream_url = (agent.stream_url if agent is not None else None) or self.backend.stream_url
        if not stream_url:
            raise BackendError("no stream URL for this agent (--stream-url)", reason="config")
        # customParameters: the call's own metadata, not the REST call options.
        await self._open_stream(stream_url, {k: v for k, v in self.info.metadata.items()
                                             if k not in CALL_OPTION_KEYS})

    async def _open_stream(self, url: str, params: Mapping[str, str]) -> None:
        """Connect to the Media Streams app at ``url`` and start streaming."""
        try:
            await check_ws_url(url, allow_private=self.backend.allow_private)
        except (UrlRefused, OSError) as exc:
            self._stream_status("stream-error", f"refused: {exc}")
            await self._fail(f"stream URL refused: {exc}", "refused")
            return
        try:
            ws = await asyncio.wait_for(
                connect(url, max_size=self.backend.max_message_bytes, open_timeout=None,
                        compression=None,  # base64 audio does not deflate; it only costs CPU
                        close_timeout=self.backend.close_timeout),
                self.backend.connect_timeout,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "connect"
            self._stream_status("stream-error", f"cannot connect: {type(exc).__name__}")
            await self._fail(f"cannot connect to the stream app: {exc!r}", reason)
            return
        self.ws = ws
        self._queue = asyncio.Queue()
        self._pending_in = bytearray()
        self.encoder = TwilioStreamEncoder(
            stream_sid=stream_sid_for(self.info.call_id, self._streams),
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            custom_parameters=params,
        )
        self._streams += 1
        await ws.send(self.encoder.connected())
        await ws.send(self.encoder.start())
        self._stream_t0 = self._last_caller = self._last_app_media = time.monotonic()
        self.streaming = True
        self.log.info("media stream %s open", self.encoder.stream_sid)
        self._stream_status("stream-started")
        self._spawn(self._writer(ws), "twilio-writer")
        self._spawn(self._reader(ws), "twilio-reader")
        self.backend._register(self)

    async def _fail(self, why: str, reason: str) -> None:
        """The app is unusable: count, apply the agent's fallback, end the call."""
        self.backend.metrics.app_connect_failures.labels(reason).inc()
        if self.extra.get("fallback") == "announce":
            self.log.warning("%s: playing the fallback announcement", why)
            await self.play_and_wait(announcement_pcm())
        raise BackendError(why, reason=f"app-{reason}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stream_status(self, event: str, error: str = "") -> None:
        """``<Stream statusCallback>``: stream-started / stream-stopped / stream-error."""
        cb = self._stream_cb
        if cb is None or self.runner is None:
            return
        url, method, name = cb
        sid = self.encoder.stream_sid if self.encoder is not None else ""
        params = {"AccountSid": self.account_sid, "CallSid": self.call_sid,
                  "StreamSid": sid, "StreamName": name or sid, "StreamEvent": event,
                  "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")}
        if error:
            params["StreamError"] = error
        self.runner.callback(url, params, method)

    # -- live redirect (REST ``calls(sid).update(url=...|twiml=...)``) -------------------

    async def redirect(self, *, url: str | None, method: str = "POST",
                       twiml: str | None = None) -> None:
        """Interrupt the current TwiML (and an open Media Stream), then run the document
        at ``url`` (fetched with a signed request like the webhook) or the inline
        ``twiml``. Returns once the new document has started (in its own task).

        Raises ValueError when neither or both of ``url``/``twiml`` are given, or
        :class:`~audiosocket_gw.twilio.twiml.TwimlError` (a ValueError) for invalid
        inline TwiML; the running TwiML is then left alone.
        """
        if (url is None) == (twiml is None):
            raise ValueError("redirect needs exactly one of url and twiml")
        if method.upper() not in ("GET", "POST"):
            raise ValueError(f"method must be GET or POST, got {method!r}")
        verbs = parse_twiml(twiml) if twiml is not None else None
        if self.closing:
            return
        previous = self._program
        if previous is not None and not previous.done() \
                and previous is not asyncio.current_task():
            previous.cancel()
            await asyncio.wait({previous})  # never raises; our own cancellation still does
        await self._stop_stream()
        self.control.clear()
        base = url or (self.info.agent_cfg.voice_url if self.info.agent_cfg else None) or ""
        runner = self._runner()
        self.log.info("TwiML redirect (%s)", "url" if url is not None else "inline")

        async def program() -> None:
            try:
                await runner.run(base, method.upper(), verbs=verbs)
            except WebhookError as exc:
                self.backend.metrics.app_connect_failures.labels(exc.reason).inc()
                self.log.warning("redirected TwiML failed: %s: hanging up", exc)
                self.control.hangup(f"app-{exc.reason}")
            except BackendError as exc:
                self.log.warning("redirected TwiML failed: %s: hanging up", exc)
                self.control.hangup(exc.reason)

        task = asyncio.get_running_loop().create_task(program(), name="twiml-program")
        self._program = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- TwimlHost -------------------------------------------------------------------------

    async def play_and_wait(self, pcm: bytes) -> None:
        """Queue ``pcm`` and wait until the bridge has written (or cleared) all of it."""
        self._internal_n += 1
        name = f"{_INTERNAL_MARK}{self._internal_n}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._internal[name] = fut
        self.control.play(pcm)
        self.control.end_of_audio()
        self.control.mark(name)
        try:
            await asyncio.wait_for(fut, len(pcm) / 16000 + 5.0)
        except TimeoutError:
            self.log.warning("announcement not played in time")
        finally:
            self._internal.pop(name, None)

    def stop_audio(self) -> None:
        """Drop queued audio on the next tick (pending marks are reported at once)."""
        self.control.clear()

    async def pause(self, seconds: float) -> None:
        """Comfort silence: the pacer writes silence while nothing is queued."""
        await asyncio.sleep(seconds)

    def hangup(self, reason: str) -> None:
        self.control.hangup(reason)

    def dial(self, request: DialRequest) -> None:
        self._dial_request = request
        self.control.dial(request)

    def on_dial_failed(self, reason: str) -> None:
        """The ``<Dial>`` could not be placed: as at Twilio, its ``action`` runs on this
        leg with ``DialCallStatus=failed``; without one the call ends (``dial-failed``)."""
        request, self._dial_request = self._dial_request, None
        if request is None or self.closing:
            return
        action = request.metadata.get(DIAL_ACTION_KEY)
        if not action:
            self.log.warning("<Dial> refused (%s): hanging up", reason)
            self.control.hangup("dial-failed")
            return
        self.log.warning("<Dial> refused (%s): its action runs with DialCallStatus=failed",
                         reason)
        runner = self._runner()

        async def program() -> None:
            try:
                await runner.run(action, request.metadata.get(DIAL_METHOD_KEY) or "POST",
                                 extra={"DialCallStatus": "failed", "DialCallDuration": "0",
                                        "DialCallSid": "", "DialBridged": "false"})
            except (WebhookError, BackendError) as exc:
                self.log.warning("<Dial action> failed: %s: hanging up", exc)
                self.control.hangup("dial-failed")

        task = asyncio.get_running_loop().create_task(program(), name="twiml-dial-failed")
        self._program = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_digits(self, digits: str) -> None:
        """``<Play digits>``: AMI PlayDTMF through call control (one action per digit,
        each after the previous reply), then about as long as they take to play."""
        self.control.send_dtmf(digits)
        tones = sum(1 for d in digits if d not in "wW")
        await asyncio.sleep(tones * PLAY_DIGIT_S + (len(digits) - tones) * DTMF_PAUSE_S)

    async def connect_stream(self, verb: ConnectStream) -> bool:
        """``<Connect><Stream>``: stream until the app closes (True) or the call ends."""
        self._stream_cb = ((verb.status_callback, verb.status_callback_method, verb.name or "")
                           if verb.status_callback else None)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._stream_done = done
        try:
            await self._open_stream(verb.url, verb.parameters)
            return await done
        finally:
            await self._stop_stream()
            self._stream_done = None
            self._stream_cb = None

    def app_closed(self) -> None:
        if self.extra.get("on_app_close") == "continue":
            self.log.info("the app closed the stream; call continues")
            return
        self.log.info("the app closed the stream: hanging up")
        self.control.hangup("app-closed")

    async def start_fork(self, verb: StartStream) -> None:
        sid = stream_sid_for(self.info.call_id, self._streams)
        self._streams += 1
        name = verb.name or sid
        if name in self.forks:
            self.log.warning("<Start><Stream name=%s> already running: skipped", name)
            return
        if verb.track != "inbound_track":
            self.log.warning("<Stream track=%s>: only the caller's audio is forked", verb.track)
        enc = TwilioStreamEncoder(stream_sid=sid, call_sid=self.call_sid,
                                  account_sid=self.account_sid,
                                  custom_parameters=verb.parameters)
        fork = MediaFork(verb.url, enc, name=name, connect_timeout=self.backend.connect_timeout,
                         allow_private=self.backend.allow_private,
                         close_timeout=self.backend.close_timeout,
                         max_queue=self.backend.send_queue, call_log=self.log)
        cb = verb.status_callback
        params = {"AccountSid": self.account_sid, "CallSid": self.call_sid,
                  "StreamSid": sid, "StreamName": name}

        def status(event: str, error: str = "") -> None:
            if cb and self.runner is not None:
                extra = {"StreamEvent": event,
                         "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")}
                if error:
                    extra["StreamError"] = error
                self.runner.callback(cb, params | extra, verb.status_callback_method)

        try:
            await fork.open()
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, UrlRefused) as exc:
            self.log.warning("<Start><Stream>: cannot connect (%s): skipped",
                             type(exc).__name__)
            status("stream-error", f"cannot connect: {type(exc).__name__}")
            return
        fork.on_close = lambda: status("stream-stopped")
        self.forks[name] = fork
        self.log.info("fork %s open", sid)
        status("stream-started")

    async def stop_fork(self, name: str | None) -> None:
        names = list(self.forks) if name is None else [name]
        for n in names:
            fork = self.forks.pop(n, None)
            if fork is None:
                continue
            await fork.close()

    async def _stop_stream(self) -> None:
        """End the current Media Stream (``stop`` then close) without ending the call."""
        ws, enc = self.ws, self.encoder
        if ws is None or enc is None:
            return
        self.ws = None
        was_streaming = self.streaming
        self.streaming = False
        self.backend._unregister(self)
        for task in list(self._tasks):  # we close it: not "the app closed the stream"
            if task.get_name() == "twilio-reader":
                task.cancel()
        queue = self._queue
        if not enc.stopped and was_streaming:
            queue.put_nowait(enc.stop())
        queue.put_nowait(None)
        writers = [t for t in self._tasks if t.get_name() == "twilio-writer"]
        if writers:
            await asyncio.wait(writers, timeout=self.backend.close_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.backend.close_timeout)
        for task in list(self._tasks):
            if task.get_name() == "twilio-writer":
                task.cancel()
        self._stream_status("stream-stopped")

    # -- caller -> app -----------------------------------------------------------------

    def _room(self) -> bool:
        return self._queue.qsize() < self._limit

    def _enqueue(self, text: str) -> None:
        if self._room():
            self._put(text)
        else:
            self.media_dropped += 1

    def _put(self, text: str) -> None:
        """Send now when nothing waits in the queue (no task switch), else queue it."""
        queue, ws = self._queue, self.ws
        if ws is None or not queue.empty() or not send_now(ws, text):
            queue.put_nowait(text)

    def _send_chunk(self, chunk: bytes) -> None:
        enc = self.encoder
        assert enc is not None
        if not self._room():  # decide before spending a sequence number
            self.media_dropped += 1
            self.backend.metrics.media_dropped.inc()
            return
        self._put(enc.media(chunk))

    def on_audio(self, pcm: bytes) -> None:
        runner = self.runner
        if runner is not None:
            runner.on_audio(pcm)
        for fork in self.forks.values():
            fork.feed(pcm)
        if not self.streaming:
            return
        self._last_caller = time.monotonic()
        buf = self._pending_in
        buf += ulaw_encode(pcm)
        while len(buf) >= CHUNK:
            self._send_chunk(bytes(buf[:CHUNK]))
            del buf[:CHUNK]

    def on_dtmf(self, digit: str) -> None:
        if self.runner is not None:
            self.runner.on_dtmf(digit)
        if self.streaming and digit in DTMF_DIGITS and self.encoder is not None:
            self._enqueue(self.encoder.dtmf(digit))

    def tick(self, now: float) -> None:
        """Each pacer tick: stream silence over caller gaps, close app utterances."""
        if not self.streaming or self.encoder is None:
            return
        if self._app_tail_open and now - self._last_app_media > APP_IDLE_S:
            self._app_tail_open = False
            self.control.end_of_audio()
        if now - self._last_caller <= GAP_S:
            return
        buf = self._pending_in
        if buf:
            buf += SILENCE_ULAW[: CHUNK - len(buf)]
            self._send_chunk(bytes(buf))
            buf.clear()
        due_ms = (now - self._stream_t0) * 1000.0
        sent = 0
        while self.encoder.elapsed_ms + 20 <= due_ms and sent < MAX_FILL_PER_TICK:
            self._send_chunk(SILENCE_ULAW)
            sent += 1

    async def _writer(self, ws: ClientConnection) -> None:
        queue = self._queue
        try:
            while True:
                text = await queue.get()
                if text is None:
                    return
                await ws.send(text)
        except ConnectionClosed:
            pass

    # -- app -> caller -----------------------------------------------------------------

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._on_app_frame(frame)
        except ConnectionClosed:
            pass
        if self.closing:
            return
        self.streaming = False
        self.backend._unregister(self)
        code = ws.close_code
        done = self._stream_done
        if done is not None:  # a <Connect><Stream>: the TwiML decides what comes next
            self.log.info("the app closed the stream (code %s)", code)
            if not done.done():
                done.set_result(True)
            return
        if self.extra.get("on_app_close") == "continue":
            self.log.info("the app closed the stream (code %s); call continues", code)
            return
        self.log.info("the app closed the stream (code %s): hanging up", code)
        self.control.hangup("app-closed")

    def _on_app_frame(self, frame: str | bytes) -> None:
        try:
            msg = parse_app_message(frame)
        except StreamProtocolError as exc:
            self.errors += 1
            self.backend.metrics.app_messages_rejected.inc()
            if self.errors <= _MAX_LOGGED_ERRORS:
                self.log.warning("malformed message from the app dropped: %s", exc)
            return
        control = self.control
        if isinstance(msg, AppMedia):
            if msg.payload:
                control.play(ulaw_decode(msg.payload))
                self._last_app_media = time.monotonic()
                self._app_tail_open = True
        elif isinstance(msg, AppMark):
            self._mark_times.setdefault(msg.name, deque()).append(time.monotonic())
            self._app_tail_open = False
            control.end_of_audio()  # the marked utterance is complete: play its tail
            control.mark(msg.name)
        elif isinstance(msg, AppClear):
            self._app_tail_open = False
            control.clear()

    def on_marks(self, names: list[str]) -> None:
        now = time.monotonic()
        for name in names:
            if name.startswith(_INTERNAL_MARK):
                fut = self._internal.get(name)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            times = self._mark_times.get(name)
            if times:
                self.backend.metrics.mark_echo_delay.observe(now - times.popleft())
                if not times:
                    del self._mark_times[name]
            if self.streaming and self.encoder is not None and not self.encoder.stopped:
                self._enqueue(self.encoder.mark(name))

    # -- end ---------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        self.closing = True
        self.backend._unregister(self)
        runner = self.runner
        program = self._program
        if runner is not None:
            runner.call_ended()
            if runner.recording and program is not None and not program.done():
                # <Record> ends with the call and is still delivered to its action.
                await asyncio.wait({program}, timeout=self.backend.webhook_timeout + 2.0)
        for task in (self._start_task, program):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        for fut in self._internal.values():
            if not fut.done():
                fut.cancel()
        try:
            await self._stop_stream()
            await self.stop_fork(None)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if runner is not None:
                await runner.aclose(self.backend.close_timeout * 2)
            if self.errors or self.media_dropped:
                self.log.info("stream closed (%s): %d malformed app messages, %d media dropped",
                              reason, self.errors, self.media_dropped)
