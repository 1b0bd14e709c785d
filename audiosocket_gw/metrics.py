"""Every Prometheus metric of the gateway, in one place, with one naming scheme.

Names start with ``aigw_``, use base units (``_seconds``, ``_bytes``) and counters end in
``_total``. Labels are bounded sets (outcome, reason, backend, tenant): never a phone
number or a call id.

Hot-path counts (frames in and out) are plain integers on ``Stats`` read at scrape time
by a custom collector, so the 20 ms path pays an integer add, not a lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
WRITES_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02)
SECONDS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class Stats:
    """Plain counters bumped on the audio path."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    frames_dropped_slow_peer: int = 0
    underruns: int = 0
    missed_ticks: int = 0
    pacer_wait_seconds: float = 0.0
    pacer_cpu_stalls: int = 0
    pacer_cpu_stall_seconds: float = 0.0


class _StatsCollector(Collector):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield _counter("aigw_frames_received", "Audio frames received from Asterisk.", s.frames_in)
        yield _counter(
            "aigw_audio_received_bytes", "Audio bytes received from Asterisk.", s.bytes_in
        )
        yield _counter(
            "aigw_frames_sent", "Audio frames written to Asterisk by the pacer.", s.frames_out
        )
        fam = CounterMetricFamily(
            "aigw_frames_dropped",
            "Frames the pacer did not write, by reason.",
            labels=["reason"],
        )
        fam.add_metric(["slow_peer"], s.frames_dropped_slow_peer)
        yield fam
        yield _counter(
            "aigw_playout_underruns",
            "Ticks where a call's bot audio stream had less than a frame ready.",
            s.underruns,
        )
        yield _counter(
            "aigw_pacer_missed_ticks",
            "Ticks skipped because the event loop was blocked too long.",
            s.missed_ticks,
        )
        yield _counter(
            "aigw_pacer_wait_seconds",
            "CPU seconds the pacer spent waiting on the clock itself (just before each "
            "tick's deadline, and between write groups where no bookkeeping was left).",
            s.pacer_wait_seconds,
        )
        yield _counter(
            "aigw_pacer_cpu_stalls",
            "Times the CPU was taken from the gateway for more than 0.5 ms while the pacer "
            "waited on the clock (the kernel ran another task on its core, an interrupt, or "
            "the hypervisor did not run it): a sample of what delays whole ticks; not "
            "caused by the gateway.",
            s.pacer_cpu_stalls,
        )
        yield _counter(
            "aigw_pacer_cpu_stall_seconds",
            "Seconds lost in those stalls (aigw_pacer_cpu_stalls).",
            s.pacer_cpu_stall_seconds,
        )


class BackendCounters(Collector):
    """Exposes each backend's plain ``counters`` (reconnects, dropped appends, malformed
    events...) as ``aigw_backend_events_total{backend,event}`` at scrape time."""

    def __init__(self, backends: Mapping[str, object]) -> None:
        self.backends = backends

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "aigw_backend_events",
            "Backend connection events (connect attempts, reconnects, dropped or "
            "malformed messages...), by backend and event.",
            labels=["backend", "event"],
        )
        for name, backend in list(self.backends.items()):
            counters = getattr(backend, "counters", None)
            if isinstance(counters, Mapping):
                for event, value in sorted(counters.items()):
                    fam.add_metric([name, str(event)], float(value))
        yield fam


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class Metrics:
    """The registry of one gateway process (tests build as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stats = Stats()
        r.register(_StatsCollector(self.stats))
        self.active_calls = Gauge(
            "aigw_active_calls", "Calls with a live AudioSocket.", ["backend"], registry=r
        )
        self.realtime_priority = Gauge(
            "aigw_realtime_priority",
            "SCHED_FIFO priority the event loop runs at (AIGW_REALTIME_PRIORITY; 0: normal "
            "scheduling, also when the priority was asked for but not permitted).",
            registry=r,
        )
        self.calls = Counter(
            "aigw_calls", "Finished calls by outcome.", ["backend", "tenant", "outcome"],
            registry=r
        )
        self.connections_rejected = Counter(
            "aigw_connections_rejected",
            "AudioSocket connections refused before becoming a call.",
            ["reason"],
            registry=r,
        )
        self.protocol_errors = Counter(
            "aigw_protocol_errors",
            "AudioSocket protocol violations by the peer, by reason.",
            ["reason"],
            registry=r,
        )
        self.backend_errors = Counter(
            "aigw_backend_errors", "Backend failures by backend and reason.",
            ["backend", "reason"], registry=r,
        )
        self.pacer_lateness = Histogram(
            "aigw_pacer_lateness_seconds",
            "How late each pacer tick ran after its absolute deadline.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pacer_writes = Histogram(
            "aigw_pacer_writes_seconds",
            "How long each pacer tick took from its first call's frame to its last "
            "one's (written in groups at fixed offsets from the tick): the last call's "
            "frame leaves this long after the first one's.",
            buckets=WRITES_BUCKETS,
            registry=r,
        )
        self.time_to_first_audio = Histogram(
            "aigw_time_to_first_audio_seconds",
            "From the AudioSocket UUID to the first bot audio frame written (time to greeting).",
            ["backend"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "aigw_barge_ins", "Bot audio cut because the caller spoke over it, by source.",
            ["backend", "source"], registry=r,
        )
        self.barge_in = Histogram(
            "aigw_barge_in_seconds",
            "From the caller's speech onset to the first silent frame written (barge-in cut).",
            ["backend"],
            buckets=(0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1.0),
            registry=r,
        )
        self.response_latency = Histogram(
            "aigw_response_latency_seconds",
            "From the end of the caller's turn (local VAD) to the bot's first frame written.",
            ["backend"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.clear_to_silence = Histogram(
            "aigw_clear_to_silence_seconds",
            "From a backend's clear (Twilio `clear`, Realtime speech_started) to the first "
            "tick without the dropped audio.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.call_duration = Histogram(
            "aigw_call_duration_seconds",
            "AudioSocket duration of finished calls.",
            ["backend"],
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.tool_calls = Counter(
            "aigw_tool_calls", "Function calls of AI agents by tool and outcome "
            "(ok, http_error, timeout, error, invalid_arguments, unknown_tool, busy).",
            ["tool", "outcome"], registry=r,
        )
        self.tool_latency = Histogram(
            "aigw_tool_latency_seconds", "From a function call to its result, by tool.",
            ["tool"], buckets=SECONDS_BUCKETS, registry=r,
        )
        self.transfers = Counter(
            "aigw_transfers", "Transfers by AI agents, by kind (blind) and outcome "
            "(started, then the Dial's status as AMI reports it).",
            ["kind", "outcome"], registry=r,
        )

