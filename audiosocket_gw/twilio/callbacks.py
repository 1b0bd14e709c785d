"""Twilio-style call status callbacks, as a gateway component.

Why: existing Twilio apps track calls through status callbacks (a form POST to the
number's ``statusCallback`` URL for the events it subscribed to: ``initiated``,
``ringing``, ``answered``, ``completed``). Sending the same requests, signed the same way,
keeps their dashboards, billing and clean-up code working unchanged.

How: :class:`StatusCallbacks` hooks the AudioSocket server's ``on_call_start`` (->
``answered``) and ``on_call_end`` (-> ``completed``, with ``CallDuration``). The AMI call
tracker reports ``initiated`` and ``ringing`` by calling :meth:`StatusCallbacks.notify`
(find the component in ``gateway.components``). ``notify`` never blocks: it builds the
form (pure: :func:`status_params`) and puts it on a bounded queue; when the queue is full
the callback is dropped and counted. Worker tasks POST each request with
``X-Twilio-Signature`` (the account's auth token, see
:func:`~audiosocket_gw.twilio.ids.auth_token_for`); a connection error, a timeout, a
5xx or a 429 schedules a retry with exponential backoff (``attempts`` tries in all)
without holding a worker, so one dead endpoint never delays the others' callbacks, nor
any audio. ``SequenceNumber`` counts each call's callbacks from 0, as Twilio does, so an
app can order retried requests.

Form fields: ``CallSid``, ``AccountSid``, ``From``, ``To``, ``Caller``, ``Called``,
``Direction``, ``CallStatus`` (initiated, ringing, in-progress, completed, or a failure
status given by the tracker), ``ApiVersion``, ``Timestamp`` (RFC 2822, ``+0000``),
``SequenceNumber``, ``CallbackSource=call-progress-events``, ``CallDuration`` /
``Duration`` on ``completed``, and ``AnsweredBy`` once answering-machine detection has
decided (``events.answered_by``; with ``MachineDetection`` the ``answered`` callback
waits up to ``amd_wait_s`` for it). Phone numbers go in the form, never in logs.

Where: a call placed through the Twilio REST API with its own ``StatusCallback``
(``StatusCallbackEvent``, ``StatusCallbackMethod``: POST form or GET query string) uses
those instead of the agent's (:mod:`audiosocket_gw.twilio.callopts`); its
``AsyncAmdStatusCallback`` gets ``AnsweredBy`` when AMD decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..backends.base import CallInfo
from ..callstate import CallInput, CallStatus
from ..dial import MOVED_END_REASON
from ..lograte import LogRate
from ..store.base import CallRecord
from .callopts import CallOptions, status_callback_target
from .ids import account_sid_for, auth_token_for, call_sid_for
from .webhook import API_VERSION, signed_post, twilio_direction

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext
    from ..events import StatusChange

__all__ = ["EVENT_STATUS", "StatusCallbacks", "status_params"]

log = logging.getLogger("audiosocket_gw.twilio.callbacks")

EVENT_STATUS: Final[Mapping[str, str]] = {
    "initiated": "initiated",
    "ringing": "ringing",
    "answered": "in-progress",
    "completed": "completed",
}
"""Default ``CallStatus`` of each status callback event."""


def rfc2822(at: float) -> str:
    """``at`` (epoch seconds) as Twilio writes it: ``Mon, 04 Nov 2024 12:00:00 +0000``."""
    return email.utils.format_datetime(dt.datetime.fromtimestamp(int(at), dt.UTC))


def status_params(
    info: CallInfo,
    event: str,
    *,
    sequence: int,
    account_sid: str,
    at: float,
    status: str | None = None,
    duration_s: float | None = None,
    answered_by: str | None = None,
) -> dict[str, str]:
    """The form of one status callback (pure)."""
    params = {
        "CallSid": call_sid_for(info.call_id),
        "AccountSid": account_sid,
        "From": info.from_,
        "To": info.to,
        "Caller": info.from_,
        "Called": info.to,
        "Direction": twilio_direction(info.direction),
        "CallStatus": status or EVENT_STATUS.get(event, event),
        "ApiVersion": API_VERSION,
        "Timestamp": rfc2822(at),
        "SequenceNumber": str(sequence),
        "CallbackSource": "call-progress-events",
    }
    if duration_s is not None:
        secs = str(max(0, math.ceil(duration_s)))
        params["CallDuration"] = secs
        params["Duration"] = secs
    if answered_by:
        params["AnsweredBy"] = answered_by
    return params


@dataclass
class _Job:
    url: str
    params: dict[str, str]
    token: str | None
    attempt: int = 1
    method: str = "POST"


class StatusCallbacks:
    """The status-callback component (install with ``StatusCallbacks(gateway)``)."""

    _drop_log: LogRate | None = None  # created on the first drop

    def __init__(
        self,
        ctx: GatewayContext,
        *,
        # Limits
        max_queue: int = 1000,
        workers: int = 2,
        attempts: int = 4,
        # Timeouts (seconds)
        request_timeout: float = 5.0,
        backoff_s: float = 0.5,
        drain_timeout: float = 2.0,
        amd_wait_s: float = 2.0,
    ) -> None:
        """Nothing is subscribed nor sent before :meth:`start`."""
        self.ctx = ctx
        self.env: Mapping[str, str] = ctx.settings.environ
        self._unsubscribe: list[Callable[[], None]] = []
        self.max_queue = max_queue
        self.workers = workers
        self.attempts = attempts
        self.request_timeout = request_timeout
        self.backoff_s = backoff_s
        self.drain_timeout = drain_timeout
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._sequence: dict[str, int] = {}
        self._started_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.TimerHandle] = set()
        self._http: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        registry: CollectorRegistry = ctx.metrics.registry
        self.results = Counter(
            "aigw_status_callbacks",
            "Status callbacks by result (sent, retried, failed, dropped).",
            ["result"],
            registry=registry,
        )
        self._initiated: dict[str, None] = {}
        self._moved: set[str] = set()
        """Answered calls handed to Dial() (callcontrol.py): not completed yet."""
        self._answered_by: dict[str, str] = {}
        self._held: dict[str, tuple[CallInfo, asyncio.TimerHandle]] = {}
        self.amd_wait_s = amd_wait_s

    # -- API -------------------------------------------------------------------------

    def notify(
        self,
        info: CallInfo,
        event: str,
        *,
        status: str | None = None,
        duration_s: float | None = None,
        at: float | None = None,
    ) -> bool:
        """Queue the ``event`` callback for ``info``'s call if it asked for it: its own
        ``StatusCallback`` (Twilio REST create, in the call metadata) else its agent's.

        ``status`` overrides the default ``CallStatus`` (for example ``busy`` or
        ``no-answer`` on ``completed``). Returns True when a request was queued. Never
        blocks; a full queue drops the callback (logged, counted).
        """
        agent = info.agent_cfg
        target = status_callback_target(
            info.metadata, agent.status_callback if agent is not None else None,
            agent.status_events if agent is not None else ())
        if target is None or event not in target.events:
            if event == "completed":
                self._forget(info.call_id)
            return False
        seq = self._sequence.get(info.call_id, 0)
        self._sequence[info.call_id] = seq + 1
        tenant = self.ctx.tenants.tenants.get(info.tenant)
        params = status_params(
            info,
            event,
            sequence=seq,
            account_sid=account_sid_for(info.tenant, tenant=tenant, agent=agent, env=self.env),
            at=self.ctx.clock.wall() if at is None else at,
            status=status,
            duration_s=duration_s,
            answered_by=self._answered_by.get(info.call_id),
        )
        if event == "completed":
            self._forget(info.call_id)
        job = _Job(target.url, params, auth_token_for(tenant=tenant, agent=agent, env=self.env),
                   method=target.method)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self.results.labels("dropped").inc()
            if self._drop_log is None:
                self._drop_log = LogRate()
            if (n := self._drop_log.allow()) is not None:  # not one line per callback
                log.warning("call %s: status callback %s dropped (queue full)%s",
                            info.call_id, event, LogRate.suffix(n))
            return False
        return True

    def _forget(self, call_id: str) -> None:
        self._sequence.pop(call_id, None)
        self._started_at.pop(call_id, None)
        self._answered_by.pop(call_id, None)

    # -- lifecycle hooks -------------------------------------------------------------

    def _on_call_start(self, call: Call) -> None:
        if call.info.metadata.get("parent_call_id"):
            return  # a leg resumed after Dial(): the call was answered long ago
        self._started_at[call.call_id] = self.ctx.clock.monotonic()
        if (CallOptions.from_metadata(call.info.metadata).machine_detection
                and call.call_id not in self._answered_by):
            # Twilio reports AnsweredBy with "answered" when AMD was asked: wait for
            # the result (AMD runs before the bridge; its record write may trail).
            handle = asyncio.get_running_loop().call_later(
                self.amd_wait_s, self._flush_answered, call.call_id)
            self._held[call.call_id] = (call.info, handle)
            return
        self.notify(call.info, "answered")

    def _flush_answered(self, call_id: str) -> None:
        held = self._held.pop(call_id, None)
        if held is not None:
            held[1].cancel()
            self.notify(held[0], "answered")

    def _on_call_end(self, call: Call) -> None:
        self._flush_answered(call.call_id)
        parent = call.info.metadata.get("parent_call_id")
        info = replace(call.info, call_id=parent) if parent else call.info
        if call.end_reason == MOVED_END_REASON:
            # The call goes on in Asterisk's Dial(): completed comes at its real end.
            self._moved.add(info.call_id)
            return
        if parent:
            if parent not in self._moved:
                return  # already completed (the channel's Hangup came first)
            self._moved.discard(parent)
        started = self._started_at.get(info.call_id, call.started_at)
        self.notify(info, "completed", duration_s=self.ctx.clock.monotonic() - started)

    def _on_status(self, change: StatusChange) -> None:
        self.on_status(change.input, change.before, change.after)

    def on_status(self, inp: CallInput, before: CallRecord, after: CallRecord) -> None:
        """The call tracker's transitions: ``initiated`` and ``ringing`` for outbound
        calls, and ``completed`` (with busy / no-answer / failed / canceled) for calls
        that ended without ever reaching the gateway's AudioSocket (answered calls get
        ``answered``/``completed`` from the AudioSocket lifecycle above)."""
        agent = self.ctx.tenants.agent(after.agent)
        if agent is None:
            return
        metadata = {k: v for k, v in after.metadata.items() if isinstance(v, str)}
        if status_callback_target(metadata, agent.status_callback, agent.status_events) is None:
            return
        info = dataclasses.replace(
            self.ctx.call_info(agent, after.id, direction=after.direction,
                               from_=after.from_, to=after.to), metadata=metadata)
        if after.direction == "outbound" and after.id not in self._initiated:
            # The first thing AMI tells us about an outbound call (the Originate was
            # queued, or it already rings): Twilio's "initiated" comes first.
            self._initiated[after.id] = None
            while len(self._initiated) > 10_000:
                self._initiated.pop(next(iter(self._initiated)))
            self.notify(info, "initiated")
        if after.status is CallStatus.RINGING and before.status is not CallStatus.RINGING:
            if after.direction == "outbound":
                self.notify(info, "ringing")
        elif (after.is_terminal and not before.is_terminal and after.answered_at is None
              and after.id not in self._started_at):
            self.notify(info, "completed", status=after.status.value, duration_s=0.0)
        elif after.is_terminal and not before.is_terminal and after.id in self._moved:
            # Ended in (or after) Dial() with no leg back to the gateway.
            self._moved.discard(after.id)
            started = self._started_at.get(after.id)
            self.notify(info, "completed", duration_s=after.billable_s if started is None
                        else self.ctx.clock.monotonic() - started)

    def _on_answered_by(self, rec: CallRecord) -> None:
        """AMD decided: later callbacks carry ``AnsweredBy``; Twilio's
        ``AsyncAmdStatusCallback`` gets the result now."""
        if rec.answered_by is None or rec.is_terminal:
            return
        agent = self.ctx.tenants.agent(rec.agent)
        metadata = {k: v for k, v in rec.metadata.items() if isinstance(v, str)}
        if agent is not None and status_callback_target(
                metadata, agent.status_callback, agent.status_events) is not None:
            self._answered_by[rec.id] = rec.answered_by
            while len(self._answered_by) > 10_000:
                self._answered_by.pop(next(iter(self._answered_by)))
            self._flush_answered(rec.id)
        opts = CallOptions.from_metadata(metadata)
        if not (opts.async_amd and opts.async_amd_status_callback):
            return
        tenant = self.ctx.tenants.tenants.get(rec.tenant)
        params = {
            "CallSid": call_sid_for(rec.id),
            "AccountSid": account_sid_for(rec.tenant, tenant=tenant, agent=agent, env=self.env),
            "AnsweredBy": rec.answered_by,
            "MachineDetectionDuration": "0",
        }
        job = _Job(opts.async_amd_status_callback, params,
                   auth_token_for(tenant=tenant, agent=agent, env=self.env),
                   method=opts.async_amd_status_callback_method or "POST")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self.results.labels("dropped").inc()

    # -- component -------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        """Subscribe to the call events and start the workers."""
        events = self.ctx.events
        self._unsubscribe = [events.started.connect(self._on_call_start),
                             events.ended.connect(self._on_call_end),
                             events.status_changed.connect(self._on_status),
                             events.answered_by.connect(self._on_answered_by)]
        self._http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        for i in range(self.workers):
            task = loop.create_task(self._worker(), name=f"status-callbacks-{i}")
            self._tasks.add(task)

    async def stop(self) -> None:
        """Send what is queued (up to ``drain_timeout``), then stop."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for handle in self._retries:
            handle.cancel()
        for call_id in list(self._held):
            self._flush_answered(call_id)
        self._retries.clear()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._send(job)
            except Exception:
                log.exception("status callback worker failed")
            finally:
                self._queue.task_done()

    async def _send(self, job: _Job) -> None:
        assert self._http is not None
        call_sid = job.params["CallSid"]
        status_txt = job.params.get("CallStatus") or job.params.get("AnsweredBy", "")
        try:
            status, _ = await signed_post(
                self._http, job.url, job.params, job.token, self.request_timeout,
                max_body=4096, method=job.method,
            )
            problem = None if status < 500 and status != 429 else f"HTTP {status}"
            if problem is None and status >= 400:
                self.failed += 1
                self.results.labels("failed").inc()
                log.warning("status callback %s for %s refused: HTTP %d (not retried)",
                            status_txt, call_sid, status)
                return
        except TimeoutError:
            problem = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            problem = type(exc).__name__
        if problem is None:
            self.sent += 1
            self.results.labels("sent").inc()
            return
        if job.attempt >= self.attempts:
            self.failed += 1
            self.results.labels("failed").inc()
            log.warning("status callback %s for %s failed after %d attempts: %s",
                        status_txt, call_sid, job.attempt, problem)
            return
        delay = self.backoff_s * (2 ** (job.attempt - 1))
        log.info("status callback %s for %s: %s; retry in %.2f s",
                 status_txt, call_sid, problem, delay)
        self.results.labels("retried").inc()
        job.attempt += 1
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            if handle is not None:
                self._retries.discard(handle)
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self.dropped += 1
                self.results.labels("dropped").inc()

        handle = loop.call_later(delay, requeue)
        self._retries.add(handle)
