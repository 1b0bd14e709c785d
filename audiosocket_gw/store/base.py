"""The call store interface: calls, their event log, and the per-tenant call limiter.

One async interface (``CallStore``) with a SQLite implementation
(``audiosocket_gw.store.sqlite``); a PostgreSQL one can follow without changing
callers, so the interface promises nothing SQLite-specific:

- Timestamps are floats (epoch seconds) passed in by the caller: the store never
  reads a clock, which keeps tests deterministic and nodes consistent.
- Status changes go only through ``apply_input``, which runs the state machine of
  ``audiosocket_gw.callstate`` in one transaction together with the event-log append,
  the timestamps and the slot release. ``update_call`` changes the other fields.
- The event log is append-only; nothing is ever deleted.
- ``try_acquire_slot`` is atomic across every process sharing the store: it never
  lets a tenant exceed its limit.

Errors: every failure the interface defines is a ``StoreError``; ``DuplicateCall``
when ``create_call`` reuses an id, ``UnknownCall`` when ``append_event`` names a
call that does not exist. Misuse (an unknown field in ``update_call``, a value of the
wrong type) raises ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

from ..callstate import CallInput, CallStatus, hangup_cause_text, next_status

__all__ = [
    "CALL_COLUMNS",
    "CALL_SELECT",
    "UPDATABLE_FIELDS",
    "CallEvent",
    "CallRecord",
    "CallStore",
    "Direction",
    "DuplicateCall",
    "NodeLeases",
    "RolloutRule",
    "RolloutStat",
    "StoreError",
    "UnknownCall",
    "call_from_row",
    "dump_json",
]

Direction = Literal["inbound", "outbound"]


class StoreError(Exception):
    """Root of the errors a call store raises on purpose."""


class DuplicateCall(StoreError):
    """``create_call`` with an id that already exists."""


class UnknownCall(StoreError, LookupError):
    """An operation that needs an existing call named one that does not exist."""


@dataclass(frozen=True)
class CallRecord:
    """One call as stored.

    ``from_``/``to`` are the caller and called numbers (E.164 when known).
    ``duration_s`` is the whole attempt (``ended_at - created_at``); ``billable_s``
    the answered time rounded up to whole seconds (0 when never answered), which is
    what Twilio reports as ``CallDuration``. Both are set when the call ends.
    ``answered_by`` uses Twilio's ``AnsweredBy`` values (human, machine_start, ...).
    MOS fields (1.0-4.5, from RTCP via the E-model): ``in`` is the caller's audio as
    Asterisk received it (RTCPSent Report0), ``out`` ours as the far end received
    it (RTCPReceived Report0); min and mean over the call.
    """

    id: str
    tenant: str
    agent: str
    direction: Direction
    from_: str
    to: str
    created_at: float
    status: CallStatus = CallStatus.QUEUED
    answered_by: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    hangup_cause: int | None = None
    hangup_reason: str | None = None
    duration_s: float | None = None
    billable_s: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    transcript_ref: str | None = None
    recording_ref: str | None = None
    mos_in_min: float | None = None
    mos_in_mean: float | None = None
    mos_out_min: float | None = None
    mos_out_mean: float | None = None
    last_alive_at: float | None = None
    """Last heartbeat of a live call (``touch_alive``): a crashed process's open calls
    are ended at this time by the next one, not at its start."""
    node_id: str | None = None
    """The gateway node (``AIGW_NODE_ID``) that handles the call: reconciliation and
    the takeover of a dead node's calls touch only that node's calls."""

    @property
    def last_known_alive(self) -> float:
        """When the call was last known alive (heartbeat, answer or creation): a call
        that died with its process ends then, so the downtime is never billed."""
        return max(t for t in (self.created_at, self.answered_at, self.last_alive_at)
                   if t is not None)

    @property
    def is_terminal(self) -> bool:
        """True once the call has ended (any final status)."""
        return self.status.is_terminal


@dataclass(frozen=True)
class CallEvent:
    """One entry of a call's append-only event log; ``seq`` orders a call's events."""

    seq: int
    call_id: str
    kind: str
    at: float
    data: dict[str, Any] = field(default_factory=dict, hash=False)


UPDATABLE_FIELDS: dict[str, tuple[type, ...]] = {
    "agent": (str,),
    "answered_by": (str, type(None)),
    "hangup_cause": (int, type(None)),
    "hangup_reason": (str, type(None)),
    "metadata": (dict,),
    "transcript_ref": (str, type(None)),
    "recording_ref": (str, type(None)),
    "mos_in_min": (float, int, type(None)),
    "mos_in_mean": (float, int, type(None)),
    "mos_out_min": (float, int, type(None)),
    "mos_out_mean": (float, int, type(None)),
    "node_id": (str, type(None)),
}
"""Fields ``update_call`` accepts, with their allowed types. Status, timestamps and
durations change only through ``apply_input``; id, tenant, direction and numbers
never change."""


# One row shape for every store: CallRecord field -> column, in CallRecord order.
CALL_COLUMNS: dict[str, str] = {
    f.name: {"from_": "from_number", "to": "to_number"}.get(f.name, f.name)
    for f in dataclass_fields(CallRecord)
}
CALL_SELECT = "SELECT " + ", ".join(CALL_COLUMNS.values()) + " FROM calls"


def dump_json(data: dict[str, Any]) -> str:
    """A JSON column's text (compact, sorted, no NaN): metadata, event data."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


def call_from_row(row: Sequence[Any]) -> CallRecord:
    """A ``CallRecord`` from a row selected by ``CALL_SELECT``."""
    values = dict(zip(CALL_COLUMNS, tuple(row), strict=True))
    values["status"] = CallStatus(values["status"])
    values["metadata"] = json.loads(values["metadata"])
    return CallRecord(**values)


def check_update_fields(fields: dict[str, object]) -> None:
    """Raise ``TypeError`` unless every item is an updatable field of the right type."""
    for name, value in fields.items():
        types = UPDATABLE_FIELDS.get(name)
        if types is None:
            raise TypeError(f"update_call: {name!r} is not an updatable field")
        if isinstance(value, bool) or not isinstance(value, types):
            raise TypeError(
                f"update_call: {name} must be {' or '.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__}"
            )


def transition(call: CallRecord, inp: CallInput, at: float,
               detail: dict[str, Any] | None = None) -> tuple[CallRecord, dict[str, Any]]:
    """The call after ``inp`` at ``at`` and the data of its ``input`` event.

    Pure: every store runs it inside its own transaction (see ``apply_input``). The
    event data's ``changed`` says whether the status changed (a final status then
    releases the call's slot).
    """
    detail = dict(detail or {})
    raw_cause = detail.get("cause")
    cause = raw_cause if isinstance(raw_cause, int) and not isinstance(raw_cause, bool) else None
    reason = detail.get("reason")
    new = next_status(call.status, inp, cause=cause)
    changed = new is not call.status
    event = {"input": inp.value, "from": call.status.value, "to": new.value,
             "changed": changed, "detail": detail}
    updated = call
    if changed:
        updated = replace(updated, status=new)
        if new is CallStatus.IN_PROGRESS and updated.answered_at is None:
            updated = replace(updated, answered_at=at)
        if new.is_terminal:
            answered = updated.answered_at
            updated = replace(
                updated,
                ended_at=at,
                duration_s=max(0.0, at - updated.created_at),
                billable_s=(
                    0.0 if answered is None else float(math.ceil(max(0.0, at - answered)))
                ),
            )
    if updated.is_terminal:
        # Enrichment, also for an absorbed input: EOF may end the call before
        # the AMI Hangup brings its cause.
        if updated.hangup_cause is None and cause is not None:
            updated = replace(updated, hangup_cause=cause)
        # An explicit reason (ours: caller-hangup, silence-timeout...) wins over
        # the text of a Q.850 cause, whichever input arrived first: the AMI
        # Hangup and the AudioSocket end of one call race, the record must not.
        derived = (updated.hangup_reason is not None
                   and updated.hangup_cause is not None
                   and updated.hangup_reason == hangup_cause_text(updated.hangup_cause))
        if updated.hangup_reason is None or derived:
            if isinstance(reason, str) and reason:
                updated = replace(updated, hangup_reason=reason)
            elif updated.hangup_reason is None and updated.hangup_cause is not None:
                updated = replace(updated, hangup_reason=hangup_cause_text(updated.hangup_cause))
    return updated, event


RolloutScope = Literal["global", "tenant", "did"]


@dataclass(frozen=True)
class RolloutRule:
    """The Asterisk share of one scope: ``global`` (target ``""``), a tenant or a DID.

    ``tenant`` is the DID's tenant (empty for the other scopes); ``by``/``note`` say
    who changed it and why (for the log and ``rollout status``).
    """

    scope: RolloutScope
    target: str
    percent: int
    updated_at: float
    tenant: str = ""
    note: str = ""


@dataclass(frozen=True)
class RolloutStat:
    """Rollout decisions and failures of one (tenant, DID, path) since some time."""

    tenant: str
    did: str
    path: str
    calls: int
    failures: int


@runtime_checkable
class CallStore(Protocol):
    """Calls, events and the concurrent-call limiter. All methods are coroutines.

    Use as ``async with store:`` or call ``open()``/``close()``.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date. Idempotent."""

    async def close(self) -> None:
        """Release the connection and the worker. Idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # Calls

    async def create_call(self, call: CallRecord) -> None:
        """Insert a new call; ``DuplicateCall`` if the id exists."""

    async def get_call(self, call_id: str) -> CallRecord | None:
        """The call, or None."""

    async def list_calls(
        self,
        status: CallStatus | None = None,
        tenant: str | None = None,
        limit: int = 100,
        *,
        from_: str | None = None,
        to: str | None = None,
        created_from: float | None = None,
        created_until: float | None = None,
        offset: int = 0,
    ) -> list[CallRecord]:
        """Calls newest first (``created_at`` descending), optionally filtered
        (``created_*`` bounds inclusive); ``offset`` skips that many first."""

    async def delete_call(self, call_id: str) -> bool:
        """Remove an (ended) call and its events; True if it existed."""

    async def update_call(self, call_id: str, **fields: object) -> CallRecord | None:
        """Change ``UPDATABLE_FIELDS``; returns the updated call or None if unknown."""

    async def apply_input(
        self,
        call_id: str,
        inp: CallInput,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> CallRecord | None:
        """Run the state machine for one input, atomically.

        Appends an ``input`` event (always, even when absorbed, so the log shows
        duplicates); on a change sets the status, ``answered_at`` on in-progress and,
        on a final status, ``ended_at``, ``duration_s``, ``billable_s``, the hangup
        cause/reason (``detail["cause"]``, ``detail["reason"]``) and releases the
        call's limiter slot. A terminal call keeps its status and timestamps; only a
        still-missing hangup cause is filled in. ``detail["cause"]`` also refines a
        Hangup before answer (busy / no-answer / canceled / failed).
        Returns the call after the input, or None if the call does not exist.
        """

    async def apply_input_change(
        self,
        call_id: str,
        inp: CallInput,
        at: float,
        detail: dict[str, Any] | None = None,
    ) -> tuple[CallRecord, CallRecord] | None:
        """``apply_input``, returning ``(before, after)`` as read inside its transaction:
        when several processes apply the same input, exactly one sees the change (the
        status writer emits transitions, hence callbacks, from that one)."""

    async def append_event(
        self, call_id: str, kind: str, at: float, data: dict[str, Any] | None = None
    ) -> int:
        """Append to the call's event log; returns the event's ``seq``.

        ``data`` must be JSON-serialisable. ``UnknownCall`` if the call does not exist.
        """

    async def events(self, call_id: str) -> list[CallEvent]:
        """The call's events in the order they were appended."""

    async def active_calls(self, node_id: str | None = None) -> list[CallRecord]:
        """Calls not in a final status, oldest first; only ``node_id``'s if given."""

    async def touch_alive(self, call_ids: Sequence[str], at: float) -> int:
        """Set ``last_alive_at`` of the still-active calls among ``call_ids`` (one
        batch); returns how many were updated."""

    # Concurrent-call limiter

    async def try_acquire_slot(self, tenant: str, call_id: str, limit: int) -> bool:
        """Take one of ``tenant``'s ``limit`` slots for ``call_id``, atomically.

        True if acquired (or already held by ``call_id``), False if the tenant
        already holds ``limit`` slots.
        """

    async def release_slot(self, call_id: str) -> bool:
        """Give back ``call_id``'s slot; True if one was held. Idempotent."""

    async def active_slots(self, tenant: str) -> int:
        """How many slots ``tenant`` holds."""

    async def reconcile_slots(self, *, release_orphans: bool = True) -> int:
        """Release slots of calls in a final status (and, with ``release_orphans``,
        slots whose call was never created). For startup and AMI resync, when no
        acquire-then-create is in flight. Returns how many were released."""

    # Idempotency keys of POST /v1/calls (per tenant)

    async def claim_idempotency_key(self, tenant: str, key: str, at: float, ttl_s: float,
                                    pending_ttl_s: float = 60.0) -> tuple[bool, str | None]:
        """Atomically claim ``key`` for a new call, or find who has it.

        ``(True, None)``: claimed, place the call then ``complete_idempotency_key``
        (or ``release_idempotency_key`` if it failed). ``(False, call_id)``: a call was
        already placed with this key within ``ttl_s``. ``(False, None)``: a request
        with this key is still being handled (claims without a call expire after
        ``pending_ttl_s``, so a crashed request does not block the key for a day).
        """

    async def complete_idempotency_key(self, tenant: str, key: str, call_id: str) -> None:
        """Record the call placed under a claimed key."""

    async def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Drop a claim whose call was not placed (a retry may place it)."""

    # AudioSocket legs that come back to a call (the resume leg after a Dial)

    async def register_leg(self, leg_id: str, call_id: str, metadata: dict[str, str],
                           now: float, expires_at: float) -> None:
        """Expect ``leg_id`` as a new AudioSocket leg of ``call_id`` until ``expires_at``,
        visible to every node sharing the store (whichever the leg reaches serves it);
        legs expired at ``now`` are pruned."""

    async def get_leg(self, leg_id: str, now: float) -> tuple[str, dict[str, str]] | None:
        """``(call id, metadata)`` of the unexpired leg ``leg_id``, or None."""

    async def amend_leg(self, leg_id: str, metadata: dict[str, str]) -> bool:
        """Merge ``metadata`` into the leg's (a Dial's outcome); False if unknown."""

    async def discard_leg(self, leg_id: str) -> None:
        """Forget ``leg_id`` (the caller will not come back). Idempotent."""

    # Migration rollout (the share of calls that takes the Asterisk path)

    async def rollout_rules(self) -> list[RolloutRule]:
        """Every rule (global, tenant, DID)."""

    async def change_rollout(self, upserts: list[RolloutRule],
                             deletes: list[tuple[str, str]]) -> None:
        """Upsert rules and delete ``(scope, target)`` rules in one transaction."""

    async def log_rollout(self, at: float, tenant: str, did: str, path: str, kind: str,
                          reason: str = "") -> None:
        """Append one decision (``kind="call"``) or failure (``kind="failure"``);
        entries older than two days are pruned."""

    async def rollout_stats(self, since: float) -> list[RolloutStat]:
        """Decisions and failures per (tenant, DID, path) since ``since``."""


@runtime_checkable
class NodeLeases(Protocol):
    """A store shared by several nodes (PostgreSQL): their leases, by its clock."""

    node_id: str

    async def node_heartbeat(self, node_id: str, lease_s: float) -> None:
        """Register or renew ``node_id``'s lease."""

    async def node_stopped(self, node_id: str) -> None:
        """End ``node_id``'s lease on a clean stop."""

    async def claim_expired_nodes(self, survivor: str) -> list[str]:
        """Expired nodes, each returned to exactly one caller cluster-wide."""

    async def live_nodes(self) -> list[str]:
        """Nodes holding an unexpired lease."""

    async def release_node_slots(self, node_id: str) -> int:
        """Release the slots ``node_id`` holds for no live call; returns how many."""
