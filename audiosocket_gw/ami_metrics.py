"""Metrics of call tracking, outbound calls, the limiter and the watchdogs.

Registered on the gateway's one registry (``gateway.metrics.registry``) with the
``aigw_`` scheme of ``metrics.py``. Labels are bounded: tenant ids (from the TOML
file), Twilio statuses, ``AnsweredBy`` values and watchdog reasons; never a phone
number or a call id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .metrics import SECONDS_BUCKETS


class CallMetrics:
    """One instance per gateway (per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls_by_status = Counter(
            "aigw_call_status_changes",
            "Call status changes (Twilio statuses), by tenant, direction and status.",
            ["tenant", "direction", "status"], registry=r,
        )
        self.call_setup = Histogram(
            "aigw_call_setup_seconds",
            "From the call record (Originate or routing) to answer.",
            ["direction"], buckets=SECONDS_BUCKETS + (20.0, 30.0, 60.0), registry=r,
        )
        self.tenant_active_calls = Gauge(
            "aigw_tenant_active_calls", "Limiter slots held, by tenant.", ["tenant"],
            registry=r,
        )
        self.limiter_rejections = Counter(
            "aigw_limiter_rejections", "Calls refused by the per-tenant limiter.",
            ["tenant", "direction"], registry=r,
        )
        self.ami_reconnects = Counter(
            "aigw_ami_reconnects", "AMI connections lost (each followed by a reconnect).",
            registry=r,
        )
        self.ami_events_dropped = Counter(
            "aigw_ami_events_dropped", "AMI events dropped on a full event queue.",
            registry=r,
        )
        self.ami_connected = Gauge(
            "aigw_ami_connected", "1 while logged in to AMI.", registry=r,
        )
        self.resync_vanished = Counter(
            "aigw_calls_vanished", "Tracked calls closed because their channel was gone "
            "(AMI resync or gateway restart).", ["when"], registry=r,
        )
        self.watchdog_hangups = Counter(
            "aigw_watchdog_hangups", "Calls hung up by a watchdog, by reason.", ["reason"],
            registry=r,
        )
        self.answered_by = Counter(
            "aigw_answered_by", "Answering-machine detection results (Twilio AnsweredBy).",
            ["answered_by", "source"], registry=r,
        )
