"""Call watchdogs: silence, voicemail detection, maximum call duration (docs/PROTOCOLS.md §5).

Pure cores on an injected clock, and a thin component that ticks them:

* ``AmdDetector``: the gateway's own in-stream answering-machine heuristic, the
  algorithm of Asterisk's ``AMD()`` with its defaults (initial silence 2500 ms,
  greeting 1500 ms, after-greeting silence 800 ms, total 5000 ms, minimum word
  100 ms, between-word silence 50 ms, 2 words, threshold 256). It counts only frames
  that arrive (gaps without frames never count as silence, as in Asterisk). Its
  result uses AMD's words (HUMAN / MACHINE / NOTSURE + cause).
* ``CallWatch``: one call's watchdogs. ``check(now, caller_speech_at,
  bot_audio_at)`` returns ``Verdict``s: ``hangup`` (``silence-timeout``,
  ``voicemail``, ``max-duration``) and ``answered_by`` (Twilio ``AnsweredBy``
  values). Silence is measured from the latest of: the call start, the caller's
  speech as seen by the bridge's VAD, bot audio written, and TALK_DETECT events
  (``ChannelTalkingStart``/``Stop`` from AMI). TALK_DETECT alone is never trusted to
  hold the call open: a Start without a Stop counts once, at its arrival, because
  Asterisk emits no Stop when frames stop arriving.
  Voicemail (outbound calls only): Asterisk's ``AMDSTATUS``/``AMDCAUSE`` VarSets
  when the dialplan ran ``AMD()``, else the in-stream detector, within the agent's
  ``voicemail_budget_s`` (then ``unknown``). A machine is hung up
  (``voicemail_action = "hangup"``) or left to the bot (``leave_message``).
* ``Watchdogs``: the component. Every ``interval`` s (250 ms) it checks every live
  call (``check(now)``), applies verdicts (``call.hangup(reason)``,
  ``store.update_call``) and counts them. It has no loop of its own: ``attach(pacer)``
  subscribes ``check`` to the gateway's pacer every ``interval`` worth of ticks
  (``start()`` attaches to ``ctx.ticks``, the pacer, when nobody attached it before). It
  feeds the detector of outbound calls the caller levels the bridge already measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from aiohttp import web

from .dsp.vad import frame_level
from .pacer import ticks_for
from .tenants import Agent

if TYPE_CHECKING:
    from .ami_metrics import CallMetrics
    from .backends.base import Subscription, Ticker
    from .call import Call
    from .context import GatewayContext

log = logging.getLogger("audiosocket_gw.watchdogs")

__all__ = [
    "AmdDetector",
    "AmdResult",
    "CallWatch",
    "Limits",
    "Verdict",
    "Watchdogs",
    "answered_by_from_amd",
]

SILENT_LEVEL: Final = 256.0
"""A frame is silent when mean(|sample|) < 256 (docs/PROTOCOLS.md §5.2)."""


@dataclass(frozen=True)
class AmdResult:
    """An AMD verdict in Asterisk's words: ``status`` MACHINE|HUMAN|NOTSURE|HANGUP."""

    status: str
    cause: str


def answered_by_from_amd(status: str, cause: str = "") -> str:
    """Twilio's ``AnsweredBy`` for an ``AMDSTATUS`` (and ``AMDCAUSE``).

    HUMAN -> human; MACHINE -> machine_start (AMD decides at the greeting, before any
    beep); NOTSURE, HANGUP and anything else -> unknown.
    """
    s = status.strip().upper()
    if s == "HUMAN":
        return "human"
    if s == "MACHINE":
        return "machine_start"
    return "unknown"


class AmdDetector:
    """Asterisk ``AMD()`` on the frames the gateway receives (see module docstring)."""

    def __init__(
        self,
        *,
        initial_silence_ms: int = 2500,
        greeting_ms: int = 1500,
        after_greeting_silence_ms: int = 800,
        total_ms: int = 5000,
        min_word_ms: int = 100,
        between_words_silence_ms: int = 50,
        max_words: int = 2,
        threshold: float = SILENT_LEVEL,
    ) -> None:
        self.initial_silence_ms = initial_silence_ms
        self.greeting_ms = greeting_ms
        self.after_greeting_silence_ms = after_greeting_silence_ms
        self.total_ms = total_ms
        self.min_word_ms = min_word_ms
        self.between_words_silence_ms = between_words_silence_ms
        self.max_words = max_words
        self.threshold = threshold
        self.result: AmdResult | None = None
        self._total = 0.0
        self._silence = 0.0
        self._voice = 0.0
        self._in_word = False
        self._word = 0.0
        self._word_counted = False
        self.words = 0

    def feed(self, pcm: bytes) -> AmdResult | None:
        """One chunk of 8 kHz slin; returns the verdict once there is one."""
        if self.result is not None or len(pcm) < 2:
            return self.result
        return self.feed_level(frame_level(pcm), len(pcm) // 2)

    def feed_level(self, level: float, samples: int) -> AmdResult | None:
        """``feed`` for a chunk whose level (mean |sample|) is already measured."""
        if self.result is not None or samples < 1:
            return self.result
        ms = samples / 8.0
        self._total += ms
        if level < self.threshold:
            self._silence += ms
            self._voice = 0.0
            if self._in_word and self._silence >= self.between_words_silence_ms:
                self._in_word = False
            if self.words == 0 and self._silence >= self.initial_silence_ms:
                return self._done("MACHINE", f"INITIALSILENCE-{int(self._silence)}-"
                                             f"{self.initial_silence_ms}")
            if self.words > 0 and self._silence >= self.after_greeting_silence_ms:
                return self._done("HUMAN", f"HUMAN-{int(self._silence)}-"
                                           f"{self.after_greeting_silence_ms}")
        else:
            self._silence = 0.0
            self._voice += ms
            if not self._in_word:
                self._in_word = True
                self._word = 0.0
                self._word_counted = False
            self._word += ms
            if not self._word_counted and self._word >= self.min_word_ms:
                self._word_counted = True
                self.words += 1
                if self.words >= self.max_words + 1:
                    return self._done("MACHINE", f"MAXWORDS-{self.words}-{self.max_words}")
            if self._voice >= self.greeting_ms:
                return self._done("MACHINE", f"LONGGREETING-{int(self._voice)}-"
                                             f"{self.greeting_ms}")
        if self._total >= self.total_ms:
            return self._done("NOTSURE", f"TOOLONG-{int(self._total)}")
        return None

    def _done(self, status: str, cause: str) -> AmdResult:
        self.result = AmdResult(status, cause)
        return self.result


@dataclass(frozen=True)
class Limits:
    """Per-agent thresholds (seconds); ``voicemail_action`` hangup|leave_message."""

    silence_timeout_s: float = 20.0
    voicemail_budget_s: float = 15.0
    voicemail_action: Literal["hangup", "leave_message"] = "hangup"
    max_duration_s: float = 3600.0

    @classmethod
    def for_agent(cls, agent: Agent | None) -> Limits:
        if agent is None:
            return cls()
        return cls(agent.silence_timeout_s, agent.voicemail_budget_s, agent.voicemail_action,
                   agent.max_duration_s)


@dataclass(frozen=True)
class Verdict:
    """What a watchdog decided: ``hangup`` with ``reason``, or an ``answered_by``."""

    kind: Literal["hangup", "answered_by"]
    reason: str
    answered_by: str | None = None
    source: str = ""


class CallWatch:
    """The watchdogs of one call, on the caller's clock (no I/O, no clock reads)."""

    def __init__(self, call_id: str, started_at: float, limits: Limits, *,
                 outbound: bool) -> None:
        self.call_id = call_id
        self.started_at = started_at
        self.limits = limits
        self.outbound = outbound
        self.last_talk_event = started_at
        self.answered_by: str | None = None
        self.detector: AmdDetector | None = AmdDetector() if outbound else None
        self.done = False
        self._pending: list[Verdict] = []

    def talking(self, at: float) -> None:
        """A TALK_DETECT event (Start or Stop) at ``at``."""
        self.last_talk_event = max(self.last_talk_event, at)

    def caller_audio(self, pcm: bytes) -> None:
        """Caller audio for the in-stream detector (outbound, undecided calls only)."""
        if len(pcm) >= 2:
            self.caller_level(frame_level(pcm), len(pcm) // 2)

    def caller_level(self, level: float, samples: int) -> None:
        """``caller_audio`` for a frame the bridge has already measured (``LevelBatch``)."""
        det = self.detector
        if det is None or self.answered_by is not None:
            return
        res = det.feed_level(level, samples)
        if res is not None:
            self._decide(answered_by_from_amd(res.status, res.cause), "stream")

    def amd(self, status: str, cause: str) -> None:
        """``AMDSTATUS``/``AMDCAUSE`` from the dialplan's ``AMD()`` (wins if first)."""
        if self.answered_by is None:
            self._decide(answered_by_from_amd(status, cause), "asterisk")

    def _decide(self, answered_by: str, source: str) -> None:
        self.answered_by = answered_by
        self.detector = None
        self._pending.append(Verdict("answered_by", "amd", answered_by, source))
        if answered_by.startswith("machine") and self.limits.voicemail_action == "hangup":
            self._pending.append(Verdict("hangup", "voicemail"))

    def check(self, now: float, caller_speech_at: float, bot_audio_at: float) -> list[Verdict]:
        """Verdicts due at ``now``; after a hangup verdict the watch is done."""
        if self.done:
            return []
        out, self._pending = self._pending, []
        lim = self.limits
        if (self.outbound and self.answered_by is None
                and now - self.started_at >= lim.voicemail_budget_s):
            self.answered_by = "unknown"
            self.detector = None
            out.append(Verdict("answered_by", "amd", "unknown", "budget"))
        if not any(v.kind == "hangup" for v in out):
            if now - self.started_at >= lim.max_duration_s:
                out.append(Verdict("hangup", "max-duration"))
            else:
                last = max(self.started_at, caller_speech_at, bot_audio_at, self.last_talk_event)
                if now - last >= lim.silence_timeout_s:
                    out.append(Verdict("hangup", "silence-timeout"))
        if any(v.kind == "hangup" for v in out):
            self.done = True
        return out


class Watchdogs:
    """The component: one ``CallWatch`` per live AudioSocket call, ticked every 250 ms."""

    def __init__(
        self,
        ctx: GatewayContext,
        metrics: CallMetrics,
        *,
        interval: float = 0.25,
    ) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.clock = ctx.clock.monotonic
        self.interval = interval
        self.watches: dict[str, CallWatch] = {}
        self._sub: Subscription | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._early_amd: dict[str, tuple[str, str]] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    def routes(self) -> list[web.RouteDef]:
        return []

    def _call_started(self, call: Call) -> None:
        info = call.info
        watch = CallWatch(call.call_id, call.started_at, Limits.for_agent(info.agent_cfg),
                          outbound=info.direction == "outbound")
        self.watches[call.call_id] = watch
        early = self._early_amd.pop(call.call_id, None)
        if early is not None:
            watch.amd(*early)
        if watch.outbound:  # the detector steps with the levels the bridge measured
            call.add_level_listener(watch.caller_level)

    def _call_ended(self, call: Call) -> None:
        self.watches.pop(call.call_id, None)

    def on_talking(self, call_id: str) -> None:
        """A ``ChannelTalkingStart``/``Stop`` for ``call_id`` arrived now."""
        watch = self.watches.get(call_id)
        if watch is not None:
            watch.talking(self.clock())

    def on_amd(self, call_id: str, status: str, cause: str) -> None:
        """``AMDSTATUS``/``AMDCAUSE`` VarSets for ``call_id``."""
        watch = self.watches.get(call_id)
        if watch is not None:
            watch.amd(status, cause)
            self.tick()
        else:
            # AMD runs before AudioSocket(): remember it for when the call starts.
            if len(self._early_amd) >= 10_000:
                self._early_amd.pop(next(iter(self._early_amd)))
            self._early_amd[call_id] = (status, cause)
            self._spawn(self._store_answered_by(call_id, answered_by_from_amd(status, cause),
                                                "asterisk"))

    def attach(self, ticker: Ticker) -> None:
        """Run ``check`` on ``ticker`` (the pacer) every ``interval`` worth of ticks.

        The hook for whoever builds the components: call it with the gateway's pacer
        (``watchdogs.attach(pacer)``); ``start()`` does it with ``ctx.ticks`` when it
        was not done before. Attaching again moves the subscription.
        """
        self.detach()
        self._sub = ticker.every(ticks_for(self.interval), self._on_tick)

    def _on_tick(self, now: float) -> None:
        # The context's clock, not the pacer's reading: the two are the same clock in
        # a gateway, and a test's injected clock stays the only one.
        self.check(self.clock())

    def detach(self) -> None:
        if self._sub is not None:
            self._sub.cancel()
            self._sub = None

    async def start(self) -> None:
        self._unsubscribe = [self.ctx.events.started.connect(self._call_started),
                             self.ctx.events.ended.connect(self._call_ended)]
        # One clock: checked on the pacer's tick, every ``interval`` seconds.
        if self._sub is None:
            self.attach(self.ctx.ticks)

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.detach()
        for t in list(self._writes):
            with contextlib.suppress(Exception):
                await t

    def tick(self) -> None:
        """Check every live call now (on this component's clock)."""
        self.check(self.clock())

    def check(self, now: float) -> None:
        """Check every live call once at ``now`` (the pacer calls this every ``interval``)."""
        calls = self.ctx.calls
        for call_id, watch in list(self.watches.items()):
            call = calls.get(call_id)
            if call is None or call.ended:
                continue
            for v in watch.check(now, call.last_caller_speech, call.last_bot_audio):
                self._apply(call, v)

    def _apply(self, call: Call, v: Verdict) -> None:
        if v.kind == "answered_by" and v.answered_by is not None:
            call.log.info("answered by %s (%s)", v.answered_by, v.source)
            self._spawn(self._store_answered_by(call.call_id, v.answered_by, v.source))
        elif v.kind == "hangup":
            call.log.info("watchdog: hanging up (%s)", v.reason)
            self.metrics.watchdog_hangups.labels(v.reason).inc()
            call.hangup(v.reason)

    async def _store_answered_by(self, call_id: str, answered_by: str, source: str) -> None:
        rec = await self.ctx.store.get_call(call_id)
        if rec is None or rec.answered_by is not None:
            return
        after = await self.ctx.store.update_call(call_id, answered_by=answered_by)
        self.metrics.answered_by.labels(answered_by, source).inc()
        if after is not None:
            self.ctx.events.answered_by.emit(after)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro)  # type: ignore[arg-type]
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
