"""``twilio-stream`` backend: the gateway plays Twilio's part toward a Media Streams app.

Why: teams leaving Twilio already have an AI voice app speaking the bidirectional Media
Streams protocol (``<Connect><Stream>``). This backend connects to that app as Twilio
would, so the app runs unchanged and only the media source changes (docs/PROTOCOLS.md §8).

How, per call (:class:`TwilioStreamSession`):

* ``start()``: optionally run the voice webhook (agent ``voice_url``, see
  :mod:`audiosocket_gw.twilio.webhook`) to learn the stream URL and its parameters;
  otherwise use the agent's ``stream_url`` (the default agent's comes from
  ``--stream-url``). Open a websockets client connection and send ``connected`` and
  ``start`` (``customParameters`` from the TwiML ``<Parameter>`` or the call metadata).
  All wire frames come from the pure :class:`~audiosocket_gw.twilio.TwilioStreamEncoder`.
* Caller audio (``on_audio``, any Asterisk frame size: 320 bytes per 20 ms, 480 per
  30 ms...) is mu-law encoded and re-cut into 160-byte chunks, each sent as one ``media``
  event as soon as it is complete (a 30 ms frame yields one chunk and keeps half a chunk
  for the next one). Asterisk sends nothing while the caller's channel produces no
  frames, but Twilio always streams: one backend-wide 20 ms timer (not a task per call)
  checks every session, and when no caller audio came for more than 40 ms it pads the
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
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..call import CallLog
from ..config import Config, ConfigError
from ..dsp.g711 import ulaw_decode, ulaw_encode
from ..tenants import Agent, Tenant, TenantsConfig, load_tenants
from ..twilio.callopts import KEYS as CALL_OPTION_KEYS
from ..twilio.callopts import CallOptions
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
from ..twilio.twiml import ConnectStream
from ..twilio.webhook import (
    WebhookError,
    announcement_pcm,
    run_voice_webhook,
    voice_params,
)
from .base import Backend, BackendError, BackendSession, CallControl, CallInfo

log = logging.getLogger("audiosocket_gw.backends.twilio_stream")

CHUNK: Final = 160
"""mu-law bytes in one 20 ms media event."""
SILENCE_ULAW: Final = b"\xff" * CHUNK
TICK_S: Final = 0.020
GAP_S: Final = 0.040
"""No caller audio for longer than this: stream silence in its place."""
APP_IDLE_S: Final = 0.060
"""No app media for this long: the app's utterance is over, play its partial tail."""
MAX_FILL_PER_TICK: Final = 5
"""Silence chunks sent per timer tick at most (no burst after a stalled loop)."""
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
        self.webhook_latency = Histogram(
            "aigw_twilio_webhook_seconds",
            "Voice webhook round trip (POST to TwiML parsed).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )


class TwilioStreamBackend(Backend):
    """Factory of :class:`TwilioStreamSession`; owns the shared timer and HTTP client."""

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
    ) -> None:
        """``stream_url`` is the default agent's URL; ``tenants`` (by id) hold each
        tenant's Twilio identity; ``env`` is where auth tokens are read (the gateway
        passes its settings' snapshot of the environment; none: requests go unsigned)."""
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
        self._ticker: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(
        cls, config: Config, registry: CollectorRegistry | None = None, *,
        tenants: TenantsConfig | None = None, env: Mapping[str, str] | None = None,
    ) -> TwilioStreamBackend:
        """Build from the gateway config: ``stream_url`` and the tenants.

        ``registry``: the gateway's metrics registry (a private one when None, so the
        ``aigw_twilio_*`` metrics are then counted but not exported). ``tenants``: the
        gateway's loaded tenants (read from ``config.config`` when None); ``env``: where
        tenant-named auth tokens are read.
        """
        if tenants is None:
            tenants = load_tenants(config.config)
        return cls(stream_url=config.stream_url, tenants=tenants.tenants, env=env,
                   metrics=TwilioStreamMetrics(registry))

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
            self._http = aiohttp.ClientSession()
        return self._http

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the shared 20 ms timer ------------------------------------------------------

    def _register(self, session: TwilioStreamSession) -> None:
        self.sessions.add(session)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick_loop(), name="twilio-stream-ticker"
            )

    def _unregister(self, session: TwilioStreamSession) -> None:
        self.sessions.discard(session)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while self.sessions:
            deadline += TICK_S
            now = loop.time()
            if deadline < now:  # blocked loop: skip ahead, never burst
                deadline = now + TICK_S
            await asyncio.sleep(deadline - now)
            mono = time.monotonic()
            for session in list(self.sessions):
                try:
                    session.tick(mono)
                except Exception:
                    session.log.exception("twilio-stream timer failed")
                    self.sessions.discard(session)


class TwilioStreamSession(BackendSession):
    """One call's Media Stream toward the app."""

    def __init__(self, backend: TwilioStreamBackend, info: CallInfo, control: CallControl) -> None:
        self.backend = backend
        self.info = info
        self.control = control
        self.log = CallLog(log, {"call_id": info.call_id})
        agent = info.agent_cfg
        self.extra: Mapping[str, str] = agent.extra if agent is not None else {}
        tenant = backend.tenants.get(info.tenant)
        self.call_sid = call_sid_for(info.call_id)
        self.account_sid = account_sid_for(info.tenant, tenant=tenant, agent=agent,
                                           env=backend.env)
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

    # -- start -----------------------------------------------------------------------

    def _twiml_source(self) -> tuple[str, str, str | None] | None:
        """Where this call's first TwiML comes from: ``(url, method, inline)``.

        A call placed through the Twilio REST API carries its own ``Url``/``Method`` or
        ``Twiml`` in its metadata (:mod:`audiosocket_gw.twilio.callopts`), which win
        over the agent's ``voice_url``; None: no TwiML, stream to the agent's URL.
        """
        opts = CallOptions.from_metadata(self.info.metadata)
        if opts.has_twiml:
            return opts.twiml_url, opts.twiml_method or "POST", opts.twiml or None
        agent = self.info.agent_cfg
        if agent is not None and agent.voice_url:
            return agent.voice_url, "POST", None
        return None

    async def _run_twiml(self, url: str, method: str,
                         twiml: str | None) -> ConnectStream | None:
        """Run a TwiML document (fetched or inline) until it streams or ends the call."""
        return await run_voice_webhook(
            self,
            self.backend.http,
            voice_url=url,
            method=method,
            twiml=twiml,
            params=voice_params(self.info, self.call_sid, self.account_sid),
            token=auth_token_for(tenant=self.backend.tenants.get(self.info.tenant),
                                 agent=self.info.agent_cfg, env=self.backend.env),
            time_limit=self.backend.webhook_timeout,
            call_log=self.log,
            observe_latency=self.backend.metrics.webhook_latency.observe,
        )

    async def start(self) -> None:
        self._start_task = asyncio.current_task()
        agent = self.info.agent_cfg
        params: Mapping[str, str] = {k: v for k, v in self.info.metadata.items()
                                     if k not in CALL_OPTION_KEYS}
        url = (agent.stream_url if agent is not None else None) or self.backend.stream_url
        source = self._twiml_source()
        if source is not None:
            try:
                stream = await self._run_twiml(*source)
            except WebhookError as exc:
                await self._fail(f"voice webhook failed: {exc}", exc.reason)
                return
            if stream is None:
                return  # the TwiML ended the call
            url, params = stream.url, stream.parameters
        if not url:
            raise BackendError("no stream URL for this agent (--stream-url)", reason="config")
        await self._open_stream(url, params)

    async def _open_stream(self, url: str, params: Mapping[str, str]) -> None:
        """Connect to the Media Streams app at ``url`` and start streaming."""
        try:
            ws = await asyncio.wait_for(
                connect(url, max_size=self.backend.max_message_bytes, open_timeout=None,
                        compression=None,  # base64 audio does not deflate; it only costs CPU
                        close_timeout=self.backend.close_timeout),
                self.backend.connect_timeout,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "connect"
            await self._fail(f"cannot connect to the stream app: {exc!r}", reason)
            return
        self.ws = ws
        self.encoder = TwilioStreamEncoder(
            stream_sid=stream_sid_for(self.info.call_id),
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            custom_parameters=params,
        )
        await ws.send(self.encoder.connected())
        await ws.send(self.encoder.start())
        self._stream_t0 = self._last_caller = self._last_app_media = time.monotonic()
        self.streaming = True
        self.log.info("media stream %s open", self.encoder.stream_sid)
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

    # -- live TwiML update (Twilio REST ``Calls/{Sid}`` with Url or Twiml) ------------

    async def rest_redirect(self, *, url: str | None, method: str = "POST",
                            twiml: str | None = None) -> None:
        """Interrupt what the call runs now (its TwiML or its Media Stream) and run the
        new document instead, as Twilio does on a live call update.

        Returns at once; the document runs in the session's own task (the previous
        redirect, if still running, is cancelled). A fetch that fails hangs the call
        up (reason ``redirect-failed``), as Twilio ends the call on an application
        error. Minimal stand-in for the TwiML executor's ``redirect``.
        """
        if self.closing:
            return
        start = self._start_task
        if start is not None and not start.done() and start is not asyncio.current_task():
            start.cancel()
        for task in list(self._tasks):
            if task.get_name() == "twilio-redirect":
                task.cancel()
        self._spawn(self._redirected(url or "", method, twiml), "twilio-redirect")

    async def _redirected(self, url: str, method: str, twiml: str | None) -> None:
        await self._stop_stream()
        self.control.clear()
        try:
            stream = await self._run_twiml(url, method, twiml)
        except WebhookError as exc:
            self.backend.metrics.app_connect_failures.labels(exc.reason).inc()
            self.log.warning("redirected TwiML failed: %s: hanging up", exc)
            self.control.hangup("redirect-failed")
            return
        if stream is not None and not self.closing:
            try:
                await self._open_stream(stream.url, stream.parameters)
            except BackendError as exc:
                self.log.warning("redirected stream failed: %s: hanging up", exc)
                self.control.hangup("redirect-failed")

    async def _stop_stream(self) -> None:
        """End the current Media Stream (``stop`` then close) without ending the call."""
        ws, enc = self.ws, self.encoder
        if ws is None or enc is None:
            return
        self.streaming = False
        self.backend._unregister(self)
        for task in list(self._tasks):
            if task.get_name() == "twilio-reader":
                task.cancel()
        if not enc.stopped:
            self._queue.put_nowait(enc.stop())
        self._queue.put_nowait(None)
        writers = [t for t in self._tasks if t.get_name() == "twilio-writer"]
        if writers:
            await asyncio.wait(writers, timeout=self.backend.close_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.backend.close_timeout)
        self.ws = self.encoder = None
        self._queue = asyncio.Queue()
        self._pending_in.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- TwimlHost (webhook execution and fallback) ------------------------------------

    async def play_and_wait(self, pcm: bytes) -> None:
        """Queue ``pcm`` and wait until the bridge has written all of it."""
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

    async def pause(self, seconds: float) -> None:
        """Comfort silence: the pacer writes silence while nothing is queued."""
        await asyncio.sleep(seconds)

    def hangup(self, reason: str) -> None:
        self.control.hangup(reason)

    # -- caller -> app -----------------------------------------------------------------

    def _room(self) -> bool:
        return self._queue.qsize() < self._limit

    def _enqueue(self, text: str) -> None:
        if self._room():
            self._queue.put_nowait(text)
        else:
            self.media_dropped += 1

    def _send_chunk(self, chunk: bytes) -> None:
        enc = self.encoder
        assert enc is not None
        if not self._room():  # decide before spending a sequence number
            self.media_dropped += 1
            self.backend.metrics.media_dropped.inc()
            return
        self._queue.put_nowait(enc.media(chunk))

    def on_audio(self, pcm: bytes) -> None:
        if not self.streaming:
            return
        self._last_caller = time.monotonic()
        buf = self._pending_in
        buf += ulaw_encode(pcm)
        while len(buf) >= CHUNK:
            self._send_chunk(bytes(buf[:CHUNK]))
            del buf[:CHUNK]

    def on_dtmf(self, digit: str) -> None:
        if self.streaming and digit in DTMF_DIGITS and self.encoder is not None:
            self._enqueue(self.encoder.dtmf(digit))

    def tick(self, now: float) -> None:
        """The shared 20 ms timer: stream silence over caller gaps, close app utterances."""
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
        start = self._start_task
        if start is not None and not start.done() and start is not asyncio.current_task():
            start.cancel()
        for fut in self._internal.values():
            if not fut.done():
                fut.cancel()
        ws = self.ws
        enc = self.encoder
        try:
            if ws is not None and enc is not None:
                if self.streaming and not enc.stopped:
                    self.streaming = False
                    self._queue.put_nowait(enc.stop())  # after everything already queued
                self._queue.put_nowait(None)
                self.streaming = False
                writers = [t for t in self._tasks if t.get_name() == "twilio-writer"]
                if writers:
                    await asyncio.wait(writers, timeout=self.backend.close_timeout)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), self.backend.close_timeout)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.errors or self.media_dropped:
                self.log.info("stream closed (%s): %d malformed app messages, %d media dropped",
                              reason, self.errors, self.media_dropped)
