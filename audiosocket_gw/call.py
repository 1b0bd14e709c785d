"""The call bridge: one AudioSocket connection <-> one backend session.

``Call`` is what the pacer ticks (it writes one frame per tick), what the server feeds
(caller audio, DTMF, end of stream) and what the backend controls (``CallControl``:
play, mark, clear, hangup). It owns the per-call playout buffer, and counts the
per-call figures the metrics and the call record need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, Protocol

from .audiosocket import HANGUP_FRAME, HEADER, Kind
from .backends.base import AudioTap, BackendError, BackendSession, CallInfo, CallLog, Ticker
from .clock import Clock
from .config import Config
from .dial import MOVED_END_REASON
from .dsp.vad import (
    SILENCE_LEVEL,
    VadConfig,
    VadEvent,
    VoiceActivityDetector,
    frame_level,
    frame_levels,
)
from .lograte import LogRate
from .metrics import Metrics
from .playout import FRAME_BYTES, PlayoutBuffer

__all__ = ["AudioTap", "Call", "CallLog", "LevelBatch", "Metered"]  # AudioTap, CallLog: from base

if TYPE_CHECKING:
    from .dial import DialOutcome, DialRequest

log = logging.getLogger("audiosocket_gw.call")

FRAME_HEADER: Final = HEADER.pack(Kind.SLIN, FRAME_BYTES)
SILENCE_FRAME: Final = FRAME_HEADER + bytes(FRAME_BYTES)
MAX_BARGE_IN_LOG: Final = 200  # barge-ins kept per call for its event log


class Metered(Protocol):
    """What ``LevelBatch`` measures for: a call's two directions."""

    def on_caller_level(self, level: float, samples: int) -> None:
        """The level of one caller frame (``samples`` long), in arrival order."""

    def on_bot_level(self, level: float) -> None:
        """The level of the bot frame the pacer wrote last."""


class LevelBatch:
    """Frames of one pacer tick, measured together: caller frames and bot frames.

    numpy costs microseconds per call whatever the size, so measuring each 20 ms
    frame alone cost more than the rest of the audio path together; the pacer runs
    ``run()`` at the start of each tick and every call gets the level of the bot frame
    it wrote on the previous tick (``on_bot_level``: is the bot audible, how loud is
    its echo), then of each caller frame that arrived since (``on_caller_level``: VAD,
    answering-machine detection). A barge-in decided here is cut by the same tick, so
    batching adds no latency. ``immediate=True`` (a call without a server, in tests)
    measures on ``add``/``add_bot``.
    """

    __slots__ = ("bot_frames", "bots", "calls", "frames", "immediate")

    def __init__(self, *, immediate: bool = False) -> None:
        self.immediate = immediate
        self.calls: list[Metered] = []
        self.frames: list[bytes] = []
        self.bots: list[Metered] = []
        self.bot_frames: list[bytes] = []

    def add(self, call: Metered, pcm: bytes) -> None:
        """A caller frame (even number of bytes) to measure at the next tick."""
        if self.immediate:
            call.on_caller_level(frame_level(pcm), len(pcm) // 2)
            return
        self.calls.append(call)
        self.frames.append(pcm)

    def add_bot(self, call: Metered, frame: bytes) -> None:
        """The bot frame the pacer just wrote for ``call``, to measure at the next tick."""
        if self.immediate:
            call.on_bot_level(frame_level(frame))
            return
        self.bots.append(call)
        self.bot_frames.append(frame)

    def run(self) -> None:
        if not self.frames and not self.bot_frames:
            return
        calls, frames, bots, measured = self.calls, self.frames, self.bots, self.bot_frames
        self.calls, self.frames, self.bots, self.bot_frames = [], [], [], []
        measured += frames  # bot frames first, then caller frames: one numpy pass
        levels = frame_levels(measured).tolist()
        nbots = len(bots)
        for call, level in zip(bots, levels, strict=False):
            call.on_bot_level(level)
        for call, pcm, level in zip(calls, frames, islice(levels, nbots, None), strict=True):
            call.on_caller_level(level, len(pcm) // 2)


def close_bounded(transport: asyncio.Transport, timeout: float) -> None:
    """Make a ``close()`` that waits for unsent data end within ``timeout`` seconds.

    ``close()`` flushes the write buffer first; a peer that stopped reading never lets
    it, and the connection (and its socket) would stay forever. Abort it instead.
    """
    if transport.get_write_buffer_size() == 0:
        return

    def abort() -> None:
        if transport.get_write_buffer_size() > 0:
            log.warning("peer did not read the last %d bytes in %.1f s: connection aborted",
                        transport.get_write_buffer_size(), timeout)
            transport.abort()

    asyncio.get_running_loop().call_later(max(0.0, timeout), abort)



class Call:
    """One live call. Created by the server once the UUID frame has been accepted."""

    def __init__(
        self,
        info: CallInfo,
        transport: asyncio.Transport,
        *,
        backend_name: str,
        config: Config,
        metrics: Metrics,
        on_end: Callable[[Call], None],
        barge_in: bool = True,
        levels: LevelBatch | None = None,
        clock: Clock | None = None,
        ticker: Ticker | None = None,
    ) -> None:
        # One clock for the gateway: components compare ``started_at``,
        # ``last_caller_speech`` and ``last_bot_audio`` with ``ctx.clock.monotonic``.
        clock = clock if clock is not None else Clock()
        self._now = clock.monotonic
        self._wall = clock.wall
        self.info = info
        self.call_id = info.call_id
        self.transport = transport
        self.backend_name = backend_name
        self.config = config
        self.metrics = metrics
        self.stats = metrics.stats
        self.log = CallLog.for_call(log, info)
        self.playout = PlayoutBuffer(max_bytes=int(config.playout_max_seconds * 16000))
        self.session: BackendSession | None = None
        self._on_end = on_end
        self._stall_since: float | None = None
        self._odd = b""
        self.started_at = self._now()
        self.first_audio_at: float | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.ended = False
        self.end_reason: str | None = None
        self.outcome: str | None = None
        self.transcripts: list[tuple[float, str, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Local VAD on caller audio (raised above the bot's echo level): tells the
        # watchdogs the caller is talking, and cuts the bot (barge-in) where the
        # backend wants the bridge to (``Backend.local_barge_in``).
        self.vad = VoiceActivityDetector(
            VadConfig(threshold=config.vad_threshold, onset_ms=config.vad_onset_ms)
        )
        self.local_barge_in = config.barge_in and barge_in
        self.caller_speaking = False
        self.last_caller_speech = self.started_at
        # Bot audio the caller can hear: a frame at or above Asterisk's silence level
        # (echoed or padded silence is not the bot talking). Measured in the batch.
        self.last_bot_audio = self.started_at
        self.bot_level = 0.0  # level of the bot frame written last (the echo allowance)
        self._bot_at = self.started_at  # when that frame was written
        self._wrote = False  # on_tick wrote ``_written`` (None: silence) for after_tick
        self._written: bytes | None = None
        self._level_listeners: list[Callable[[float, int], None]] = []
        self._levels = levels if levels is not None else LevelBatch(immediate=True)
        self._cut_onset: float | None = None  # speech onset of a pending barge-in cut
        self._clear_at: float | None = None  # when the backend asked to drop its audio
        self._turn_end: float | None = None  # when the caller stopped talking
        self.barge_ins = 0
        self.barge_in_log: list[tuple[float, str]] = []  # (wall time, source), bounded
        self.taps: list[AudioTap] = []
        self._ticker = ticker
        self.playout_drops = 0
        """Bot audio chunks dropped on a full playout buffer."""
        self._drop_log = LogRate()
        # Call control over AMI, injected by the gateway's call controller (this module
        # stays free of AMI): None = not available (no AMI configured).
        self.on_dial: Callable[[DialRequest], None] | None = None
        self.on_send_dtmf: Callable[[str], None] | None = None
        # The call's event log (the store), injected the same way.
        self.on_agent_event: Callable[[str, dict[str, Any]], None] | None = None
        self.on_dial_outcome: Callable[[float], Awaitable[DialOutcome]] | None = None
        self.moved_on_eof = False
        """Call control sent an AMI Redirect/Bridge: the EOF that follows is a move
        (``dial.MOVED_END_REASON``), not the caller hanging up (docs/PROTOCOLS.md §4.5)."""

    def __repr__(self) -> str:
        return f"<Call {self.call_id} backend={self.backend_name}>"

    # -- lifecycle -------------------------------------------------------------

    def attach(self, session: BackendSession) -> None:
        self.session = session
        self._spawn(self._start_session(session), "start")

    async def _start_session(self, session: BackendSession) -> None:
        try:
            await session.start()
        except BackendError as exc:
            self.log.warning("backend %s could not start: %s", self.backend_name, exc)
            self.metrics.backend_errors.labels(self.backend_name, exc.reason).inc()
            self.end("backend-unavailable", outcome="backend_error")
        except Exception:
            self.log.exception("backend %s crashed while starting", self.backend_name)
            self.metrics.backend_errors.labels(self.backend_name, "crash").inc()
            self.end("backend-crash", outcome="backend_error")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.call_id}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self, reason: str, *, outcome: str, send_hangup: bool = True) -> None:
        """End the call once: stop pacing, tell Asterisk (00 00 00 + close), close backend."""
        if self.ended:
            return
        if self.moved_on_eof and reason == "caller-hangup":
            reason, outcome = MOVED_END_REASON, "gateway_hangup"
        self.ended = True
        self.end_reason = reason
        self.outcome = outcome
        transport = self.transport
        if send_hangup and not transport.is_closing():
            transport.write(HANGUP_FRAME)
        if not transport.is_closing():
            transport.close()
        close_bounded(transport, self.config.write_stall_timeout)
        duration = self._now() - self.started_at
        self.log.info(
            "ended: %s (outcome %s, %.1f s, %d frames in, %d out)",
            reason, outcome, duration, self.frames_in, self.frames_out,
        )
        self.metrics.calls.labels(self.backend_name, self.info.tenant, outcome).inc()
        self.metrics.call_duration.labels(self.backend_name).observe(duration)
        self._on_end(self)
        for tap in self.taps:
            try:
                tap.close()
            except Exception:
                self.log.exception("audio tap failed to close")
        if self.session is not None:
            self._spawn(self._close_session(self.session, reason), "close")

    def barge_in(self, source: str, *, onset: float | None = None) -> None:
        """The caller spoke over the bot: drop queued bot audio now, tell the backend.

        The cut takes effect on the next pacer tick (that frame is silence); the
        backend is then told (``on_barge_in``) so it can truncate and cancel with the
        exact milliseconds already played (``played_ms``).
        """
        if not self.playout.has_audio and not self.playout.streaming:
            return
        self.barge_ins += 1
        if len(self.barge_in_log) < MAX_BARGE_IN_LOG:
            self.barge_in_log.append((self._wall(), source))
        self._cut_onset = self._now() if onset is None else onset
        self.metrics.barge_ins.labels(self.backend_name, source).inc()
        self.log.debug("barge-in (%s): %.0f ms of bot audio dropped", source,
                       self.playout.pending_ms)
        self.clear()
        self._clear_at = None  # timed as a barge-in, not as a backend clear
        if self.session is not None:
            self.session.on_barge_in()

    async def _close_session(self, session: BackendSession, reason: str) -> None:
        try:
            await asyncio.wait_for(session.close(reason), timeout=5.0)
        except Exception:
            self.log.exception("backend close failed")
        finally:
            # The session's control is this call: a reference cycle that only a full
            # collection (rare after gc.freeze()) would free, with the call's buffers
            # and transport. Break it so an ended call is freed at once.
            if self.session is session:
                self.session = None

    async def wait_closed(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- from the server (Asterisk -> gateway) ---------------------------------

    def on_caller_audio(self, pcm: bytes) -> None:
        self.frames_in += 1
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(pcm)
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        if len(pcm) & 1:
            self._odd = pcm[-1:]
            pcm = pcm[:-1]
        if pcm:
            self._levels.add(self, pcm)  # measured with every other call's at the tick
        for tap in self.taps:
            tap.caller(pcm)
        session = self.session
        if session is not None and pcm:
            session.on_audio(pcm)

    def add_level_listener(self, fn: Callable[[float, int], None]) -> None:
        """Also give ``fn(level, samples)`` every caller frame's level (batched, cheap)."""
        self._level_listeners.append(fn)

    def on_bot_level(self, level: float) -> None:
        """Level of the bot frame last written (called by ``LevelBatch``)."""
        self.bot_level = level
        if level >= SILENCE_LEVEL:
            self.last_bot_audio = self._bot_at

    def on_caller_level(self, level: float, samples: int) -> None:
        """VAD step for one caller frame (called by ``LevelBatch`` at the pacer tick).

        While bot audio is queued, caller audio must rise above the echo of the bot
        frame last written (``bot_level``) to count as speech.
        """
        if self.ended:
            return
        if self._level_listeners:
            for fn in self._level_listeners:
                fn(level, samples)
        vad = self.vad
        bot_pending = self.playout.has_audio
        ev = vad.process_level(level, samples, self.bot_level if bot_pending else 0.0)
        if ev is VadEvent.SPEECH_START:
            self.caller_speaking = True
            if bot_pending and self.local_barge_in:
                onset = self._now() - vad.config.onset_ms / 1000.0
                self.barge_in("local-vad", onset=onset)
        elif ev is VadEvent.SPEECH_STOP:
            self.caller_speaking = False
            if not bot_pending:  # a turn handed to the bot: time its answer
                self._turn_end = self._now() - vad.config.hangover_ms / 1000.0
        if self.caller_speaking:
            self.last_caller_speech = self._now()

    def on_dtmf(self, digit: str) -> None:
        self.log.debug("DTMF %s", digit)
        if self.session is not None:
            self.session.on_dtmf(digit)

    # -- pacer -----------------------------------------------------------------

    def on_tick(self) -> None:
        transport = self.transport
        if transport.get_write_buffer_size() > self.config.write_buffer_limit:
            self.stats.frames_dropped_slow_peer += 1
            now = self._now()
            if self._stall_since is None:
                self._stall_since = now
                self.log.warning("Asterisk is not reading; dropping frames")
            elif now - self._stall_since > self.config.write_stall_timeout:
                self.transport.abort()
                self.end("slow-peer", outcome="slow_peer", send_hangup=False)
            return
        self._stall_since = None
        playout = self.playout
        frame = playout.pop_frame()
        if self._cut_onset is not None or self._clear_at is not None:
            # First tick after a cut: the bot audio queued at the cut is gone.
            now = self._now()
            if self._cut_onset is not None:
                self.metrics.barge_in.labels(self.backend_name).observe(now - self._cut_onset)
                self._cut_onset = None
            if self._clear_at is not None:
                self.metrics.clear_to_silence.labels(self.backend_name).observe(
                    now - self._clear_at
                )
                self._clear_at = None
        if frame is None:
            transport.write(SILENCE_FRAME)  # (an underrun is judged by the playout)
        else:
            transport.write(FRAME_HEADER + frame)
        self._wrote = True
        self._written = frame

    def after_tick(self) -> None:
        """The tick's bookkeeping, once every call has written (see ``PacedStream``)."""
        if not self._wrote:  # nothing written this tick (Asterisk is not reading)
            return
        self._wrote = False
        frame, self._written = self._written, None
        if frame is not None:
            self._bot_at = now = self._now()
            self._levels.add_bot(self, frame)  # audible? (sets last_bot_audio)
            if self._turn_end is not None:
                self.metrics.response_latency.labels(self.backend_name).observe(
                    now - self._turn_end
                )
                self._turn_end = None
            if self.first_audio_at is None:
                self.first_audio_at = now
                self.metrics.time_to_first_audio.labels(self.backend_name).observe(
                    now - self.started_at
                )
        if self.taps:
            for tap in self.taps:
                tap.bot(frame)
        self.frames_out += 1
        self.stats.frames_out += 1
        marks = self.playout.reached_marks()
        if marks and self.session is not None:
            self.session.on_marks(marks)

    # -- CallControl (backend -> call) -----------------------------------------

    def play(self, pcm: bytes, item_id: str | None = None) -> None:
        if self.ended:
            return
        playout = self.playout
        playout.streaming = True
        underruns = playout.underruns
        if not playout.push(pcm, item_id):
            self.playout_drops += 1
            if (n := self._drop_log.allow()) is not None:  # not one line per chunk
                self.log.warning("playout buffer full (%.0f ms); audio dropped%s",
                                 playout.pending_ms, LogRate.suffix(n))
        if playout.underruns != underruns:  # a gap inside the utterance, now judged
            self.stats.underruns += playout.underruns - underruns

    def end_of_audio(self) -> None:
        playout = self.playout
        underruns = playout.underruns
        playout.end_utterance()
        if playout.underruns != underruns:
            self.stats.underruns += playout.underruns - underruns

    def mark(self, name: str) -> None:
        if self.playout.mark(name) and self.session is not None:
            asyncio.get_running_loop().call_soon(self._report_marks, [name])

    def clear(self) -> None:
        if self._clear_at is None and self.playout.has_audio:
            self._clear_at = self._now()
        names = self.playout.clear()
        if names:
            asyncio.get_running_loop().call_soon(self._report_marks, names)

    def _report_marks(self, names: list[str]) -> None:
        if self.session is not None and not self.ended:
            self.session.on_marks(names)

    def played_ms(self, item_id: str) -> int:
        return self.playout.played_ms(item_id)

    @property
    def bot_audio_pending(self) -> bool:
        return self.playout.has_audio

    def transcript(self, role: str, text: str) -> None:
        self.transcripts.append((self._wall(), role, text))

    def hangup(self, reason: str) -> None:
        self.end(reason, outcome="gateway_hangup")

    # (``barge_in`` is above, with the lifecycle.)

    def add_tap(self, tap: AudioTap) -> None:
        self.taps.append(tap)

    def backend_error(self, reason: str) -> None:
        self.metrics.backend_errors.labels(self.backend_name, reason).inc()

    @property
    def ticker(self) -> Ticker:
        if self._ticker is None:
            raise RuntimeError("this call has no pacer to subscribe to")
        return self._ticker

    def dial(self, request: DialRequest) -> None:
        if self.ended:
            return
        if self.on_dial is None:
            self.log.warning("<Dial> of %d target(s) needs the AMI call controller: "
                             "hanging up", len(request.targets))
            self.end("dial-unavailable", outcome="gateway_hangup")
            return
        self.on_dial(request)

    def dial_refused(self, reason: str) -> None:
        """Call control could not start the requested dial: tell the session."""
        if self.ended or self.session is None:
            return
        self.session.on_dial_failed(reason)

    async def dial_outcome(self, timeout_s: float) -> DialOutcome | None:
        if self.on_dial_outcome is None:
            return None
        try:
            return await self.on_dial_outcome(timeout_s)
        except (LookupError, TimeoutError):
            return None

    def agent_event(self, kind: str, data: Mapping[str, Any]) -> None:
        m = self.metrics
        if kind == "tool":
            name, outcome = str(data.get("name", "unknown")), str(data.get("outcome", "error"))
            m.tool_calls.labels(name, outcome).inc()
            latency = data.get("latency_ms")
            if isinstance(latency, int | float):
                m.tool_latency.labels(name).observe(latency / 1000.0)
        elif kind == "transfer":
            m.transfers.labels(str(data.get("kind", "blind")),
                               str(data.get("outcome", "started"))).inc()
        if self.on_agent_event is not None:
            self.on_agent_event(kind, dict(data))

    def send_dtmf(self, digits: str) -> None:
        if self.ended:
            return
        if self.on_send_dtmf is None:
            self.log.warning("DTMF requested but call control (AMI) is not available")
            return
        self.on_send_dtmf(digits)
