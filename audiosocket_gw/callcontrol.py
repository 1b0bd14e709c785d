"""Call control over AMI: ``<Dial>``, transfers and DTMF toward the caller's peer.

Asterisk does the bridge, not the gateway (docs/PROTOCOLS.md §4). To dial a number or
a SIP URI for a live call, ``CallController.dial``:

1. validates the ``DialRequest`` and builds the ``Dial()`` arguments: numbers go
   through the tenant's trunk with the Originate dial template
   (``AIGW_DIAL_TEMPLATE``, ``PJSIP/{to}@aigw-trunk``), SIP URIs as
   ``PJSIP/<endpoint>/sip:user@host`` on the same endpoint; several targets are
   ``&``-joined (they ring at once, the first to answer wins). Options: ``g`` when the
   caller comes back afterwards (without it Asterisk hangs the caller up when the
   dialed party does, §4.3), ``H`` for ``hangupOnStar``, ``L(ms)`` for
   ``timeLimit``, ``D(digits)`` for ``<Number sendDigits>`` (``w`` = 0.5 s);
2. sets the dial variables (``DIAL_VARIABLES``) on the call's channel with AMI
   ``Setvar`` (``AIGW_NEXT`` last), every value checked by
   ``ami.client.check_dialplan_value`` since the dialplan expands them into
   ``Dial()``'s arguments;
3. with ``resume``, pre-registers a new AudioSocket id in the call registry (the
   caller's ``CallInfo`` with ``parent_call_id`` and the request's metadata) and
   sets it as ``AIGW_RESUME_ID``;
4. ends the AudioSocket leg with the ``00 00 00`` frame (``Call.hangup`` with the
   reason ``dial.MOVED_END_REASON``): ``[aigw-dial]`` (dialplan/extensions_aigw.conf)
   runs ``Dial()``, reports ``AIGW_DIAL_ANSWERED``/``AIGW_DIAL_STATUS`` and then opens
   the resume leg or hangs up with cause 16.

Status: the call stays ``in-progress`` while Asterisk dials (the tracker ignores the
AudioSocket end of a moved call and sends no AMI Hangup); it completes at the
channel's AMI ``Hangup`` or at the end of the resumed leg, which updates the same
call record (``parent_call_id``), so there is one CallSid.

``outcome(key)`` (``key`` = the resume id or the call id) waits for the
``DialOutcome``, built from the VarSets of the caller's channel
(``ctx.events.ami_message``): ``DIALSTATUS`` mapped to Twilio's ``DialCallStatus``,
``ANSWEREDTIME`` as the duration, ``DialCallSid`` from the dialed channel's Uniqueid.

``send_dtmf`` plays digits to the caller's peer with AMI ``PlayDTMF``, one action per
digit: never 0x03 frames toward Asterisk, which kill the call (§1).

Errors: ``DialError`` (the request is wrong: a 4xx), ``CallControlUnavailable`` (no
AMI, not connected, call not live or channel unknown: a 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast, get_args

from aiohttp import web

from .ami.client import AmiClient, AmiClientError, check_dialplan_value
from .ami.protocol import AmiMessage, c_unescape
from .attended import AttendedError, AttendedTransfers, ConsultBackend, resume_call_info
from .dial import (
    DTMF_DIGITS_RE,
    MOVED_END_REASON,
    TRANSFER_METADATA_KEY,
    TRANSFER_SUMMARY_KEY,
    DialOutcome,
    DialRequest,
    DialStatus,
    DialTarget,
)
from .settings import OutboundSettings
from .store.base import StoreError
from .tenants import TransferDestination, normalize_e164
from .twilio.ids import call_sid_for

DIAL_STATUSES: Final = frozenset(get_args(DialStatus))

if TYPE_CHECKING:
    from .ami.tracker import CallTracker
    from .call import Call
    from .context import GatewayContext
    from .events import StatusChange

log = logging.getLogger("audiosocket_gw.callcontrol")

__all__ = [
    "DIAL_CONTEXT",
    "DIAL_RESULT_VARIABLES",
    "DIAL_VARIABLES",
    "CallControlUnavailable",
    "CallController",
    "DialError",
    "dial_options",
    "dial_status",
    "dial_targets",
]

DIAL_CONTEXT: Final = "aigw-dial"
DIAL_VARIABLES: Final = (
    "AIGW_DIAL_TARGETS", "AIGW_DIAL_TIMEOUT", "AIGW_DIAL_OPTIONS", "AIGW_DIAL_CALLERID",
    "AIGW_RESUME_ID", "AIGW_NEXT",
)
"""What the gateway sets (in this order, ``AIGW_NEXT`` last) before ending the leg."""
DIAL_RESULT_VARIABLES: Final = ("AIGW_DIAL_STATUS", "AIGW_DIAL_ANSWERED")
"""What ``[aigw-dial]`` sets once ``Dial()`` returns (seen as AMI VarSets)."""

MAX_TARGETS: Final = 10
_STATUS: Final[dict[str, DialStatus]] = {
    "ANSWER": "completed",
    "BUSY": "busy",
    "NOANSWER": "no-answer",
    "CANCEL": "canceled",
    "CONGESTION": "failed",
    "CHANUNAVAIL": "failed",
}
_SIP_RE: Final = re.compile(r"(?:sips?:)?([A-Za-z0-9._+-]{1,64}@[A-Za-z0-9.-]{1,253}(?::\d{1,5})?)")
_EXTENSION_RE: Final = re.compile(r"[0-9A-Za-z*#+_-]{1,32}@[A-Za-z0-9_-]{1,64}")
_MAX_OUTCOMES: Final = 1000


class DialError(ValueError):
    """The dial request is invalid (the message says why)."""


class CallControlUnavailable(Exception):
    """AMI is missing or down, or the call is not live: nothing was done."""


def dial_status(asterisk_status: str) -> DialStatus:
    """Twilio's ``DialCallStatus`` for Asterisk's ``DIALSTATUS`` (unknown: failed)."""
    return _STATUS.get(asterisk_status.strip().upper(), "failed")


def dial_targets(targets: tuple[DialTarget, ...], template: str) -> str:
    """The ``&``-joined ``Dial()`` targets; ``DialError`` for a bad target."""
    if not targets:
        raise DialError("nothing to dial")
    if len(targets) > MAX_TARGETS:
        raise DialError(f"at most {MAX_TARGETS} targets")
    out = []
    for t in targets:
        if t.kind == "number":
            e164 = normalize_e164(t.address)
            if e164 is None:
                raise DialError("a number target must be a phone number (E.164)")
            out.append(template.format(to=e164))
        elif t.kind == "sip":
            m = _SIP_RE.fullmatch(t.address.strip())
            if m is None:
                raise DialError("a SIP target must be sip:user@host[:port]")
            tech, sep, rest = template.partition("/")
            endpoint = rest.split("@", 1)[1] if "@" in rest else ""
            if tech != "PJSIP" or not sep or not endpoint:
                raise DialError("SIP targets need a PJSIP/{to}@endpoint dial template")
            out.append(f"PJSIP/{endpoint}/sip:{m.group(1)}")
        elif t.kind == "extension":
            if not _EXTENSION_RE.fullmatch(t.address):
                raise DialError("an extension target must be extension@context")
            out.append(f"Local/{t.address}")
        else:
            raise DialError(f"unknown target kind {t.kind!r}")
    joined = "&".join(out)
    try:
        return check_dialplan_value(joined)
    except ValueError as exc:
        raise DialError(str(exc)) from None


def dial_options(request: DialRequest) -> str:
    """``Dial()`` options for ``request`` (see the module docstring)."""
    opts = []
    if request.resume:
        opts.append("g")
    if request.hangup_on_star:
        opts.append("H")
    if not 1 <= request.time_limit_s <= 86_400:
        raise DialError("time limit must be within 1..86400 seconds")
    opts.append(f"L({int(request.time_limit_s * 1000)})")
    digits = {t.send_digits for t in request.targets if t.send_digits}
    if len(digits) > 1:
        raise DialError("targets with different sendDigits cannot ring together")
    if digits:
        d = digits.pop()
        if not DTMF_DIGITS_RE.fullmatch(d):
            raise DialError("sendDigits takes 0-9 * # A-D and w (0.5 s pause)")
        opts.append(f"D({d})")
    return "".join(opts)


@dataclass
class _Watch:
    """One Dial in progress on one channel."""

    call_id: str
    channel: str
    resume_id: str
    future: asyncio.Future[DialOutcome]
    dialstatus: str = ""
    answered: str = ""
    dest_uniqueid: str = ""
    answered_uniqueid: str = ""
    transfer: str = ""
    """The agent's transfer destination this Dial is for (or empty)."""
    keys: list[str] = field(default_factory=list)


class CallController:
    """The component (see the module docstring)."""

    def __init__(self, ctx: GatewayContext, client: AmiClient | None, tracker: CallTracker,
                 outbound: OutboundSettings, *, dtmf_duration_ms: int = 250) -> None:
        self.ctx = ctx
        self.client = client
        self.tracker = tracker
        self.outbound = outbound
        self.dtmf_duration_ms = dtmf_duration_ms
        self._by_key: dict[str, _Watch] = {}
        self._by_channel: dict[str, _Watch] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        settings = ctx.settings
        self.consult = ConsultBackend(settings.tts, settings.core.data_path)
        """Serves attended transfers' consult legs (``Gateway.backend_for``)."""
        self.attended = AttendedTransfers(ctx, tracker, outbound.dial_template, self.consult)

    # -- component ----------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        events = self.ctx.events
        self._unsubscribe = [events.ami_message.connect(self._on_ami),
                             events.started.connect(self._on_call_start),
                             events.status_changed.connect(self._on_status)]
        self.attended.start()

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        await self.attended.stop()
        await self.consult.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for watch in list(self._by_channel.values()):
            if not watch.future.done():
                watch.future.cancel()
        self._by_channel.clear()

    def _on_call_start(self, call: Call) -> None:
        # What the AI agent did (tools, transfers) goes to the call's event log, on the
        # call record (a resumed leg writes to its parent's).
        record_id = call.info.metadata.get("parent_call_id") or call.call_id
        call.on_agent_event = lambda kind, data: self._spawn(
            self._append_event(record_id, kind, data))
        # The backend session controls its call through Call.dial/send_dtmf; they
        # land here (call.py knows nothing of AMI). Without AMI there is nothing to
        # offer: the call logs the request and goes on.
        if self.client is None:
            return
        cid = call.call_id
        call.on_dial = lambda request: self._spawn(self._dial_from_call(cid, request))
        call.on_send_dtmf = lambda digits: self._spawn(self._dtmf_from_call(cid, digits))
        # A resumed leg (its id is a dial's resume id) asks how that Dial ended: the
        # AMI VarSets and the new AudioSocket connection race each other.
        call.on_dial_outcome = lambda timeout: self.outcome(cid, timeout)

    def _on_status(self, change: StatusChange) -> None:
        # The call ended while its Dial was pending and the AMI events that would say
        # how were lost (AMI down, resync): do not leave waiters hanging.
        if not change.after.is_terminal or not self._by_channel:
            return
        for watch in [w for w in self._by_channel.values() if w.call_id == change.after.id]:
            self._finish(watch, watch.dialstatus or "CANCEL", hung_up=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append_event(self, record_id: str, kind: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.ctx.store.append_event(record_id, kind, self.ctx.clock.wall(), data)

    async def _dial_from_call(self, call_id: str, request: DialRequest) -> None:
        try:
            await self.dial(call_id, request)
        except (DialError, CallControlUnavailable) as exc:
            log.warning("call %s: dial refused: %s", call_id, exc)
            call = self.ctx.calls.get(call_id)
            if call is not None:
                call.dial_refused(str(exc))

    async def _dtmf_from_call(self, call_id: str, digits: str) -> None:
        try:
            await self.send_dtmf(call_id, digits)
        except (ValueError, CallControlUnavailable) as exc:
            log.warning("call %s: DTMF not sent: %s", call_id, exc)

    # -- dial ---------------------------------------------------------------------

    def _live(self, call_id: str) -> tuple[Call, str, AmiClient]:
        client = self.client
        if client is None or not client.connected:
            raise CallControlUnavailable("AMI is not connected")
        call = self.ctx.calls.get(call_id)
        if call is None or call.ended:
            raise CallControlUnavailable(f"call {call_id} is not connected")
        parent = call.info.metadata.get("parent_call_id", "")
        channel = self.tracker.channels.get(call_id) or (
            self.tracker.channels.get(parent) if parent else None)
        if not channel:
            raise CallControlUnavailable(f"call {call_id}: its Asterisk channel is unknown")
        return call, channel, client

    async def dial(self, call_id: str, request: DialRequest) -> str | None:
        """Move ``call_id`` into ``Dial()``; the resume id (``request.resume``) or None.

        A transfer to an attended destination goes to ``attended.AttendedTransfers``
        instead (hold, ask the person, bridge or come back)."""
        targets = dial_targets(request.targets, self.outbound.dial_template)
        dest = self._attended_destination(call_id, request)
        if dest is not None:
            return await self._attended(call_id, request, dest, targets)
        options = dial_options(request)
        if not 1 <= request.timeout_s <= 600:
            raise DialError("timeout must be within 1..600 seconds")
        caller_id = ""
        if request.caller_id:
            caller_id = normalize_e164(request.caller_id) or ""
            if not caller_id:
                raise DialError("callerId must be a phone number (E.164)")
        call, channel, client = self._live(call_id)
        if channel in self._by_channel:
            raise CallControlUnavailable(f"call {call_id} is already dialing")
        record_id = call.info.metadata.get("parent_call_id") or call_id
        resume_id = str(uuid.uuid4()) if request.resume else ""
        values = {
            "AIGW_DIAL_TARGETS": targets,
            "AIGW_DIAL_TIMEOUT": str(max(1, round(request.timeout_s))),
            "AIGW_DIAL_OPTIONS": options,
            "AIGW_DIAL_CALLERID": caller_id,
            "AIGW_RESUME_ID": resume_id,
            "AIGW_NEXT": "dial",
        }
        assert tuple(values) == DIAL_VARIABLES
        if resume_id:
            meta = {**call.info.metadata, **request.metadata, "parent_call_id": record_id}
            info = dataclasses.replace(call.info, call_id=resume_id, metadata=meta)
            # The caller comes back when Dial() returns, up to the ring timeout plus the
            # time limit later: the registration must outlive both.
            ttl = request.timeout_s + request.time_limit_s + 120.0
            self.ctx.registry.register(info, ttl=ttl)
            # In the store too: the dialplan's failover may take the leg to another
            # node (a shared store), which finds it there.
            now = self.ctx.clock.wall()
            try:
                await self.ctx.store.register_leg(resume_id, record_id, dict(meta), now,
                                                  now + ttl)
            except Exception as exc:  # noqa: BLE001 - this node can still take it
                log.warning("call %s: resume leg not in the store (%s): only this node "
                            "can take it", call_id, type(exc).__name__)
        loop = asyncio.get_running_loop()
        watch = _Watch(call_id=record_id, channel=channel, resume_id=resume_id,
                       future=loop.create_future(),
                       transfer=request.metadata.get(TRANSFER_METADATA_KEY, ""))
        watch.keys = [k for k in (call_id, record_id, resume_id) if k]
        self._by_channel[channel] = watch
        try:
            for name, value in values.items():
                await client.setvar(channel, name, value)
        except (AmiClientError, ValueError) as exc:
            self._by_channel.pop(channel, None)
            if resume_id:
                self.ctx.registry.discard(resume_id)
                self._spawn(self._discard_leg(resume_id))
            with contextlib.suppress(AmiClientError, ValueError):
                await client.setvar(channel, "AIGW_NEXT", "")
            raise CallControlUnavailable(f"call {call_id}: Setvar failed: {exc}") from exc
        for key in watch.keys:
            self._remember(key, watch)
        with contextlib.suppress(Exception):
            await self.ctx.store.append_event(
                record_id, "dial", self.ctx.clock.wall(),
                {"targets": len(request.targets), "resume": bool(resume_id),
                 "leg": call_id})
        log.info("call %s: dialing %d target(s)%s", call_id, len(request.targets),
                 " (resume)" if resume_id else "")
        call.hangup(MOVED_END_REASON)  # 00 00 00: AudioSocket() returns, [aigw-dial] runs
        return resume_id or None

    def _attended_destination(self, call_id: str, request: DialRequest
                              ) -> TransferDestination | None:
        name = request.metadata.get(TRANSFER_METADATA_KEY)
        call = self.ctx.calls.get(call_id)
        agent = call.info.agent_cfg if call is not None else None
        if not name or agent is None:
            return None
        dest = agent.transfer_destinations.get(name)
        return dest if dest is not None and dest.mode == "attended" else None

    async def _attended(self, call_id: str, request: DialRequest, dest: TransferDestination,
                        target: str) -> str:
        call, channel, client = self._live(call_id)
        if channel in self._by_channel:
            raise CallControlUnavailable(f"call {call_id} is already dialing")
        record_id = call.info.metadata.get("parent_call_id") or call_id
        resume_id = str(uuid.uuid4())
        info = resume_call_info(call, record_id, resume_id, request.metadata)
        try:
            await self.attended.begin(call, channel, client, target, dest,
                                      request.metadata.get(TRANSFER_SUMMARY_KEY, ""), info)
        except AttendedError as exc:
            raise CallControlUnavailable(f"call {call_id}: {exc}") from exc
        return resume_id

    def _remember(self, key: str, watch: _Watch) -> None:
        self._by_key.pop(key, None)
        self._by_key[key] = watch
        while len(self._by_key) > _MAX_OUTCOMES:
            self._by_key.pop(next(iter(self._by_key)))

    async def outcome(self, key: str, timeout: float) -> DialOutcome:  # noqa: ASYNC109
        """The outcome of the Dial started for ``key`` (resume id or call id).

        ``LookupError`` if no Dial is known for it (or the store that would know it
        fails: logged once), ``TimeoutError`` after ``timeout`` s.
        """
        watch = self._by_key.get(key)
        if watch is None:
            return await self._stored_outcome(key, timeout)
        return await asyncio.wait_for(asyncio.shield(watch.future), timeout)

    async def _stored_outcome(self, key: str, timeout: float) -> DialOutcome:  # noqa: ASYNC109
        """A leg resumed here after a Dial that another node started: the outcome that
        node stored on the leg (polled: its AMI events and this leg race each other)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    leg = await self.ctx.store.get_leg(key, self.ctx.clock.wall())
                except StoreError as exc:
                    log.warning("dial %s: outcome not readable from the store (%s)", key,
                                exc)
                    raise LookupError(f"no dial outcome for {key}: store error") from exc
                if leg is None:
                    raise LookupError(f"no dial for {key}")
                meta = leg[1]
                status = meta.get("dial_status", "")
                if status:
                    duration = meta.get("dial_duration", "0")
                    return DialOutcome(
                        status=cast(DialStatus, status if status in DIAL_STATUSES
                                    else "failed"),
                        duration_s=int(duration) if duration.isdigit() else 0,
                        dial_call_sid=meta.get("dial_call_sid", ""))
                await asyncio.sleep(0.05)

    async def _amend_leg(self, leg_id: str, metadata: dict[str, str]) -> None:
        try:
            await self.ctx.store.amend_leg(leg_id, metadata)
        except Exception as exc:  # noqa: BLE001 - only another node's leg misses it
            log.warning("resume leg %s: outcome not stored (%s)", leg_id, type(exc).__name__)

    async def _discard_leg(self, leg_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.ctx.store.discard_leg(leg_id)

    # -- AMI events ---------------------------------------------------------------

    def _on_ami(self, msg: AmiMessage) -> None:
        if not self._by_channel:
            return
        watch = self._by_channel.get(msg.get("Channel") or "")
        if watch is None:
            return
        ev = (msg.event or "").lower()
        if ev == "varset":
            var = (msg.get("Variable") or "").upper()
            value = c_unescape(msg.get("Value") or "").strip()
            if var == "DIALSTATUS" and value:
                watch.dialstatus = value
            elif var in ("ANSWEREDTIME", "AIGW_DIAL_ANSWERED") and value:
                watch.answered = value
            elif var == "AIGW_DIAL_STATUS":
                self._finish(watch, value or watch.dialstatus or "CHANUNAVAIL")
        elif ev == "dialbegin":
            watch.dest_uniqueid = watch.dest_uniqueid or (msg.get("DestUniqueid") or "")
        elif ev == "dialend" and (msg.get("DialStatus") or "").upper() == "ANSWER":
            watch.answered_uniqueid = msg.get("DestUniqueid") or ""
        elif ev == "hangup":
            # Caller gone during the Dial, or hung up after it (no resume, no g).
            self._finish(watch, watch.dialstatus or "CANCEL", hung_up=True)

    def _finish(self, watch: _Watch, asterisk_status: str, *, hung_up: bool = False) -> None:
        self._by_channel.pop(watch.channel, None)
        if watch.future.done():
            return
        try:
            duration = max(0, int(float(watch.answered))) if watch.answered else 0
        except ValueError:
            duration = 0
        dest = watch.answered_uniqueid or watch.dest_uniqueid
        outcome = DialOutcome(
            status=dial_status(asterisk_status), duration_s=duration,
            dial_call_sid=call_sid_for(dest) if dest else "",
            asterisk_status=asterisk_status.upper())
        watch.future.set_result(outcome)
        log.info("call %s: dial ended %s (%s, %d s)", watch.call_id, outcome.status,
                 outcome.asterisk_status, outcome.duration_s)
        if watch.resume_id and hung_up:
            self.ctx.registry.discard(watch.resume_id)
            self._spawn(self._discard_leg(watch.resume_id))
        elif watch.resume_id:
            # The resumed leg's CallInfo carries the outcome (AIGW_DIAL_STATUS is set
            # before the dialplan opens that leg), here and in the store for the node
            # the leg may reach instead.
            amend = {"dial_status": outcome.status, "dial_duration": str(outcome.duration_s),
                     "dial_call_sid": outcome.dial_call_sid}
            self.ctx.registry.amend(watch.resume_id, amend)
            self._spawn(self._amend_leg(watch.resume_id, amend))
        self._spawn(self._log_outcome(watch, outcome))

    async def _log_outcome(self, watch: _Watch, outcome: DialOutcome) -> None:
        if watch.transfer:
            # An agent's transfer: its outcome as AMI reported it.
            self.ctx.metrics.transfers.labels("blind", outcome.status).inc()
        with contextlib.suppress(Exception):
            await self.ctx.store.append_event(
                watch.call_id, "dial_outcome", self.ctx.clock.wall(),
                {"status": outcome.status, "asterisk_status": outcome.asterisk_status,
                 "duration_s": outcome.duration_s, "resume": bool(watch.resume_id)})
            if watch.transfer:
                await self.ctx.store.append_event(
                    watch.call_id, "transfer", self.ctx.clock.wall(),
                    {"destination": watch.transfer, "kind": "blind",
                     "outcome": outcome.status, "asterisk_status": outcome.asterisk_status,
                     "duration_s": outcome.duration_s})

    # -- DTMF -----------------------------------------------------------------------

    async def send_dtmf(self, call_id: str, digits: str) -> int:
        """Play ``digits`` to the caller's peer (``w`` = 0.5 s pause) with ``PlayDTMF``,
        one digit per action, each after the previous reply. Returns the digits sent."""
        if not DTMF_DIGITS_RE.fullmatch(digits):
            raise ValueError("digits: 0-9 * # A-D and w (0.5 s pause), at most 64")
        _, channel, client = self._live(call_id)
        try:
            return await client.send_digits(channel, digits, self.dtmf_duration_ms)
        except AmiClientError as exc:
            raise CallControlUnavailable(f"call {call_id}: PlayDTMF failed: {exc}") from exc
