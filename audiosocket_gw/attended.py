"""Attended transfer: the caller waits on hold while the person is asked first.

``transfer_call`` to a destination with ``mode = "attended"`` (tenants TOML) reaches
the AMI call controller (``callcontrol.py``) as a ``DialRequest``; it hands it to
:class:`AttendedTransfers`, which runs the design of docs/DEPLOY.md §7 on the facts of
docs/PROTOCOLS.md §4.5 and §4.7:

1. pre-registers two AudioSocket ids: the caller's **resume** leg (the caller's
   ``CallInfo`` with ``parent_call_id``, as a blind transfer's) and the person's
   **consult** leg (``dial.CONSULT_METADATA_KEY``); sets ``AIGW_RESUME_ID`` and
   ``AIGW_HOLD_TIMEOUT`` on the caller's channel (``Setvar``), then ``Redirect``\\ s it to
   ``[aigw-hold]`` (``MusicOnHold``). The gateway gets a plain EOF (§4.5): the leg ends
   as moved (``Call.moved_on_eof``), the call record stays ``in-progress``;
2. ``Originate``\\ s the person (``Async``, ``ChannelId``, ring ``timeout_s``, the caller's
   number as caller ID) into ``[aigw-consult]``, which opens
   ``AudioSocket(${AIGW_CONSULT_ID},${AIGW_AUDIOSOCKET})``. That leg is served by
   :class:`ConsultSession`: it speaks the summary (the model's ``summary`` argument, or
   the destination's ``summary``) with the text-to-speech engine of ``tts.py`` (a short
   beep pattern without one) and reads one DTMF digit (a 0x03 frame);
3. on ``1`` within ``decide_timeout_s``: clears ``AIGW_RESUME_ID`` and sends ``Bridge``
   (caller, person, ``Tone: no``); both leave their applications, the consult leg gets
   EOF, and when the bridge ends each survivor goes on after its priority, where the
   dialplan hangs up with cause 16. The AI session closed with the first leg; the call
   record completes at the caller's AMI ``Hangup`` with ``hangup_reason``
   ``transferred``;
4. on ``2``, no digit in time, the person hanging up, or an ``OriginateResponse``
   other than answered (§2.7: busy, no-answer, failed): hangs the person up, adds the
   outcome (``dial_status``) to the resume registration and ``Redirect``\\ s the caller
   to ``[aigw-resume]``: ``AudioSocket(${AIGW_RESUME_ID},...)`` brings the caller back
   to the agent on the same call record; the backend session is told as after a
   failed blind transfer (``OpenAISession._after_transfer``).

Bounded: the person rings at most ``timeout_s``, decides within ``decide_timeout_s``
counted from the end of the spoken summary and prompt (at most ``PROMPT_CAP_S`` of
speech is added); the whole flow is cut at their sum plus ``FLOW_MARGIN_S`` (then the
caller comes back), and ``[aigw-hold]`` itself gives up after ``AIGW_HOLD_TIMEOUT`` seconds (the
gateway's deadline plus a margin) and resumes the caller on its own, so a caller is
never left on hold, even when the gateway or AMI is gone. A caller who hangs up on
hold ends the flow (the person is hung up).

Outcomes (``transfer`` events of the call's log and ``aigw_transfers_total{kind=
"attended", outcome}``): ``completed``, ``declined``, ``timeout``, ``busy``,
``no-answer``, ``failed``, ``canceled`` (the caller hung up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .ami.client import AmiClient, AmiClientError
from .ami.protocol import AmiMessage
from .backends.base import Backend, BackendSession, CallControl, CallInfo
from .callstate import CallInput, status_from_originate_reason
from .dial import CONSULT_METADATA_KEY, MOVED_END_REASON, TRANSFER_SUMMARY_KEY
from .settings import TtsSettings
from .tenants import TransferDestination, normalize_e164
from .tts import CachedTts, TtsError, build_tts
from .twilio.twiml_exec import beep_pcm

if TYPE_CHECKING:
    from .ami.tracker import CallTracker
    from .call import Call
    from .context import GatewayContext

log = logging.getLogger("audiosocket_gw.attended")

__all__ = ["ATTENDED_VARIABLES", "CONSULT_CONTEXT", "HOLD_CONTEXT", "OUTCOMES",
           "RESUME_CONTEXT",
           "AttendedError", "AttendedTransfers", "ConsultBackend", "ConsultSession"]

HOLD_CONTEXT: Final = "aigw-hold"
CONSULT_CONTEXT: Final = "aigw-consult"
RESUME_CONTEXT: Final = "aigw-resume"
ATTENDED_VARIABLES: Final = ("AIGW_RESUME_ID", "AIGW_HOLD_TIMEOUT", "AIGW_CONSULT_ID")
"""What the gateway sets for ``[aigw-hold]``/``[aigw-resume]`` (Setvar on the caller)
and ``[aigw-consult]`` (Originate variable, with ``AIGW_AUDIOSOCKET``)."""
FLOW_MARGIN_S: Final = 10.0
STOP_BOUND_S: Final = 3.0
"""At shutdown, how long a flow may take to hang up the person and resume the caller."""
PROMPT_CAP_S: Final = 40.0
"""At most this much of the spoken summary and prompt is added to ``decide_timeout_s``
(a 400-character summary speaks in ~25-30 s)."""
"""The gateway's deadline past ring + decide time (AMI replies, TTS)."""
HOLD_MARGIN_S: Final = 20.0
"""``AIGW_HOLD_TIMEOUT`` past the gateway's deadline: the dialplan's own safety net."""
OUTCOMES: Final = ("completed", "declined", "timeout", "busy", "no-answer", "failed",
                   "canceled")
_OUTCOMES: Final = {CallInput.ORIGINATE_FAILED_BUSY: "busy",
                    CallInput.ORIGINATE_NO_ANSWER: "no-answer"}
"""A failed ``OriginateResponse`` (docs/PROTOCOLS.md §2.7), read as the outbound calls
read it (``callstate.status_from_originate_reason``) -> outcome; anything else "failed"."""
PROMPT: Final = "Press 1 to take the call, or 2 to decline."
DEFAULT_SUMMARY: Final = "You have a call transferred by the virtual agent."
TTS_TIMEOUT_S: Final = 5.0


class AttendedError(Exception):
    """The transfer could not start; the caller is still with the agent."""


# ---------------------------------------------------------------------------- consult leg


@functools.cache
def beeps(count: int = 3) -> bytes:
    """Short 880 Hz beeps (8 kHz slin): the prompt when no TTS engine is installed (the
    ``<Record>`` beep's generator, 200 ms on, 150 ms off)."""
    return (beep_pcm(200, 880.0) + bytes(2400)) * count


@dataclass
class _Consult:
    text: str
    digit: asyncio.Future[str]
    """The digit pressed, or "" when the leg ended without one."""
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the summary and prompt are queued on the person's leg."""
    speech_s: float = 0.0
    """How long they play (8 kHz slin)."""


class ConsultSession(BackendSession):
    """The person's side: hear the summary, press 1 or 2."""

    def __init__(self, backend: ConsultBackend, info: CallInfo, control: CallControl,
                 consult: _Consult | None) -> None:
        self.backend = backend
        self.info = info
        self.control = control
        self.consult = consult
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.consult is None:  # nobody waits for this leg (late, or a retry)
            self.control.hangup("consult-unexpected")
            return
        self._task = asyncio.get_running_loop().create_task(
            self._speak(self.consult.text), name=f"{self.info.call_id}:consult")

    async def _speak(self, text: str) -> None:
        pcm = await self.backend.speech(text)
        self.control.play(pcm)
        self.control.end_of_audio()
        if self.consult is not None:
            self.consult.speech_s = len(pcm) / 16000
            self.consult.heard.set()

    def on_audio(self, pcm: bytes) -> None:
        pass

    def on_dtmf(self, digit: str) -> None:
        c = self.consult
        if c is not None and digit in "12" and not c.digit.done():
            c.digit.set_result(digit)

    async def close(self, reason: str) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        c = self.consult
        if c is not None and not c.digit.done():
            c.digit.set_result("")


class ConsultBackend(Backend):
    """Serves consult legs (``Gateway.backend_for`` picks it by ``CONSULT_METADATA_KEY``).

    The TTS engine is built on first use: deployments without attended transfers never
    see its startup warning."""

    name = "consult"
    local_barge_in = False

    def __init__(self, tts: TtsSettings, data_dir: Any = None) -> None:
        self._tts_settings = tts
        self._data_dir = data_dir
        self._tts: CachedTts | None = None
        self._tts_built = False
        self.waiting: dict[str, _Consult] = {}

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        return ConsultSession(self, call, control, self.waiting.get(call.call_id))

    async def speech(self, text: str) -> bytes:
        """``text`` as 8 kHz slin; beeps when there is no engine or it fails."""
        if not self._tts_built:
            self._tts_built = True
            self._tts = build_tts(self._tts_settings, self._data_dir)
        if self._tts is not None:
            try:
                return await asyncio.wait_for(self._tts.synthesize(text), TTS_TIMEOUT_S)
            except (TtsError, TimeoutError) as exc:
                log.warning("consult summary not synthesized (%s): beeps instead",
                            getattr(exc, "reason", "timeout"))
        return beeps()

    async def aclose(self) -> None:
        if self._tts is not None:
            await self._tts.aclose()


# ---------------------------------------------------------------------------- the flow


@dataclass
class _Flow:
    record_id: str
    call_id: str
    caller: str
    dest: TransferDestination
    person_id: str
    consult_id: str
    resume_id: str
    originated: asyncio.Future[tuple[int, str]]
    """(OriginateResponse Reason, Channel)."""
    caller_gone: asyncio.Event = field(default_factory=asyncio.Event)


class AttendedTransfers:
    """Runs attended transfers for the AMI call controller (see the module docstring)."""

    def __init__(self, ctx: GatewayContext, tracker: CallTracker, dial_template: str,
                 consult: ConsultBackend) -> None:
        self.ctx = ctx
        self.tracker = tracker
        self.dial_template = dial_template
        self.consult = consult
        self._flows: dict[str, _Flow] = {}  # by the person's ChannelId
        self._by_caller: dict[str, _Flow] = {}  # by the caller's channel name
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self.ctx.events.ami_message.connect(self._on_ami)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_ami(self, msg: AmiMessage) -> None:
        if not self._flows:
            return
        ev = (msg.event or "").lower()
        if ev == "originateresponse":
            # By the Originate's ActionID (as the tracker does), else by Uniqueid (= our
            # ChannelId): a failed Originate names the dial string as its Channel.
            client = self.tracker.client
            by_action = client.originate_channel_id(msg.action_id) if client else None
            flow = self._flows.get(by_action or msg.get("Uniqueid") or "")
            if flow is not None and not flow.originated.done():
                try:
                    reason = int((msg.get("Reason") or "0").strip())
                except ValueError:
                    reason = 0
                flow.originated.set_result((reason, msg.get("Channel") or ""))
        elif ev == "hangup":
            flow = self._by_caller.get(msg.get("Channel") or "")
            if flow is not None:
                flow.caller_gone.set()

    async def begin(self, call: Call, channel: str, client: AmiClient, target: str,
                    dest: TransferDestination, summary: str,
                    resume_info: CallInfo) -> None:
        """Put the caller on hold and start asking the person (``target``: the Originate
        dial string). ``AttendedError`` before the caller has moved; after that the flow
        runs on its own and always ends with the caller bridged, back or gone."""
        record_id = resume_info.metadata.get("parent_call_id") or call.call_id
        if channel in self._by_caller:
            raise AttendedError("an attended transfer is already running for this call")
        try:
            gateway_addr = await client.getvar(channel, "AIGW_AUDIOSOCKET")
        except (AmiClientError, ValueError) as exc:
            raise AttendedError(f"Getvar AIGW_AUDIOSOCKET failed: {exc}") from exc
        if not gateway_addr:
            raise AttendedError("the caller's channel has no AIGW_AUDIOSOCKET")
        deadline = dest.timeout_s + dest.decide_timeout_s + PROMPT_CAP_S + FLOW_MARGIN_S
        hold_s = int(deadline + HOLD_MARGIN_S)
        loop = asyncio.get_running_loop()
        flow = _Flow(record_id=record_id, call_id=call.call_id, caller=channel, dest=dest,
                     person_id=str(uuid.uuid4()), consult_id=str(uuid.uuid4()),
                     resume_id=resume_info.call_id, originated=loop.create_future())
        registry = self.ctx.registry
        registry.register(resume_info, ttl=hold_s + 60.0)
        # In the store too, as for a blind transfer's resume leg: [aigw-resume]'s
        # failover may take the caller back through another worker or node.
        now = self.ctx.clock.wall()
        try:
            await self.ctx.store.register_leg(resume_info.call_id, record_id,
                                              dict(resume_info.metadata), now,
                                              now + hold_s + 60.0)
        except Exception as exc:  # noqa: BLE001 - this node can still take it
            log.warning("call %s: resume leg not in the store (%s): only this node can "
                        "take it", call.call_id, type(exc).__name__)
        text = " ".join(x for x in (summary or DEFAULT_SUMMARY, PROMPT) if x)
        self.consult.waiting[flow.consult_id] = _Consult(text, loop.create_future())
        registry.register(CallInfo(call_id=flow.consult_id, tenant=call.info.tenant,
                                   agent=call.info.agent, direction="outbound",
                                   metadata={CONSULT_METADATA_KEY: record_id}),
                          ttl=dest.timeout_s + 30.0)
        try:
            await client.setvar(channel, "AIGW_RESUME_ID", flow.resume_id)
            await client.setvar(channel, "AIGW_HOLD_TIMEOUT", str(hold_s))
            call.moved_on_eof = True
            await client.redirect(channel, HOLD_CONTEXT)
        except (AmiClientError, ValueError) as exc:
            call.moved_on_eof = False
            await self._discard_resume(flow)
            registry.discard(flow.consult_id)
            self.consult.waiting.pop(flow.consult_id, None)
            with contextlib.suppress(AmiClientError, ValueError):
                await client.setvar(channel, "AIGW_RESUME_ID", "")
            raise AttendedError(f"Redirect to hold failed: {exc}") from exc
        # The EOF may come before or after the reply (§4.5): the leg ends as moved.
        call.end(MOVED_END_REASON, outcome="gateway_hangup", send_hangup=False)
        self._flows[flow.person_id] = flow
        self._by_caller[channel] = flow
        task = loop.create_task(self._run(flow, client, target, gateway_addr, call.info,
                                          deadline), name=f"{call.call_id}:attended")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("call %s: caller on hold, asking %s (attended)", call.call_id, dest.name)

    async def _run(self, flow: _Flow, client: AmiClient, target: str, gateway_addr: str,
                   info: CallInfo, deadline: float) -> None:
        outcome = "failed"
        person = ""
        stopping = False
        try:
            async with asyncio.timeout(deadline):
                outcome, person = await self._ask(flow, client, target, gateway_addr, info)
        except TimeoutError:
            outcome = "timeout"
        except asyncio.CancelledError:
            # The gateway is stopping: still hang up the person and bring the caller
            # back (below, bounded), rather than leave them on hold until the dialplan's
            # own timeout; with peers in AIGW_AUDIOSOCKET_ALT another node takes them.
            log.warning("call %s: gateway stopping during an attended transfer: the "
                        "caller goes back to the agent", flow.call_id)
            outcome, stopping = "failed", True
        except Exception:  # noqa: BLE001 - the caller must never stay on hold
            log.exception("call %s: attended transfer failed", flow.call_id)
        finally:
            self._flows.pop(flow.person_id, None)
            self.consult.waiting.pop(flow.consult_id, None)
            self.ctx.registry.discard(flow.consult_id)
            leg = self.ctx.calls.get(flow.consult_id)
            if leg is not None and outcome != "completed":
                leg.hangup("consult-ended")  # never left talking to nobody
        try:
            async with asyncio.timeout(STOP_BOUND_S if stopping else None):
                if outcome == "completed":
                    pass
                elif flow.caller_gone.is_set():
                    outcome = "canceled"
                    await self._hangup(client, person or flow.person_id)
                    await self._discard_resume(flow)
                else:
                    await self._hangup(client, person or flow.person_id)
                    await self._resume(flow, client, outcome)
        except TimeoutError:
            log.warning("call %s: attended transfer clean-up cut at shutdown", flow.call_id)
        finally:
            self._by_caller.pop(flow.caller, None)
            await self._log(flow, outcome)

    async def _ask(self, flow: _Flow, client: AmiClient, target: str, gateway_addr: str,
                   info: CallInfo) -> tuple[str, str]:
        """(outcome, the person's channel name or "")."""
        caller_num = normalize_e164(info.to if info.direction == "outbound" else info.from_)
        try:
            await client.originate(
                channel=target, channel_id=flow.person_id, context=CONSULT_CONTEXT,
                timeout_ms=int(flow.dest.timeout_s * 1000), caller_id=caller_num or None,
                variables={"AIGW_CONSULT_ID": flow.consult_id,
                           "AIGW_AUDIOSOCKET": gateway_addr})
        except (AmiClientError, ValueError) as exc:
            log.warning("call %s: attended Originate refused: %s", flow.call_id, exc)
            return "failed", ""
        gone: asyncio.Future[Any] = asyncio.ensure_future(flow.caller_gone.wait())
        consult = self.consult.waiting[flow.consult_id]
        try:
            first: set[asyncio.Future[Any]] = {flow.originated, gone}
            done, _ = await asyncio.wait(first,
                                         return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                return "canceled", ""
            reason, person = flow.originated.result()
            if reason != 4:
                return _OUTCOMES.get(status_from_originate_reason(reason), "failed"), ""
            # Answered: the consult leg may already be talking (it can connect before
            # the OriginateResponse, docs/PROTOCOLS.md §2.7); the person has
            # decide_timeout_s from here.
            # The person's decide_timeout_s counts from the end of the summary and the
            # prompt (a long summary must not eat it), up to PROMPT_CAP_S of speech.
            heard: asyncio.Future[Any] = asyncio.ensure_future(consult.heard.wait())
            try:
                async with asyncio.timeout(TTS_TIMEOUT_S + 2.0):
                    await asyncio.wait({heard, consult.digit, gone},
                                       return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                pass
            finally:
                heard.cancel()
            try:
                async with asyncio.timeout(
                        flow.dest.decide_timeout_s + min(consult.speech_s, PROMPT_CAP_S)):
                    second: set[asyncio.Future[Any]] = {consult.digit, gone}
                    done, _ = await asyncio.wait(second,
                                                 return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                return "timeout", person
            if gone in done:
                return "canceled", person
            digit = consult.digit.result()
            if digit != "1":
                return "declined", person
            # Accepted: after the bridge the caller's [aigw-hold] hangs up, not resume.
            try:
                await client.setvar(flow.caller, "AIGW_RESUME_ID", "")
                await client.bridge(flow.caller, person or flow.person_id)
            except (AmiClientError, ValueError) as exc:
                log.warning("call %s: Bridge failed: %s", flow.call_id, exc)
                with contextlib.suppress(AmiClientError, ValueError):
                    await client.setvar(flow.caller, "AIGW_RESUME_ID", flow.resume_id)
                return "failed", person
            # Only now: a refused Bridge leaves the call with the agent, not "transferred".
            self.tracker.set_end_reason(flow.record_id, "transferred")
            await self._discard_resume(flow)
            return "completed", person
        finally:
            gone.cancel()

    async def _discard_resume(self, flow: _Flow) -> None:
        self.ctx.registry.discard(flow.resume_id)
        with contextlib.suppress(Exception):
            await self.ctx.store.discard_leg(flow.resume_id)

    async def _hangup(self, client: AmiClient, channel: str) -> None:
        with contextlib.suppress(AmiClientError, ValueError):
            await client.hangup(channel, 16)

    async def _resume(self, flow: _Flow, client: AmiClient, outcome: str) -> None:
        registry = self.ctx.registry
        if not registry.amend(flow.resume_id, {"dial_status": outcome}):
            return  # already claimed ([aigw-hold] gave up on its own) or expired
        with contextlib.suppress(Exception):  # for a node the failover may reach
            await self.ctx.store.amend_leg(flow.resume_id, {"dial_status": outcome})
        try:
            await client.redirect(flow.caller, RESUME_CONTEXT)
        except (AmiClientError, ValueError) as exc:
            # Still on hold: [aigw-hold] resumes the caller itself at AIGW_HOLD_TIMEOUT.
            log.warning("call %s: Redirect back to the agent failed: %s", flow.call_id, exc)

    async def _log(self, flow: _Flow, outcome: str) -> None:
        self.ctx.metrics.transfers.labels("attended", outcome).inc()
        log.info("call %s: attended transfer to %s: %s", flow.call_id, flow.dest.name,
                 outcome)
        with contextlib.suppress(Exception):
            await self.ctx.store.append_event(
                flow.record_id, "transfer", self.ctx.clock.wall(),
                {"destination": flow.dest.name, "kind": "attended", "outcome": outcome})


def resume_call_info(call: Call, record_id: str, resume_id: str,
                     metadata: dict[str, str]) -> CallInfo:
    """The caller's ``CallInfo`` for the leg that brings them back (same call record)."""
    meta = {**call.info.metadata, **metadata, "parent_call_id": record_id}
    meta.pop(TRANSFER_SUMMARY_KEY, None)
    return dataclasses.replace(call.info, call_id=resume_id, metadata=meta)
