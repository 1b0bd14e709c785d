"""Per-call MOS: Asterisk's RTCP reports on AMI plus the gateway's own pacing damage.

What
----
:class:`MosMonitor` is a gateway component. The AMI client calls
:meth:`MosMonitor.on_ami_event` with every ``Newexten``, ``CoreShowChannel``,
``RTCPSent``, ``RTCPReceived``, ``VarSet`` and ``Hangup`` event (others are ignored,
so it may also simply get every event). The AudioSocket server tells it when a call
starts and ends. At the end of a call it:

* stores ``mos_in_min``/``mos_in_mean``/``mos_out_min``/``mos_out_mean`` on the call
  record (``store.update_call``; a call without a record is skipped) and appends a
  ``quality`` event with the details (sources, sample counts, Asterisk's MES, the
  gateway's loss and lateness);
* observes ``aigw_call_mos{direction,tenant}`` (one observation per call and
  direction: the call's mean MOS) and, when Asterisk reported one,
  ``aigw_call_mes{direction,tenant}``. Never a per-call series.

Directions follow the call record: ``in`` is the caller's audio as Asterisk received
it (``RTCPSent`` Report0), ``out`` is ours as the caller's phone received it
(``RTCPReceived`` Report0). docs/PROTOCOLS.md §6.1 and §6.2.

Correlating AMI channels to our call id
---------------------------------------
* ``Newexten``/``CoreShowChannel`` with ``Application: AudioSocket`` and
  ``AppData``/``ApplicationData: <uuid>,<host:port>`` maps the event's ``Uniqueid``
  and ``Linkedid`` to ``<uuid>`` (so an RTCP event on the PJSIP channel finds the
  call even when AudioSocket runs on a ``Local`` half). ``Application: Dial`` with
  ``AudioSocket/host:port/<uuid>`` (the channel driver) is read the same way.
* A ``ChanVariable: AIGW_CALL_ID=<uuid>`` on any event (the dialplan exports it) maps
  that event's ``Uniqueid``/``Linkedid`` the same way.
* An Originate with ``ChannelId`` = call id makes ``Uniqueid``/``Linkedid`` equal the
  call id itself; the routing API's ``asterisk_uniqueid`` call metadata is mapped too.

The maps are bounded (LRU, ``max_calls`` calls and ``4 * max_calls`` channel ids);
what falls out is counted, never an error.

The gateway's contribution (documented approximation)
------------------------------------------------------
The pacer is the clock of our outbound audio, so the gateway can damage only ``out``:

* **Loss**: a tick where the bot is mid-utterance but less than a frame is buffered
  (an underrun, ``call.playout.underruns``) puts 20 ms of silence inside speech; a
  tick the pacer skipped (``aigw_pacer_missed_ticks``, global, counted for every call
  live at the time) loses a frame. RTP cannot see either (Asterisk still sends a
  packet), so this loss is *added* to what RTCP reports::

      active  = speech_frames + underruns
      m_s     = missed * active / ticks          (the missed ticks' speech share)
      gw_loss = (underruns + m_s) / (active + m_s)
      loss    = 1 - (1 - rtcp_loss) * (1 - gw_loss)

  computed per RTCP interval (the deltas since the previous ``out`` report).
  Relative to speech frames, not all ticks (silence cannot be damaged): an underrun
  in a call where the bot said little weighs a lot, deliberately pessimistic.
* **Delay/jitter**: Asterisk sends each frame as it receives it, so pacer lateness
  is already inside the caller's measured jitter when RTCP is present: not added
  again.

Without RTCP (no AMI, ``Local`` channels, the demo), the ``out`` MOS is a
**gateway-only estimate**: the network is assumed perfect and the E-model gets::

      jitter_ms      = mean pacer lateness during the call
      extra_delay_ms = mean pacer lateness during the call
      loss           = gw_loss over the whole call

(mean lateness delays every frame, and the far end's jitter buffer needs about twice
the variation it causes). Its ceiling is MOS 4.40 (R = 92.6: 25 ms codec delay).
``in`` stays unknown without RTCP.

At hangup Asterisk sets ``RTPAUDIOQOS`` (VarSet, before ``Hangup``): a direction
without any RTCP report (a call shorter than the 5 s RTCP interval) gets one sample
built from it (``in``: ``lp``/``rxcount``, ``rxjitter``; ``out``: ``rlp``/``txcount``,
``txjitter``; jitter in seconds, ``rtt`` in seconds). MES: the RTCP events' ``MES``
per direction, else ``RTPAUDIOQOSMES`` (``avgrxmes`` in, ``avgtxmes`` out) or
``RTPAUDIOQOS``'s ``rxmes``/``txmes`` (a 0 means "not computed" and is skipped).

When a call ends on the AudioSocket side, the AMI ``Hangup`` (and the QoS VarSets
before it) may still be on their way: a call with any AMI correlation is finalized on
its RTP channel's ``Hangup`` or after ``hangup_grace_s``, whichever comes first; a
call AMI never mentioned is finalized at once.

Errors: a malformed RTCP report is counted (``aigw_rtcp_reports_dropped_total``
``{reason="malformed"}``) and dropped; store failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web
from prometheus_client import Counter, Histogram

from ..ami.protocol import AmiMessage, audiosocket_call_id, c_unescape
from ..playout import FRAME_BYTES
from ..store.base import StoreError
from .emodel import estimate_mos
from .rtcp import (
    ASTERISK_TO_CALLER,
    CALLER_TO_ASTERISK,
    MosTracker,
    RtcpFormatError,
    RtcpSample,
    parse_rtcp_event,
)

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext

__all__ = ["MOS_BUCKETS", "CallQuality", "DirectionQuality", "MosMonitor", "gateway_loss"]

log = logging.getLogger("audiosocket_gw.quality")

Source = Literal["rtcp", "rtpaudioqos", "gateway"]

MOS_BUCKETS: Final = (1.0, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5)
"""``aigw_call_mos`` buckets: fine where the 4.0 target and the 4.41 ceiling are."""
MES_BUCKETS: Final = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 85.0, 90.0, 95.0, 100.0)
_RESULTS_KEPT: Final = 256


def gateway_loss(underruns: int, missed: int, speech_frames: int, ticks: int) -> float:
    """Fraction of bot speech the gateway lost (0 when the bot never spoke).

    ``missed`` ticks hit speech and silence alike, so only their speech share counts:
    ``m_s = missed * (speech_frames + underruns) / ticks``; then
    ``(underruns + m_s) / (speech_frames + underruns + m_s)``.
    """
    underruns, speech_frames = max(0, underruns), max(0, speech_frames)
    active = speech_frames + underruns
    if active == 0:
        return 0.0
    missed_speech = max(0, missed) * min(1.0, active / ticks) if ticks > 0 else 0.0
    return (underruns + missed_speech) / (active + missed_speech)


@dataclass(frozen=True, slots=True)
class DirectionQuality:
    """One direction of a finished call."""

    min_mos: float
    mean_mos: float
    samples: int
    source: Source
    mes: float | None


@dataclass(frozen=True, slots=True)
class CallQuality:
    """What :class:`MosMonitor` concluded about one finished call."""

    call_id: str
    tenant: str
    inbound: DirectionQuality | None
    outbound: DirectionQuality | None
    gateway_loss: float
    lateness_mean_ms: float
    underruns: int
    missed_ticks: int

    def as_event(self) -> dict[str, Any]:
        """JSON-ready detail for the call's ``quality`` event."""
        out: dict[str, Any] = {
            "gateway_loss": round(self.gateway_loss, 6),
            "lateness_mean_ms": round(self.lateness_mean_ms, 3),
            "underruns": self.underruns,
            "missed_ticks": self.missed_ticks,
        }
        for side, q in (("in", self.inbound), ("out", self.outbound)):
            if q is not None:
                out[side] = {"min_mos": round(q.min_mos, 3), "mean_mos": round(q.mean_mos, 3),
                             "samples": q.samples, "source": q.source,
                             "mes": None if q.mes is None else round(q.mes, 2)}
        return out


@dataclass(slots=True)
class _GwCounters:
    """Cumulative gateway figures of one call (per call and global deltas)."""

    underruns: int = 0
    speech_frames: int = 0
    ticks: int = 0
    missed: int = 0
    lateness_sum: float = 0.0
    lateness_count: float = 0.0


@dataclass(slots=True)
class _State:
    call_id: str
    tenant: str = "unknown"
    tracker: MosTracker = field(default_factory=MosTracker)
    call: Call | None = None
    started: bool = False
    ended: bool = False
    ami_seen: bool = False
    ami_hungup: bool = False
    rtp_uniqueid: str | None = None
    base: _GwCounters = field(default_factory=_GwCounters)  # globals at call start
    final: _GwCounters | None = None  # this call's figures at its end
    last_out: _GwCounters = field(default_factory=_GwCounters)  # at the last out report
    timer: asyncio.TimerHandle | None = None


class MosMonitor:
    """Gateway component: per-call MOS from AMI RTCP events and the gateway's pacing."""

    def __init__(
        self,
        ctx: GatewayContext,
        *,
        hangup_grace_s: float = 2.0,
        max_calls: int = 4096,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: wall time of the ``quality`` events (default the context's)."""
        if max_calls < 1 or hangup_grace_s < 0:
            raise ValueError("max_calls must be >= 1 and hangup_grace_s >= 0")
        self.ctx = ctx
        self.hangup_grace_s = hangup_grace_s
        self.max_calls = max_calls
        self._clock = clock if clock is not None else ctx.clock.wall
        self._calls: OrderedDict[str, _State] = OrderedDict()
        self._channels: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: OrderedDict[str, CallQuality] = OrderedDict()
        """The last finished calls' results (bounded), for the demo and tests."""
        self._unsubscribe: list[Callable[[], None]] = []
        r = ctx.metrics.registry
        self.mos = Histogram(
            "aigw_call_mos",
            "Mean MOS (E-model, 1-4.5) of each finished call, by direction and tenant.",
            ["direction", "tenant"], buckets=MOS_BUCKETS, registry=r,
        )
        self.mes = Histogram(
            "aigw_call_mes",
            "Asterisk's mean Media Experience Score (0-100) of each finished call.",
            ["direction", "tenant"], buckets=MES_BUCKETS, registry=r,
        )
        self.estimates = Counter(
            "aigw_call_mos_estimates",
            "Per-call MOS values computed, by direction and source "
            "(rtcp, rtpaudioqos, gateway = pacing only, no RTCP).",
            ["direction", "source"], registry=r,
        )
        self.rtcp_reports = Counter(
            "aigw_rtcp_reports", "RTCP reports from AMI accounted to a call, by direction.",
            ["direction"], registry=r,
        )
        self.rtcp_dropped = Counter(
            "aigw_rtcp_reports_dropped",
            "RTCP reports from AMI not used, by reason (malformed, unmatched).",
            ["reason"], registry=r,
        )
        for side in ("in", "out"):
            self.rtcp_reports.labels(side)
        for reason in ("malformed", "unmatched"):
            self.rtcp_dropped.labels(reason)

    # -- component lifecycle -----------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        """Subscribe to the call and AMI events that feed the monitor."""
        events = self.ctx.events
        self._unsubscribe = [events.started.connect(self.call_started),
                             events.ended.connect(self.call_ended),
                             events.ami_message.connect(self.on_ami_event)]

    async def stop(self) -> None:
        """Finalize every ended call still waiting for AMI, then wait for the writes."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for state in list(self._calls.values()):
            if state.ended:
                self._finalize(state)
        await self.drain()

    async def drain(self) -> None:
        """Wait until every pending store write has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- AudioSocket hooks ---------------------------------------------------------

    def call_started(self, call: Call) -> None:
        """A call connected: snapshot the global pacing counters, map its ids."""
        state = self._state(call.call_id)
        state.call = call
        state.started = True
        state.tenant = call.info.tenant
        state.base = self._global_counters()
        state.last_out = _GwCounters()
        self._map(call.call_id, call.call_id)
        asterisk_id = call.info.metadata.get("asterisk_uniqueid") if call.info.metadata else None
        if isinstance(asterisk_id, str) and asterisk_id:
            self._map(asterisk_id, call.call_id)

    def call_ended(self, call: Call) -> None:
        """The AudioSocket closed: freeze the call's figures; finalize now or soon."""
        state = self._calls.get(call.call_id)
        if state is None:
            return
        state.final = self._call_counters(state)
        state.call = None
        state.ended = True
        if state.ami_hungup or not state.ami_seen:
            self._finalize(state)
        else:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self.hangup_grace_s, self._finalize, state)

    # -- AMI -------------------------------------------------------------------------

    def on_ami_event(self, msg: AmiMessage) -> None:
        """Account one AMI event (any event; irrelevant ones are ignored)."""
        name = (msg.event or "").strip().lower()
        tagged = _valid_uuid(msg.variables().get("AIGW_CALL_ID", ""))
        if tagged is not None:
            for key in (msg.get("Uniqueid"), msg.get("Linkedid")):
                if key and key not in self._channels:
                    self._map(key, tagged)
        if name in ("newexten", "coreshowchannel"):
            self._on_app(msg)
        elif name in ("rtcpsent", "rtcpreceived"):
            self._on_rtcp(msg)
        elif name == "varset":
            variable = (msg.get("Variable") or "").strip()
            if variable.upper().startswith("RTPAUDIOQOS"):
                state = self._lookup(msg)
                if state is not None:
                    state.ami_seen = True
                    state.tracker.add_qos_variable(variable, c_unescape(msg.get("Value", "")))
        elif name == "hangup":
            self._on_hangup(msg)

    def _on_app(self, msg: AmiMessage) -> None:
        data = msg.get("AppData")
        if data is None:
            data = msg.get("ApplicationData", "")
        call_id = audiosocket_call_id(msg.get("Application"), data)
        if call_id is None:
            return
        for key in (msg.get("Uniqueid"), msg.get("Linkedid")):
            if key:
                self._map(key, call_id)
        self._state(call_id).ami_seen = True

    def _on_rtcp(self, msg: AmiMessage) -> None:
        try:
            sample = parse_rtcp_event(msg.to_dict())
        except RtcpFormatError as exc:
            self.rtcp_dropped.labels("malformed").inc()
            log.debug("RTCP report dropped: %s", exc)
            return
        if sample is None:
            return
        state = self._lookup(msg)
        if state is None:
            self.rtcp_dropped.labels("unmatched").inc()
            return
        state.ami_seen = True
        if state.rtp_uniqueid is None and sample.uniqueid:
            state.rtp_uniqueid = sample.uniqueid
        if sample.direction == ASTERISK_TO_CALLER:
            sample = self._with_gateway_loss(state, sample)
            self.rtcp_reports.labels("out").inc()
        else:
            self.rtcp_reports.labels("in").inc()
        state.tracker.add(sample)

    def _on_hangup(self, msg: AmiMessage) -> None:
        uid = msg.get("Uniqueid")
        state = self._lookup(msg)
        if state is None:
            return
        if not state.started:
            self._calls.pop(state.call_id, None)  # AMI knew it; it never reached us
            return
        if state.rtp_uniqueid is not None and uid != state.rtp_uniqueid:
            return  # another half of the call (a Local channel): wait for the RTP one
        state.ami_hungup = True
        if uid:
            self._channels.pop(uid, None)
        if state.ended:
            self._finalize(state)

    # -- finalization ----------------------------------------------------------------

    def _finalize(self, state: _State) -> None:
        if self._calls.pop(state.call_id, None) is None:
            return  # already done
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if not state.started:
            return  # AMI knew the call but it never reached us: nothing to score
        final = state.final or _GwCounters()
        quality = self._quality(state, final)
        self.results[state.call_id] = quality
        while len(self.results) > _RESULTS_KEPT:
            self.results.popitem(last=False)
        for side, q in (("in", quality.inbound), ("out", quality.outbound)):
            if q is None:
                continue
            self.mos.labels(side, quality.tenant).observe(q.mean_mos)
            self.estimates.labels(side, q.source).inc()
            if q.mes is not None:
                self.mes.labels(side, quality.tenant).observe(q.mes)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._store(quality), name=f"{state.call_id}:mos")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _quality(self, state: _State, final: _GwCounters) -> CallQuality:
        tracker = state.tracker
        qos = tracker.asterisk_qos
        main = qos.get("RTPAUDIOQOS", {})
        rtt = main.get("rtt")
        call_loss = gateway_loss(final.underruns, final.missed, final.speech_frames, final.ticks)
        lateness_ms = (
            1000.0 * final.lateness_sum / final.lateness_count if final.lateness_count else 0.0
        )
        # A direction RTCP never reported on gets one sample from RTPAUDIOQOS.
        from_qos: set[str] = set()
        for direction, lost_key, count_key, jitter_key in (
            (CALLER_TO_ASTERISK, "lp", "rxcount", "rxjitter"),
            (ASTERISK_TO_CALLER, "rlp", "txcount", "txjitter"),
        ):
            if tracker.samples(direction) or count_key not in main:
                continue
            lost = max(0.0, main.get(lost_key, 0.0))
            count = max(0.0, main[count_key])
            loss = lost / (count + lost) if count + lost > 0 else 0.0
            if direction == ASTERISK_TO_CALLER:
                loss = 1.0 - (1.0 - loss) * (1.0 - call_loss)
            tracker.add(RtcpSample(
                direction=direction,
                jitter_ms=max(0.0, main.get(jitter_key, 0.0)) * 1000.0,
                loss_fraction=min(1.0, loss),
                rtt_s=rtt if rtt is not None and rtt >= 0 else None,
                mes=None, channel=None, uniqueid=None, linkedid=None,
            ))
            from_qos.add(direction)
        mes_qos = qos.get("RTPAUDIOQOSMES", {})
        sides: dict[str, DirectionQuality | None] = {}
        for side, direction, qos_mes, main_mes in (
            ("in", CALLER_TO_ASTERISK, mes_qos.get("avgrxmes"), main.get("rxmes")),
            ("out", ASTERISK_TO_CALLER, mes_qos.get("avgtxmes"), main.get("txmes")),
        ):
            mes = tracker.mean_mes(direction)
            for candidate in (qos_mes, main_mes):
                if mes is None and candidate is not None and candidate > 0:
                    mes = candidate
            st = tracker.stats(direction)
            source: Source = "rtpaudioqos" if direction in from_qos else "rtcp"
            if st.samples and st.min_mos is not None and st.mean_mos is not None:
                sides[side] = DirectionQuality(st.min_mos, st.mean_mos, st.samples, source, mes)
            elif side == "out":
                mos = estimate_mos(rtt_s=None, jitter_ms=lateness_ms, loss_fraction=call_loss,
                                   extra_delay_ms=lateness_ms)
                sides[side] = DirectionQuality(mos, mos, 0, "gateway", mes)
            else:
                sides[side] = None
        return CallQuality(
            call_id=state.call_id, tenant=state.tenant, inbound=sides["in"],
            outbound=sides["out"], gateway_loss=call_loss, lateness_mean_ms=lateness_ms,
            underruns=final.underruns, missed_ticks=final.missed,
        )

    async def _store(self, q: CallQuality) -> None:
        fields: dict[str, object] = {}
        for side, dq in (("in", q.inbound), ("out", q.outbound)):
            if dq is not None:
                fields[f"mos_{side}_min"] = round(dq.min_mos, 3)
                fields[f"mos_{side}_mean"] = round(dq.mean_mos, 3)
        store = self.ctx.store
        try:
            async with asyncio.timeout(5.0):
                if await store.update_call(q.call_id, **fields) is None:
                    return  # no record (an unregistered call): metrics only
                await store.append_event(q.call_id, "quality", self._clock(), q.as_event())
        except (StoreError, TimeoutError) as exc:
            log.warning("call %s: could not store its MOS: %s", q.call_id, exc)

    # -- gateway counters ------------------------------------------------------------

    def _global_counters(self) -> _GwCounters:
        lat_sum = lat_count = 0.0
        for metric in self.ctx.metrics.pacer_lateness.collect():
            for s in metric.samples:
                if s.name.endswith("_sum"):
                    lat_sum = s.value
                elif s.name.endswith("_count"):
                    lat_count = s.value
        return _GwCounters(missed=self.ctx.metrics.stats.missed_ticks,
                           lateness_sum=lat_sum, lateness_count=lat_count)

    def _call_counters(self, state: _State) -> _GwCounters:
        """This call's figures so far: its own playout plus global deltas since start."""
        now = self._global_counters()
        call = state.call
        underruns = speech = ticks = 0
        if call is not None:
            underruns = call.playout.underruns
            speech = call.playout.played_bytes // FRAME_BYTES
            ticks = call.frames_out
        return _GwCounters(
            underruns=underruns, speech_frames=speech, ticks=ticks,
            missed=max(0, now.missed - state.base.missed),
            lateness_sum=max(0.0, now.lateness_sum - state.base.lateness_sum),
            lateness_count=max(0.0, now.lateness_count - state.base.lateness_count),
        )

    def _with_gateway_loss(self, state: _State, sample: RtcpSample) -> RtcpSample:
        if state.call is None:
            return sample
        now = self._call_counters(state)
        prev = state.last_out
        state.last_out = now
        loss = gateway_loss(now.underruns - prev.underruns, now.missed - prev.missed,
                            now.speech_frames - prev.speech_frames, now.ticks - prev.ticks)
        if loss <= 0.0:
            return sample
        combined = 1.0 - (1.0 - sample.loss_fraction) * (1.0 - loss)
        return dataclasses.replace(sample, loss_fraction=min(1.0, combined))

    # -- maps ------------------------------------------------------------------------

    def _state(self, call_id: str) -> _State:
        state = self._calls.get(call_id)
        if state is None:
            state = self._calls[call_id] = _State(call_id)
            while len(self._calls) > self.max_calls:
                _, old = self._calls.popitem(last=False)
                if old.timer is not None:
                    old.timer.cancel()
                log.warning("call %s: MOS state evicted (more than %d calls tracked)",
                            old.call_id, self.max_calls)
        return state

    def _map(self, key: str, call_id: str) -> None:
        self._channels[key] = call_id
        self._channels.move_to_end(key)
        while len(self._channels) > 4 * self.max_calls:
            self._channels.popitem(last=False)

    def _lookup(self, headers: AmiMessage | Mapping[str, str]) -> _State | None:
        for key in ("Uniqueid", "Linkedid"):
            value = headers.get(key)
            if not value:
                continue
            call_id = self._channels.get(value)
            if call_id is None and value in self._calls:
                call_id = value
            if call_id is not None:
                state = self._calls.get(call_id)
                if state is not None:
                    return state
        return None

    def mos_summary(self) -> dict[str, float]:
        """Mean of the finished calls' mean MOS per direction (for ``make demo``)."""
        out: dict[str, float] = {}
        for side in ("in", "out"):
            values = [dq.mean_mos for q in self.results.values()
                      if (dq := q.inbound if side == "in" else q.outbound) is not None]
            if values:
                out[side] = math.fsum(values) / len(values)
        return out


def _valid_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None
