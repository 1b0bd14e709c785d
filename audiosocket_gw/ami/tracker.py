"""The call tracker: AMI events and AudioSocket lifecycle -> the call store.

Every status change of a call goes through ``CallTracker.apply`` (one lock, so the
metrics see each transition once); the state machine itself is
``audiosocket_gw.callstate`` run by ``store.apply_input``, whose terminal statuses
absorb duplicates: an AMI ``Hangup`` and the AudioSocket EOF of the same call, in
either order, end it once.

Correlation (docs/PROTOCOLS.md §2.9): an event belongs to call X when its ``Uniqueid``
is X (Originate ``ChannelId``; the ``;2`` half of a Local channel is ignored), when
an earlier ``Newexten`` ``AppData: X,<host:port>`` or ``VarSet AIGW_CALL_ID=X`` tied
its Uniqueid to X (inbound calls), or, for the ``OriginateResponse`` the client
re-injects, by the Originate's ActionID.

Inputs: ``Newstate`` 5 -> RINGING, 6 -> ANSWERED (outbound only: an inbound channel
is Up before the gateway has it); ``OriginateResponse`` Reason -> its input;
``Hangup`` -> HANGUP with its ``Cause``; AudioSocket start -> ANSWERED (a call with
no record yet gets one: inbound, allow-unregistered); AudioSocket end -> EOF (the
caller hung up) or GATEWAY_HANGUP (bot, watchdog, shutdown) with the reason.
``ChannelTalkingStart/Stop`` and ``AMDSTATUS``/``AMDCAUSE`` VarSets go to the
watchdogs.

Resync (after every AMI login): ``CoreShowChannels``; a tracked call that is neither
a live channel nor a live AudioSocket is closed with VANISHED, reason
``ami-resync-vanished``, which releases its slot; then ``reconcile_slots``.
With a shared store (PostgreSQL, several nodes) startup and resync touch only this
node's calls (``AIGW_NODE_ID``); a dead node's go to ``cluster.NodeLease``.
Startup: calls a previous process left open cannot be live any more (their
AudioSocket died with it): closed with VANISHED, reason ``gateway-restart``, at the
last time they were known alive (``last_alive_at``, written for live calls in one
batch every ``alive_interval_s``), so the downtime is neither duration nor billed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ..callstate import CallInput, CallStatus, status_from_originate_reason
from ..dial import CONSULT_METADATA_KEY, MOVED_END_REASON
from ..store.base import CallRecord, Direction
from .client import AmiClient, AmiClientError
from .protocol import AmiMessage, audiosocket_call_id, c_unescape

if TYPE_CHECKING:
    from ..ami_metrics import CallMetrics
    from ..call import Call
    from ..context import GatewayContext
    from ..events import StatusChange


class AmiCallSink(Protocol):
    """Who hears talk detection and AMD results of our calls (the watchdogs)."""

    def on_talking(self, call_id: str) -> None: ...

    def on_amd(self, call_id: str, status: str, cause: str) -> None: ...

log = logging.getLogger("audiosocket_gw.tracker")

__all__ = ["CallTracker"]

_MAX_MAP = 50_000
_NORMAL_ENDS = frozenset({"caller-hangup"})


class CallTracker:
    """The component (see the module docstring)."""

    def __init__(
        self,
        ctx: GatewayContext,
        client: AmiClient | None,
        metrics: CallMetrics,
        *,
        watchdogs: AmiCallSink | None = None,
        queued_grace_s: float = 60.0,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.client = client
        self.metrics = metrics
        self.watchdogs = watchdogs
        self.clock = ctx.clock.wall
        self.queued_grace_s = queued_grace_s
        self.channels: dict[str, str] = {}
        """call id -> channel name (for the AMI Hangup action)."""
        self._uid_call: dict[str, str] = {}
        self._amd_status: dict[str, str] = {}
        self._ops: asyncio.Queue[tuple[str, Call]] = asyncio.Queue(10_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.resyncs = 0
        self.events_seen = 0
        self._dropped_seen = 0
        self._resync_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return []

    alive_interval_s = 5.0
    """How often live calls' ``last_alive_at`` is written (one batch per interval)."""

    async def start(self) -> None:
        events = self.ctx.events
        self._unsubscribe = [
            events.started.connect(self._on_call_start),
            events.ended.connect(self._on_call_end),
            events.status_changed.connect(self._on_status),
        ]
        if self.client is not None:
            self.client.on_connected.append(self._resync_cb)
        await self.reconcile_startup()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._audiosocket_worker()))
        self._tasks.append(loop.create_task(self._heartbeat()))
        if self.client is not None:
            self._tasks.append(loop.create_task(self._event_worker(self.client)))

    async def stop(self) -> None:
        # Let queued AudioSocket ends reach the store before the store closes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ops.join(), 2.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    async def _heartbeat(self) -> None:
        """Every ``alive_interval_s``: one batch marks the calls known alive (a live
        AudioSocket, or a channel AMI showed us) so a crash costs at most that much."""
        while True:
            await asyncio.sleep(self.alive_interval_s)
            ids = [*self.ctx.calls, *self.channels]
            if not ids:
                continue
            try:
                await self.store.touch_alive(ids, self.clock())
            except Exception:
                log.exception("call heartbeat failed")

    # -- status changes -----------------------------------------------------------

    async def apply(self, call_id: str, inp: CallInput,
                    detail: dict[str, Any] | None = None, *,
                    at: float | None = None) -> CallRecord | None:
        """The status writer's ``apply`` (kept for callers that hold the tracker)."""
        return await self.ctx.status.apply(call_id, inp, detail, at=at)

    def _on_status(self, change: StatusChange) -> None:
        if change.after.is_terminal:
            self.channels.pop(change.after.id, None)

    # -- startup and resync -------------------------------------------------------

    def _scope(self) -> str | None:
        """Whose calls this process reconciles: with a shared store (PostgreSQL) only
        its own node's (the others' go to ``cluster.NodeLease`` when their lease
        expires); with the embedded store, every call."""
        st = self.ctx.settings.store
        return st.node_id if st.is_postgres else None

    async def reconcile_startup(self) -> int:
        """Close every call a previous process (of this node) left open; release
        stale slots (never-created ones only with the embedded store: on a shared one
        another node may be between its acquire and its create)."""
        closed = 0
        scope = self._scope()
        for rec in await self.store.active_calls(scope):
            # The call died with the previous process: it ended when it was last known
            # alive, not now; the downtime is not billed.
            last = rec.last_known_alive
            await self.apply(rec.id, CallInput.VANISHED,
                             {"reason": "gateway-restart", "last_alive_at": last},
                             at=min(last, self.clock()))
            self.metrics.resync_vanished.labels("startup").inc()
            closed += 1
        released = await self.store.reconcile_slots(release_orphans=scope is None)
        if closed or released:
            log.warning("startup reconciliation: closed %d calls, released %d slots",
                        closed, released)
        return closed

    def _live_ids(self, chans: list[AmiMessage], ours: set[str]) -> set[str]:
        """Call ids (and Uniqueids) of ``CoreShowChannels``' channels; remembers the
        channel names of ``ours``."""
        live: set[str] = set()
        for ch in chans:
            uid = ch.get("Uniqueid") or ""
            live.add(uid.split(";", 1)[0])
            mapped = self._uid_call.get(uid)
            if mapped:
                live.add(mapped)
            data = ch.get("ApplicationData") or ""
            if (ch.get("Application") or "").lower() == "audiosocket" and data:
                app_cid = data.split(",", 1)[0].strip()
                live.add(app_cid)
                self._map(uid, app_cid)
            name = ch.get("Channel")
            owner = self._uid_call.get(uid) or uid
            if name and owner in ours:  # only our calls' channels are kept
                self._remember_channel(owner, name, replace=False)
        return live

    async def live_in_asterisk(self, call_ids: set[str]) -> set[str] | None:
        """Which of ``call_ids`` still have a channel in Asterisk (``CoreShowChannels``);
        None without AMI or when the query fails. For the takeover of a dead node's
        calls: one handed to ``Dial()`` lives on without our AudioSocket."""
        if self.client is None:
            return None
        try:
            chans = await self.client.core_show_channels()
        except AmiClientError as exc:
            log.warning("AMI CoreShowChannels failed: %s", exc)
            return None
        return call_ids & self._live_ids(chans, call_ids)

    async def _resync_cb(self) -> None:
        await self.resync()

    async def resync(self) -> int:
        """Reconcile tracked calls with ``CoreShowChannels``; returns calls closed."""
        if self.client is None:
            return 0
        async with self._resync_lock:
            try:
                chans = await self.client.core_show_channels()
            except AmiClientError as exc:
                log.warning("AMI resync failed: %s", exc)
                return 0
            scope = self._scope()
            active = await self.store.active_calls(scope)
            ours = {rec.id for rec in active}
            live = self._live_ids(chans, ours)
            closed = 0
            now = self.clock()
            for rec in active:
                if rec.id in live or rec.id in self.ctx.calls:
                    continue
                if rec.status is CallStatus.QUEUED and now - rec.created_at < self.queued_grace_s:
                    continue  # an Originate may still be creating its channel
                await self.apply(rec.id, CallInput.VANISHED, {"reason": "ami-resync-vanished"})
                self.metrics.resync_vanished.labels("resync").inc()
                closed += 1
            await self.store.reconcile_slots(release_orphans=scope is None)
            self.resyncs += 1
            if closed:
                log.warning("AMI resync: %d tracked calls were gone, closed", closed)
            return closed

    # -- AMI events ---------------------------------------------------------------

    async def _event_worker(self, client: AmiClient) -> None:
        async for msg in client.events():
            try:
                await self.handle_event(msg)
            except Exception:
                log.exception("AMI event %s failed", msg.event)
            self.ctx.events.ami_message.emit(msg)
            if self.metrics is not None and client.dropped > self._dropped_seen:
                self.metrics.ami_events_dropped.inc(client.dropped - self._dropped_seen)
                self._dropped_seen = client.dropped

    def _remember_channel(self, call_id: str, name: str, *, replace: bool = True) -> None:
        channels = self.channels
        if not replace and call_id in channels:
            return
        if call_id not in channels and len(channels) >= _MAX_MAP:
            channels.pop(next(iter(channels)))  # a safety bound: the oldest goes
        channels[call_id] = name

    def _map(self, uid: str, call_id: str) -> None:
        if uid and uid not in self._uid_call:
            if len(self._uid_call) >= _MAX_MAP:
                self._uid_call.pop(next(iter(self._uid_call)))
            self._uid_call[uid] = call_id

    def _call_for(self, msg: AmiMessage) -> str | None:
        uid = msg.get("Uniqueid") or ""
        if uid in self._uid_call:
            return self._uid_call[uid]
        return uid or None

    async def handle_event(self, msg: AmiMessage) -> None:
        """Apply one AMI event (public so tests and tools can feed events directly)."""
        self.events_seen += 1
        ev = (msg.event or "").lower()
        uid = msg.get("Uniqueid") or ""
        if ev == "originateresponse":
            await self._originate_response(msg)
            return
        if ev == "newexten" and (app_cid := audiosocket_call_id(
                msg.get("Application"), msg.get("AppData"))):
            if app_cid:
                self._map(uid, app_cid)
                if msg.get("Channel"):
                    self._remember_channel(app_cid, msg.get("Channel", ""), replace=False)
            return
        if ev == "varset":
            var = (msg.get("Variable") or "").upper()
            value = c_unescape(msg.get("Value") or "")
            if var == "AIGW_CALL_ID" and value:
                self._map(uid, value)
                if msg.get("Channel"):
                    self._remember_channel(value, msg.get("Channel", ""), replace=False)
                return
            if var == "AMDCAUSE" and self.watchdogs is not None:
                owner = self._call_for(msg)
                if owner is not None:
                    status = self._amd_status.pop(uid, "")
                    self.watchdogs.on_amd(owner, status, value)
            elif var == "AMDSTATUS":
                self._amd_status[uid] = value
            return
        if uid.endswith(";2"):
            return  # the Local channel's other half: its state is not the call's
        cid = self._call_for(msg)
        if cid is None:
            return
        if ev == "newchannel":
            # Only our calls' channels: a busy PBX creates many others, and they would
            # stay here forever (only our calls' ends remove entries).
            name = msg.get("Channel")
            if name and (uid in self._uid_call or await self.store.get_call(cid) is not None):
                self._remember_channel(cid, name)
        elif ev == "newstate":
            state = msg.get("ChannelState")
            if state == "5":
                await self.apply(cid, CallInput.RINGING)
            elif state == "6":
                rec = await self.store.get_call(cid)
                if rec is not None and rec.direction == "outbound":
                    await self.apply(cid, CallInput.ANSWERED, {"source": "ami"})
        elif ev == "hangup":
            cause = _int(msg.get("Cause"))
            detail: dict[str, Any] = {"source": "ami"}
            if cause is not None:
                detail["cause"] = cause
            if self._gateway_reasons and cid in self._gateway_reasons:
                detail["reason"] = self._gateway_reasons[cid]
            await self.apply(cid, CallInput.HANGUP, detail)
            self._uid_call.pop(uid, None)
            if self.channels.get(cid) == msg.get("Channel"):
                self.channels.pop(cid, None)  # that channel is gone: nothing to hang up
        elif ev in ("channeltalkingstart", "channeltalkingstop"):
            if self.watchdogs is not None:
                self.watchdogs.on_talking(cid)

    async def _originate_response(self, msg: AmiMessage) -> None:
        cid: str | None = None
        if self.client is not None:
            cid = self.client.originate_channel_id(msg.action_id)
            if msg.action_id is not None:
                self.client.forget_originate(msg.action_id)
        cid = cid or msg.get("Uniqueid")
        if not cid:
            return
        reason = _int(msg.get("Reason"))
        inp = status_from_originate_reason(reason if reason is not None else 0)
        await self.apply(cid, inp, {"source": "originate", "originate_reason": reason})

    # -- AudioSocket lifecycle ----------------------------------------------------

    def _on_call_start(self, call: Call) -> None:
        self._enqueue("start", call)

    # Why the gateway ended a call, known at once (the "end" op is applied later, by
    # the worker): an AMI Hangup that overtakes it (the Hangup action we send, or
    # Asterisk's own after the 00 00 00) still records the gateway's reason.
    _gateway_reasons: dict[str, str] | None = None

    def set_end_reason(self, call_id: str, reason: str) -> None:
        """The ``hangup_reason`` to record when ``call_id``'s channel hangs up (call
        control: an attended transfer the person accepted ends as ``transferred``)."""
        if self._gateway_reasons is None:
            self._gateway_reasons = {}
        if len(self._gateway_reasons) >= _MAX_MAP:
            self._gateway_reasons.pop(next(iter(self._gateway_reasons)))
        self._gateway_reasons[call_id] = reason

    def _on_call_end(self, call: Call) -> None:
        reason = call.end_reason or "ended"
        if reason not in _NORMAL_ENDS and reason != MOVED_END_REASON:
            if self._gateway_reasons is None:
                self._gateway_reasons = {}
            if len(self._gateway_reasons) >= _MAX_MAP:
                self._gateway_reasons.pop(next(iter(self._gateway_reasons)))
            self._gateway_reasons[call.call_id] = reason
        self._enqueue("end", call)

    # Starts and ends carry a call's state: never dropped. Past the queue's bound they
    # wait in this backlog (in order); the worker moves them on as it frees room. Each
    # entry is a call the server has already accepted, so the backlog is bounded by
    # the calls themselves, not by what a peer can send.
    _backlog: collections.deque[tuple[str, Call]] | None = None
    _backlog_warned = 0.0

    def _enqueue(self, kind: str, call: Call) -> None:
        backlog = self._backlog
        if not backlog:
            try:
                self._ops.put_nowait((kind, call))
                return
            except asyncio.QueueFull:
                pass
        if backlog is None:
            backlog = self._backlog = collections.deque()
        backlog.append((kind, call))
        now = time.monotonic()
        if now - self._backlog_warned >= 10.0:
            self._backlog_warned = now
            log.warning("call tracker behind: %d AudioSocket starts/ends waiting",
                        self._ops.qsize() + len(backlog))

    def _refill(self) -> None:
        backlog = self._backlog
        while backlog and not self._ops.full():
            self._ops.put_nowait(backlog.popleft())

    async def _audiosocket_worker(self) -> None:
        while True:
            kind, call = await self._ops.get()
            try:
                if kind == "start":
                    await self._started(call)
                else:
                    await self._ended(call)
            except Exception:
                call.log.exception("call tracker failed on AudioSocket %s", kind)
            finally:
                self._refill()  # before task_done: join() must also wait for the backlog
                self._ops.task_done()

    async def _started(self, call: Call) -> None:
        info = call.info
        if CONSULT_METADATA_KEY in info.metadata:
            return  # an attended transfer's consult leg: not a call of its own
        parent = info.metadata.get("parent_call_id")
        if parent:
            # A leg resumed after Dial(): the same call (one record, one CallSid).
            await self.apply(parent, CallInput.ANSWERED,
                             {"source": "audiosocket", "leg": call.call_id})
            return
        rec = await self.store.get_call(call.call_id)
        if rec is None:
            direction: Direction = "outbound" if info.direction == "outbound" else "inbound"
            with contextlib.suppress(Exception):
                await self.store.create_call(CallRecord(
                    id=call.call_id, tenant=info.tenant, agent=info.agent,
                    direction=direction, from_=info.from_, to=info.to,
                    created_at=self.clock(), metadata=dict(info.metadata),
                    node_id=self.ctx.settings.store.node_id))
            await self.apply(call.call_id, CallInput.ROUTED_INBOUND, {"source": "audiosocket"})
        await self.apply(call.call_id, CallInput.ANSWERED, {"source": "audiosocket"})

    async def _ended(self, call: Call) -> None:
        reason = call.end_reason or "ended"
        record_id = call.info.metadata.get("parent_call_id") or call.call_id
        if reason == MOVED_END_REASON or CONSULT_METADATA_KEY in call.info.metadata:
            # The gateway handed the call to Dial() (callcontrol.py): it goes on in
            # Asterisk and ends with the channel's Hangup or a resumed leg's end.
            if self._gateway_reasons:
                self._gateway_reasons.pop(call.call_id, None)
            return
        detail = {"reason": reason}
        if record_id != call.call_id:
            detail["leg"] = call.call_id
        try:
            if reason in _NORMAL_ENDS:
                await self.apply(record_id, CallInput.AUDIOSOCKET_EOF, detail)
            else:
                await self.apply(record_id, CallInput.GATEWAY_HANGUP, detail)
        finally:
            if self._gateway_reasons:
                self._gateway_reasons.pop(call.call_id, None)
        channel = self.channels.get(call.call_id) or self.channels.get(record_id)
        if reason not in _NORMAL_ENDS and channel and self.client is not None \
                and self.client.connected:
            # The gateway ended the call: make sure Asterisk hangs up the channel too.
            with contextlib.suppress(AmiClientError):
                await self.client.hangup(channel)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
