"""OpenAI Realtime backend (GA shape): one WebSocket session per call.

What it does, per call (``OpenAISession``):

* Connects to ``<openai_url>?model=<model>`` with ``Authorization: Bearer <key>``
  (websockets ``connect(..., additional_headers=..., max_size=None)``), sends the GA
  ``session.update`` (``audio/pcmu`` both ways by default: slin 8 kHz <-> mu-law by
  table lookup, nothing resampled; ``audio_format = "pcm24"`` sends ``audio/pcm`` at
  24 kHz through :class:`~audiosocket_gw.dsp.resample.StreamResampler` in both
  directions, filter state carried across chunks). Every message is built and parsed by
  :mod:`audiosocket_gw.realtime.protocol`; no JSON is written by hand here.
* Caller audio is batched into ``input_audio_buffer.append`` of ``append_ms`` (40 ms),
  written at once when nothing is queued (:func:`~audiosocket_gw.wssend.send_now`), else
  queued on a bounded send path: ``on_audio`` never blocks or awaits; when the
  socket cannot keep up the oldest queued append is dropped and counted. Control
  messages (truncate, cancel, context replay) jump queued audio.
* Bot audio deltas go to ``control.play(pcm, item_id)``; ``response.output_audio.done``
  and ``response.done`` end the utterance (``control.end_of_audio()``). With an agent
  ``greeting`` the bot speaks first (``conversation.item.create`` + ``response.create``).
* Barge-in is exact: the bridge cuts playout locally on its own VAD and calls
  :meth:`OpenAISession.on_barge_in`; ``input_audio_buffer.speech_started`` while bot
  audio is pending makes the session cut it (``control.barge_in("server-vad")``, which
  calls back :meth:`OpenAISession.on_barge_in`). Either way the server then gets
  ``conversation.item.truncate`` with ``audio_end_ms`` = the milliseconds of that item
  the pacer really wrote, clamped to what was received, and ``response.cancel`` only if
  the response is still active and the server does not cancel it itself (see
  :class:`~audiosocket_gw.backends.openai_policy.TurnTracker`). Late deltas of the cut
  response are dropped.
* Reconnect guard: a close with 1001/1005/1006/1011/1012/1013/1015, a network error, a
  failed handshake (5xx, 429, timeout) or ``session_expired`` opens a new session after
  an exponential backoff and replays the transcripts so far as conversation items;
  the caller hears the pacer's comfort silence meanwhile. After ``reconnect_attempts``
  consecutive failures the call is hung up with reason ``backend-unavailable``. HTTP
  401/403 on the upgrade is never retried (reason ``backend-auth``). Malformed or unknown
  server events are logged, counted and skipped: never fatal.
* Transcripts: ``conversation.item.input_audio_transcription.completed`` (caller) and
  ``response.output_audio_transcript.done`` (bot) go to ``control.transcript`` and to the
  debug dump.
* Debug dump (opt-in: agent ``debug_dump`` or ``--debug-dump``): a
  :class:`~audiosocket_gw.dump.CallDump` is attached with ``control.add_tap`` and fed the
  backend events.

* Agent tools (:mod:`audiosocket_gw.agenttools`): the session declares the agent's
  webhook tools and enabled built-ins. A function call (``response.function_call_
  arguments.done`` or a ``function_call`` item in ``response.output_item.done``, both
  deduplicated on ``call_id``) runs in its own task, at most ``max_concurrent_tools``
  at once per call: webhooks get an HTTP POST (signed when the tool names a secret),
  and the result (or an ``{"error": ...}`` after a timeout or failure) goes back as a
  ``function_call_output`` item followed by ``response.create`` (deferred to the end of
  the active response). Built-ins: ``end_call`` hangs up with reason ``agent-ended``
  once the bot's queued audio was played (a mark); ``transfer_call`` does the same, then
  hands the caller to the destination's ``Dial()`` (``control.dial``); when the caller
  comes back (a resumed leg carrying ``aigw_transfer`` and ``dial_status``) the session
  hangs up after an answered transfer, tries the destination's ``fallback``, hangs up
  (``on_failure = "hangup"``) or tells the model the transfer failed, after replaying
  the conversation so far (carried in memory as ``aigw_history``, never stored);
  ``send_dtmf`` plays digits through AMI PlayDTMF (``control.send_dtmf``). Every call
  and transfer start goes to ``control.agent_event`` (event log, metrics); a transfer's
  outcome is logged and counted by the AMI call controller, from AMI.
* Caller DTMF (agent ``dtmf_to_model``): digits are collected until a pause of
  ``dtmf_debounce_ms`` and sent as one user text item, then ``response.create``.

Per-agent settings are the agent's ``instructions``/``voice``/``greeting`` and the
``extra`` keys documented in :mod:`audiosocket_gw.backends.openai_policy`.

Counting: errors go to the existing ``aigw_backend_errors_total{backend="openai",
reason}`` (reasons: auth, connect, disconnect, session-expired, server-error,
malformed-event, config); barge-ins by source to ``aigw_barge_ins_total`` through the
bridge. Finer counters (reconnects, dropped appends, unknown events...) are kept in
``OpenAIBackend.counters`` (a ``collections.Counter`` shared by the backend's sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..agenttools import DTMF_DIGITS_RE, ToolResult, call_webhook, error_output, redact
from ..config import Config, ConfigError, is_loopback
from ..dial import (
    DIAL_OUTCOME_WAIT_S,
    TRANSFER_METADATA_KEY,
    TRANSFER_SUMMARY_KEY,
    DialRequest,
    DialTarget,
)
from ..dsp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from ..dsp.resample import StreamResampler
from ..dump import CallDump
from ..realtime import protocol as rt
from ..tenants import Agent, ToolSpec, TransferDestination
from ..wssend import send_now
from .base import Backend, BackendSession, CallControl, CallInfo, CallLog
from .openai_policy import (
    ContextHistory,
    OpenAISettings,
    ReconnectPolicy,
    TurnTracker,
    settings_for,
)

__all__ = ["OpenAIBackend", "OpenAISession"]

log = logging.getLogger("audiosocket_gw.backends.openai")

SEND_QUEUE_MS: Final = 2000  # caller audio allowed to wait for the socket
CONTROL_QUEUE_MAX: Final = 256
CLOSE_TIMEOUT_S: Final = 2.0
_LOG_EVERY: Final = 100  # log malformed/unknown events once per this many
TRANSFER_KEY: Final = TRANSFER_METADATA_KEY
"""Metadata key of a resumed leg: the transfer destination the caller comes back from."""
END_CALL_MAX_WAIT_S: Final = 30.0
"""Longest wait for the bot's last words before ``end_call``/``transfer_call`` act."""
HISTORY_KEY: Final = "aigw_history"
"""Metadata key carrying the conversation (JSON ``[[role, text], ...]``) to the leg the
caller comes back on after a transfer, so the agent remembers it."""
MAX_HISTORY_CHARS: Final = 8000
_END_MARK: Final = "aigw-agent-action"
_SEEN_CALLS: Final = 64

Sleep = Callable[[float], Awaitable[None]]


def compose_url(base: str, model: str | None) -> str:
    """``base`` with ``model=`` set in its query (replacing one already there if given)."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    has_model = any(k == "model" for k, _ in query)
    if model:
        query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
    elif not has_model:
        raise ConfigError("AIGW_OPENAI_MODEL: a Realtime model is required")
    return urlunsplit(parts._replace(query=urlencode(query)))


class OpenAIBackend(Backend):
    """Factory of :class:`OpenAISession` (one per call)."""

    name = "openai"

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        data_dir: str | Path | None = None,
        debug_dump: bool = False,
        sleep: Sleep = asyncio.sleep,
        secret: Callable[[str], str | None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"AIGW_OPENAI_URL: expected a ws:// or wss:// URL, got {url!r}")
        self.url = url
        self.model = model
        self.api_key = api_key
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.debug_dump = debug_dump
        self.sleep = sleep
        self.secret = secret if secret is not None else (lambda name: None)
        self.counters: Counter[str] = Counter()
        self._http: aiohttp.ClientSession | None = None
        compose_url(url, model)  # fail at start-up, not on the first call

    def http(self) -> aiohttp.ClientSession:
        """The HTTP client of webhook tools (one per backend, made on first use)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100), trust_env=False)
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    @classmethod
    def from_config(cls, config: Config, *,
                    secret: Callable[[str], str | None] | None = None) -> OpenAIBackend:
        """Build from ``AIGW_OPENAI_URL``/``AIGW_OPENAI_MODEL``/``OPENAI_API_KEY``.

        A key is required for OpenAI's own host; a local bot (``ws://127.0.0.1...``)
        runs without one.
        """
        host = urlsplit(config.openai_url).hostname or ""
        if not config.openai_api_key and (host == "openai.com" or host.endswith(".openai.com")):
            raise ConfigError(f"OPENAI_API_KEY is required for {config.openai_url}")
        return cls(
            config.openai_url,
            model=config.openai_model,
            api_key=config.openai_api_key,
            data_dir=config.data_path,
            debug_dump=config.debug_dump,
            secret=secret,
        )

    def url_for(self, settings: OpenAISettings) -> str:
        """The WebSocket URL of one session (the agent's model wins over the config's)."""
        return compose_url(self.url, settings.model or self.model)

    def check_agent(self, agent: Agent) -> None:
        settings_for(agent)
        for spec in agent.tools:
            if spec.secret_env and not self.secret(spec.secret_env):
                raise ConfigError(f"tool {spec.name!r}: secret_env {spec.secret_env}: "
                                  "that environment variable is not set")
            parts = urlsplit(spec.url)
            if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                log.warning("agent %s: tool %s posts call data over plain http to %s; "
                            "use https", agent.name, spec.name, parts.hostname)

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        error: ConfigError | None = None
        try:
            settings = settings_for(call.agent_cfg)
        except ConfigError as exc:
            settings, error = OpenAISettings(), exc
        dump: CallDump | None = None
        wants_dump = self.debug_dump or (call.agent_cfg is not None and call.agent_cfg.debug_dump)
        if wants_dump and self.data_dir is not None:
            try:
                dump = CallDump(self.data_dir / "dumps", call.call_id)
            except (OSError, RuntimeError) as exc:
                log.warning("call %s: debug dump not available: %s", call.call_id, exc)
            else:
                control.add_tap(dump)
        return OpenAISession(self, call, control, settings, config_error=error, dump=dump)


class OpenAISession(BackendSession):
    """One call's Realtime session, reconnected as needed (see the module docstring)."""

    def __init__(
        self,
        backend: OpenAIBackend,
        call: CallInfo,
        control: CallControl,
        settings: OpenAISettings,
        *,
        config_error: ConfigError | None = None,
        dump: CallDump | None = None,
    ) -> None:
        self.backend = backend
        self.info = call
        self.settings = settings
        self.policy: ReconnectPolicy = settings.policy()
        self.log = CallLog.for_call(log, call)
        self.dump = dump
        self.counters = backend.counters
        self.stats: Counter[str] = Counter()  # this call only
        self._control = control
        self._config_error = config_error
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._audio_q: deque[str] = deque()
        self._audio_q_max = max(1, SEND_QUEUE_MS // settings.append_ms)
        self._control_q: deque[str] = deque()
        self._wake = asyncio.Event()
        self._pending_in = bytearray()
        self._append_bytes = settings.append_ms * 16
        fmt = settings.audio_format
        self._encode: Callable[[bytes], bytes]
        self._decode: Callable[[bytes], bytes]
        self._in_rs = self._out_rs = None
        if fmt == "pcm24":
            self._in_rs = StreamResampler(8000, 24000)
            self._out_rs = StreamResampler(24000, 8000)
            self._encode, self._decode = self._in_rs.process, self._out_rs.process
        elif fmt == "pcma":
            self._encode, self._decode = alaw_encode, alaw_decode
        else:
            self._encode, self._decode = ulaw_encode, ulaw_decode
        self.tracker = TurnTracker(settings.wire_bytes_per_ms)
        self.history = ContextHistory(settings.replay_items)
        self.sessions = 0  # WebSocket sessions opened so far
        self._session_ok = False
        self._expired = False
        self._greeted = False
        self._closing = False
        self._server_cut = False
        self._first_delta: str | None = None
        self.ended_reason: str | None = None
        # agent tools
        agent = call.agent_cfg
        self._agent = agent
        self._webhooks: dict[str, ToolSpec] = {t.name: t for t in agent.tools} if agent else {}
        self._builtins = frozenset(agent.builtin_tools) if agent else frozenset()
        self._tool_sem = asyncio.Semaphore(agent.max_concurrent_tools if agent else 2)
        self._tool_limit = 4 * (agent.max_concurrent_tools if agent else 2)
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._seen_calls: deque[str] = deque(maxlen=_SEEN_CALLS)
        self._want_response = False  # a response.create waits for the active one to end
        self._create_sent = False  # response.create sent, response.created not yet seen
        self._ending = False  # end_call / transfer_call: the bot says nothing more
        self._after_response: list[Callable[[], None]] = []
        self._after_marks: dict[str, Callable[[], None]] = {}
        self._after_timers: dict[str, asyncio.TimerHandle] = {}
        self._mark_seq = itertools.count()
        self._resume_note: str | None = None
        self._load_history(call.metadata.get(HISTORY_KEY, ""))
        self._dtmf: list[str] = []
        self._dtmf_timer: asyncio.TimerHandle | None = None

    # -- BackendSession ------------------------------------------------------------

    async def start(self) -> None:
        """Start the session task and return at once (connecting happens behind)."""
        if self._config_error is not None:
            self.log.error("openai agent settings: %s", self._config_error)
            self._fail("config", "backend-config")
            return
        if await self._after_transfer():
            return
        loop = asyncio.get_running_loop()
        self._runner = loop.create_task(self._run(), name=f"{self.info.call_id}:openai")

    def on_audio(self, pcm: bytes) -> None:
        ws = self._ws
        if ws is None:
            self.stats["audio_dropped_disconnected"] += 1
            return
        buf = self._pending_in
        buf += pcm
        if len(buf) < self._append_bytes:
            return
        chunk = bytes(buf)
        buf.clear()
        wire = self._encode(chunk)
        if not wire:
            return
        message = rt.input_audio_append(wire)
        q = self._audio_q
        if not q and not self._control_q and send_now(ws, message):
            return  # nothing waits for the writer task: sent now, no task switch
        if len(q) >= self._audio_q_max:
            q.popleft()
            self.stats["appends_dropped"] += 1
            self.counters["appends_dropped"] += 1
        q.append(message)
        self._wake.set()

    def on_barge_in(self) -> None:
        """Playout was cut for the caller: truncate to what was played, cancel if needed."""
        self._interrupted("server-vad" if self._server_cut else "local-vad")

    def _interrupted(self, source: str) -> None:
        self.stats[f"barge_in_{source}"] += 1
        item = self.tracker.current_item
        played = self._control.played_ms(item) if item is not None else 0
        server_cancels = source == "server-vad" and self.settings.interrupt_response
        plan = self.tracker.barge_in(played, server_cancels=server_cancels)
        if self._out_rs is not None:
            self._out_rs.reset()
        if plan.truncate is not None:
            item_id, end_ms = plan.truncate
            self._send_control(rt.item_truncate(item_id, end_ms))
        if plan.cancel:
            self._send_control(rt.response_cancel(plan.response_id))
        self._dump("gateway.barge_in", source=source, played_ms=played,
                   truncate=plan.truncate, cancel=plan.cancel)
        self.log.info("barge-in (%s): truncate %s, cancel %s", source, plan.truncate, plan.cancel)

    async def close(self, reason: str) -> None:
        self._closing = True
        for timer in self._after_timers.values():
            timer.cancel()
        self._after_timers.clear()
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        for task in list(self._tool_tasks):
            task.cancel()
        if self._tool_tasks:
            await asyncio.gather(*self._tool_tasks, return_exceptions=True)
        runner, self._runner = self._runner, None
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "call ended"), CLOSE_TIMEOUT_S)
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        self._dump("gateway.close", reason=reason, stats=dict(self.stats))

    # -- connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            outcome = await self._connect_and_serve()
            if self._closing:
                return
            if outcome is not None:  # fatal: a reason to hang up with
                return
            if self._session_ok:
                attempt = 0
            attempt += 1
            delay = self.policy.delay(attempt)
            if delay is None:
                self.log.warning("openai: giving up after %d failed attempts", attempt - 1)
                self._fail("unavailable", "backend-unavailable")
                return
            self.counters["reconnects"] += 1
            self.stats["reconnects"] += 1
            self._dump("gateway.reconnect_wait", attempt=attempt, delay_s=delay)
            await self.backend.sleep(delay)

    async def _connect_and_serve(self) -> str | None:
        """One WebSocket session. None = retry later; a string = hung up for that reason."""
        self._session_ok = False
        self._expired = False
        url = self.backend.url_for(self.settings)
        headers = {}
        if self.backend.api_key:
            headers["Authorization"] = f"Bearer {self.backend.api_key}"
        self.counters["connect_attempts"] += 1
        self.stats["connect_attempts"] += 1
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                max_size=None,
                compression=None,
                open_timeout=self.settings.connect_timeout_s,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            self._dump("gateway.connect_failed", status=status)
            if status in (401, 403):
                self.log.error("openai: handshake refused with HTTP %d (check OPENAI_API_KEY)",
                               status)
                return self._fail("auth", "backend-auth")
            if not self.policy.retry_status(status):
                self.log.error("openai: handshake refused with HTTP %d", status)
                return self._fail("rejected", "backend-rejected")
            self.log.warning("openai: handshake failed with HTTP %d", status)
            self._count_error("connect")
            return None
        except InvalidURI as exc:
            self.log.error("openai: bad URL: %s", exc)
            return self._fail("config", "backend-config")
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.log.warning("openai: connect failed: %s", exc.__class__.__name__)
            self._dump("gateway.connect_failed", error=exc.__class__.__name__)
            self._count_error("connect")
            return None
        if self._closing:
            await ws.close()
            return "closed"
        return await self._serve(ws)

    async def _serve(self, ws: ClientConnection) -> str | None:
        self.sessions += 1
        reconnect = self.sessions > 1
        self.tracker.reset()
        self._first_delta = None
        for rs in (self._in_rs, self._out_rs):
            if rs is not None:
                rs.reset()
        self._pending_in.clear()
        self._audio_q.clear()
        self._control_q.clear()
        self._create_sent = self._want_response = False
        self._send_control(rt.session_update(self.settings.session_config()))
        if reconnect:
            replayed = self._replay()
            self.log.info("openai: reconnected (session %d), %d items replayed",
                          self.sessions, replayed)
        elif self._resume_note is not None and not self._greeted:
            self._greeted = True
            self._replay()  # the conversation before the transfer
            self._send_control(rt.conversation_item_create_text("system", self._resume_note))
            self._send_response_create()
        elif self.settings.greeting and not self._greeted:
            self._greeted = True
            greeting = self.settings.greeting
            self._send_control(rt.conversation_item_create_text(
                "system", "The call has just been answered. Greet the caller."))
            self._send_control(rt.response_create(
                instructions=f'Start the call by saying exactly: "{greeting}"'))
        self._ws = ws
        writer = asyncio.get_running_loop().create_task(
            self._write_loop(ws), name=f"{self.info.call_id}:openai-send")
        try:
            async for message in ws:
                self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._control.end_of_audio()
        code = ws.close_code
        self._dump("gateway.disconnected", code=code, expired=self._expired)
        if self._closing:
            return "closed"
        if self.policy.retry_close(code, expired=self._expired):
            self.log.warning("openai: session closed (%s); reconnecting", code)
            self._count_error("session-expired" if self._expired else "disconnect")
            return None
        self.log.error("openai: session closed with %s; not retried", code)
        return self._fail("closed", "backend-closed")

    def _replay(self) -> int:
        """Send the transcripts so far as conversation items; returns how many."""
        replayed = 0
        for role, text in self.history:
            if role == "caller":
                self._send_control(rt.conversation_item_create_text("user", text))
            else:
                self._send_control(rt.conversation_item_create_assistant_text(text))
            replayed += 1
        self._dump("gateway.context_replayed", items=replayed)
        return replayed

    async def _write_loop(self, ws: ClientConnection) -> None:
        """The only sender on ``ws``: control messages first, then queued audio."""
        control_q, audio_q, wake = self._control_q, self._audio_q, self._wake
        try:
            while True:
                if control_q:
                    await ws.send(control_q.popleft())
                elif audio_q:
                    await ws.send(audio_q.popleft())
                else:
                    wake.clear()
                    await wake.wait()
        except ConnectionClosed:
            return

    def _send_control(self, message: str) -> None:
        if len(self._control_q) >= CONTROL_QUEUE_MAX:
            self.stats["control_dropped"] += 1
            return
        self._control_q.append(message)
        self._wake.set()

    # -- server events ---------------------------------------------------------------

    def _handle(self, message: str | bytes) -> None:
        try:
            ev = rt.parse_server_event(message)
        except rt.RealtimeProtocolError as exc:
            self.stats["malformed_events"] += 1
            self.counters["malformed_events"] += 1
            self._count_error("malformed-event")
            if self.stats["malformed_events"] % _LOG_EVERY == 1:
                self.log.warning("openai: malformed server event skipped: %s", exc)
            self._dump("gateway.malformed_event", error=str(exc)[:200])
            return
        control = self._control
        if isinstance(ev, rt.AudioDelta):
            if not self.tracker.audio(ev.response_id, ev.item_id, len(ev.audio)):
                self.stats["deltas_dropped_cut"] += 1
                return
            pcm = self._decode(ev.audio)
            if pcm:
                control.play(pcm, ev.item_id)
            if self._first_delta != ev.item_id:
                self._first_delta = ev.item_id
                self._dump("response.output_audio.delta", item_id=ev.item_id, first=True)
        elif isinstance(ev, rt.OutputTranscriptDelta | rt.RateLimitsUpdated):
            pass
        elif isinstance(ev, rt.SpeechStarted):
            self._dump("input_audio_buffer.speech_started", audio_start_ms=ev.audio_start_ms)
            self._on_speech_started()
        elif isinstance(ev, rt.ResponseCreated):
            self._create_sent = False
            self.tracker.response_created(ev.response_id)
            self._dump("response.created", response_id=ev.response_id)
        elif isinstance(ev, rt.AudioDone):
            if not self.tracker.is_cut(ev.response_id):
                if self._out_rs is not None:
                    tail = self._out_rs.flush()
                    if tail:
                        control.play(tail, ev.item_id)
                control.end_of_audio()
            self._dump("response.output_audio.done", item_id=ev.item_id)
        elif isinstance(ev, rt.ResponseDone):
            self.tracker.response_done(ev.response_id)
            control.end_of_audio()
            self._dump("response.done", status=ev.status, reason=ev.reason)
            self._response_ended()
        elif isinstance(ev, rt.FunctionCall):
            self._on_function_call(ev)
        elif isinstance(ev, rt.OutputTranscriptDone):
            self._transcript("bot", ev.transcript)
        elif isinstance(ev, rt.InputTranscriptionCompleted):
            self._transcript("caller", ev.transcript)
        elif isinstance(ev, rt.SessionCreated):
            self._session_ok = True
            self._dump("session.created")
        elif isinstance(ev, rt.ErrorEvent):
            self._on_error(ev)
        elif isinstance(ev, rt.Unknown):
            self.stats["unknown_events"] += 1
            self.counters["unknown_events"] += 1
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("openai: event %s ignored", ev.type)
        else:
            self._dump(type(ev).__name__)

    def _on_speech_started(self) -> None:
        control = self._control
        if control.bot_audio_pending:
            self._server_cut = True
            try:
                control.barge_in("server-vad")  # clears playout, then calls on_barge_in()
            finally:
                self._server_cut = False
        elif self.tracker.active_response is not None and not self.tracker.is_cut(
                self.tracker.active_response):
            # All audio received so far has been heard (the playout ran dry between
            # deltas) but the response goes on: the server cancels it (interrupt_response)
            # or we do; truncate to what was played, drop deltas still in flight.
            self._interrupted("server-vad")

    def _on_error(self, ev: rt.ErrorEvent) -> None:
        self._dump("error", code=ev.code, error_type=ev.type, message=ev.message[:300])
        if ev.code == "session_expired":
            self._expired = True
            self.log.info("openai: session expired; a new one will be opened")
            return
        self.stats[f"error_{ev.code or ev.type}"[:64]] += 1
        if ev.code == "response_cancel_not_active":
            self.log.debug("openai: cancel raced the server's own cancel")
            return
        self._count_error("server-error")
        self.log.warning("openai: server error %s: %s", ev.code or ev.type, ev.message[:200])

    def _transcript(self, role: str, text: str) -> None:
        self._control.transcript(role, text)
        self.history.add(role, text)
        self._dump("transcript", role=role, text=text)

    # -- helpers ---------------------------------------------------------------------

    def _dump(self, kind: str, **fields: Any) -> None:
        if self.dump is not None:
            self.dump.event(kind, **fields)

    def _count_error(self, reason: str) -> None:
        self.counters[f"error_{reason}"] += 1
        self._control.backend_error(reason)

    def _fail(self, error: str, reason: str) -> str:
        """Count ``error`` and hang the call up with ``reason``; returns the reason."""
        self._count_error(error)
        self.ended_reason = reason
        self._dump("gateway.hangup", reason=reason)
        self._control.hangup(reason)
        return reason

    # -- agent tools -----------------------------------------------------------------

    def _send_response_create(self) -> None:
        self._create_sent = True
        self._send_control(rt.response_create())

    def _request_response(self) -> None:
        """Ask for a response now, or once the active one has ended."""
        if self._ending or self._closing:
            return
        if self.tracker.active_response is None and not self._create_sent:
            self._send_response_create()
        else:
            self._want_response = True

    def _response_ended(self) -> None:
        actions, self._after_response = self._after_response, []
        for action in actions:  # e.g. end_call and transfer_call in one response
            self._after_audio(action)
        if self._want_response and self.tracker.active_response is None:
            self._want_response = False
            self._request_response()

    def _after_audio(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the bot audio queued so far was played (or at the latest
        after ``END_CALL_MAX_WAIT_S``)."""
        name = f"{_END_MARK}-{next(self._mark_seq)}"

        def once() -> None:  # from the mark or the timer, whichever comes first
            self._after_marks.pop(name, None)
            timer = self._after_timers.pop(name, None)
            if timer is None:
                return  # already ran
            timer.cancel()
            if not self._closing:
                action()

        self._after_marks[name] = once
        self._after_timers[name] = asyncio.get_running_loop().call_later(
            END_CALL_MAX_WAIT_S, once)
        self._control.mark(name)

    def on_marks(self, names: list[str]) -> None:
        for name in names:
            action = self._after_marks.pop(name, None)
            if action is not None:
                action()

    def _when_said(self, response_id: str, action: Callable[[], None]) -> None:
        """``action`` after this response's audio: at its ``response.done``, then a mark."""
        if self.tracker.active_response == response_id:
            self._after_response.append(action)
        else:
            self._after_audio(action)

    def _event(self, what: str, /, **data: object) -> None:
        self._control.agent_event(what, data)

    def _on_function_call(self, ev: rt.FunctionCall) -> None:
        if ev.call_id in self._seen_calls:
            return
        self._seen_calls.append(ev.call_id)
        self._dump("function_call", name=ev.name, call_id=ev.call_id)
        try:
            parsed = json.loads(ev.arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            # The name is the model's: only a declared tool's becomes a metric label.
            known = ev.name in self._builtins or ev.name in self._webhooks
            self._tool_done(ev.name if known else "unknown", ev.call_id, {}, ToolResult(
                "invalid_arguments", error_output(
                    "invalid_arguments", "The arguments must be a JSON object.")))
            return
        args: dict[str, object] = parsed
        name = ev.name
        if name in self._builtins:
            self._builtin(name, ev, args)
        elif name in self._webhooks:
            if len(self._tool_tasks) >= self._tool_limit:
                self._tool_done(name, ev.call_id, args, ToolResult("busy", error_output(
                    "busy", "Too many tool calls are running; try again shortly.")))
                return
            task = asyncio.get_running_loop().create_task(
                self._run_webhook(self._webhooks[name], ev.call_id, args),
                name=f"{self.info.call_id}:tool-{name}")
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)
        else:
            self._tool_done("unknown", ev.call_id, args, ToolResult(
                "unknown_tool", error_output("unknown_tool", f"There is no tool {name!r}.")))

    async def _run_webhook(self, spec: ToolSpec, call_id: str, args: dict[str, object]
                           ) -> None:
        info = self.info
        payload = {"tool": spec.name, "tool_call_id": call_id, "call_id": info.call_id,
                   "tenant": info.tenant, "agent": info.agent, "direction": info.direction,
                   "from": info.from_, "to": info.to, "arguments": args}
        try:
            async with self._tool_sem:
                secret = self.backend.secret(spec.secret_env) if spec.secret_env else None
                result = await call_webhook(self.backend.http(), spec, payload, secret)
        except Exception as exc:  # noqa: BLE001 - a tool never takes the call down
            self.log.warning("tool %s failed: %s", spec.name, exc.__class__.__name__)
            result = ToolResult("error", error_output("error", "The tool failed."))
        if result.outcome != "ok":
            self.log.info("tool %s: %s after %d ms", spec.name, result.outcome,
                          result.latency_ms)
        self._tool_done(spec.name, call_id, args, result)

    def _tool_done(self, name: str, call_id: str, args: Mapping[str, object],
                   result: ToolResult, *, reply: bool = True) -> None:
        self._event("tool", name=name, tool_call_id=call_id, outcome=result.outcome,
                    latency_ms=result.latency_ms, status=result.status,
                    arguments=redact(args), result=result.output[:500])
        if reply and not self._closing:
            self._send_control(rt.function_call_output(call_id, result.output))
            self._request_response()

    def _builtin(self, name: str, ev: rt.FunctionCall, args: dict[str, object]) -> None:
        ok = ToolResult("ok", json.dumps({"ok": True}))
        if name == "end_call":
            self._ending = True
            self._tool_done(name, ev.call_id, args, ok, reply=False)
            self.log.info("agent ends the call")
            self._when_said(ev.response_id, lambda: self._hangup("agent-ended"))
        elif name == "send_dtmf":
            digits = args.get("digits")
            if not isinstance(digits, str) or not DTMF_DIGITS_RE.fullmatch(digits):
                self._tool_done(name, ev.call_id, args, ToolResult(
                    "invalid_arguments", error_output(
                        "invalid_arguments", "digits: 0-9 * # A-D and w, at most 64.")))
                return
            self._control.send_dtmf(digits)
            self._tool_done(name, ev.call_id, {"digits": len(digits)}, ToolResult(
                "ok", json.dumps({"ok": True, "sent": digits})))
        elif name == "transfer_call":
            agent = self._agent
            dests = agent.transfer_destinations if agent is not None else {}
            wanted = args.get("destination")
            dest = dests.get(wanted) if isinstance(wanted, str) else None
            if dest is None:
                self._tool_done(name, ev.call_id, args, ToolResult(
                    "invalid_arguments", error_output(
                        "unknown_destination",
                        f"Transfer destinations are: {', '.join(dests)}.")))
                return
            summary = args.get("summary")
            note = summary[:400] if isinstance(summary, str) else ""
            self._ending = True
            self._tool_done(name, ev.call_id, args, ok, reply=False)
            self._when_said(ev.response_id, lambda: self._transfer(dest, note))

    def _hangup(self, reason: str) -> None:
        self.ended_reason = reason
        self._dump("gateway.hangup", reason=reason)
        self._control.hangup(reason)

    def _transfer(self, dest: TransferDestination, summary: str = "") -> None:
        # An attended transfer always brings the caller back when the person declines
        # (the caller never met the person); call control runs it (attended.py).
        resume = dest.on_failure == "bot" or dest.fallback is not None \
            or dest.mode == "attended"
        self._event("transfer", destination=dest.name, kind=dest.mode, outcome="started",
                    target=dest.kind, resume=resume)
        self.log.info("%s transfer to %s (%s)", dest.mode, dest.name, dest.kind)
        metadata = {TRANSFER_KEY: dest.name}
        if dest.mode == "attended":
            metadata[TRANSFER_SUMMARY_KEY] = summary or dest.summary
        if resume:
            lines = list(self.history)
            while lines and len(json.dumps(lines)) > MAX_HISTORY_CHARS:
                lines.pop(0)  # keep the latest lines that fit
            metadata[HISTORY_KEY] = json.dumps(lines, ensure_ascii=False)
        self._control.dial(DialRequest(
            targets=(DialTarget(dest.kind, dest.address),), timeout_s=dest.timeout_s,
            resume=resume, metadata=metadata))

    def _load_history(self, raw: str) -> None:
        if not raw:
            return
        try:
            lines = json.loads(raw)
        except ValueError:
            return
        if isinstance(lines, list):
            for line in lines:
                if (isinstance(line, list) and len(line) == 2
                        and all(isinstance(x, str) for x in line)):
                    self.history.add(line[0], line[1])

    async def _after_transfer(self) -> bool:
        """On a leg resumed after a transfer: act on its outcome. True = done here."""
        meta = self.info.metadata
        name = meta.get(TRANSFER_KEY)
        if not name or not meta.get("parent_call_id"):
            return False
        status = meta.get("dial_status")
        if not status:  # the AMI VarSets may trail the new AudioSocket connection
            outcome = await self._control.dial_outcome(DIAL_OUTCOME_WAIT_S)
            status = outcome.status if outcome is not None else "failed"
        agent = self._agent
        dests = agent.transfer_destinations if agent is not None else {}
        dest = dests.get(name)
        # (the outcome itself is logged and counted by the AMI call controller)
        if status in ("completed", "answered"):
            self._hangup("transfer-completed")  # the person hung up: the call is over
            return True
        if dest is not None and dest.fallback is not None and dest.fallback in dests:
            self._transfer(dests[dest.fallback])
            return True
        if dest is not None and dest.on_failure == "hangup":
            self._hangup("transfer-failed")
            return True
        self._resume_note = (
            f"You tried to transfer the caller to {name}, but the transfer did not go "
            f"through ({status}). The caller is back with you: tell them, and offer "
            "another way to help.")
        return False

    def on_dial_failed(self, reason: str) -> None:
        # transfer_call could not start (AMI down, channel unknown): this leg is still
        # up, so the agent goes on and says so.
        self._ending = False
        self._event("transfer_refused", reason=reason[:200])
        if self._ws is not None:
            self._send_control(rt.conversation_item_create_text(
                "system", "The transfer could not be started. Tell the caller, and "
                "offer another way to help."))
            self._request_response()

    def on_dtmf(self, digit: str) -> None:
        agent = self._agent
        if agent is None or not agent.dtmf_to_model or self._closing:
            return
        if len(self._dtmf) < 64:
            self._dtmf.append(digit)
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self._dtmf_timer = asyncio.get_running_loop().call_later(
            agent.dtmf_debounce_ms / 1000.0, self._flush_dtmf)

    def _flush_dtmf(self) -> None:
        self._dtmf_timer = None
        digits, self._dtmf = "".join(self._dtmf), []
        if not digits or self._ws is None:
            return
        self._send_control(rt.conversation_item_create_text(
            "user", f"[The caller pressed the phone keys: {digits}]"))
        self._event("dtmf", direction="from-caller", digits=len(digits))
        self._request_response()
