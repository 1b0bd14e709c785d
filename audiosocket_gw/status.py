"""The one status writer: every status change of every call goes through here.

``StatusWriter.apply(call_id, input, detail)`` runs the call state machine in the
store (``store.apply_input_change``: transition, timestamps, event-log append and slot
release in one transaction), under one lock so each transition is seen once, then
counts it in the metrics and emits ``events.status_changed`` to the subscribers
(status callbacks, the tracker's channel map...). Routing, the AMI tracker, the
outbound provider and the API all call it; nothing else calls ``apply_input``/``_change``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .ami_metrics import CallMetrics
from .callstate import CallInput, CallStatus
from .events import CallEvents, StatusChange
from .store.base import CallRecord, CallStore

__all__ = ["StatusWriter"]

log = logging.getLogger("audiosocket_gw.status")


class StatusWriter:
    def __init__(self, store: CallStore, metrics: CallMetrics, events: CallEvents,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self._lock = asyncio.Lock()

    async def apply(self, call_id: str, inp: CallInput,
                    detail: dict[str, Any] | None = None, *,
                    at: float | None = None) -> CallRecord | None:
        """Apply ``inp`` to ``call_id`` at ``at`` (default now); the record after it,
        or None when the call does not exist."""
        async with self._lock:
            # Before and after from the store's own transaction: with several nodes
            # (or workers) applying the same input, exactly one of them sees the change.
            change = await self.store.apply_input_change(
                call_id, inp, self.clock() if at is None else at, detail)
            if change is None:
                return None
            before, after = change
            if after.status is not before.status:
                self.metrics.calls_by_status.labels(after.tenant, after.direction,
                                                    after.status.value).inc()
                if after.status is CallStatus.IN_PROGRESS and after.answered_at is not None:
                    self.metrics.call_setup.labels(after.direction).observe(
                        max(0.0, after.answered_at - after.created_at))
                self.metrics.tenant_active_calls.labels(after.tenant).set(
                    await self.store.active_slots(after.tenant))
                log.info("call %s: %s -> %s (%s)", call_id, before.status.value,
                         after.status.value, inp.value)
            # Inside the lock: subscribers see transitions in the order they happened.
            self.events.status_changed.emit(StatusChange(inp, before, after))
        return after
