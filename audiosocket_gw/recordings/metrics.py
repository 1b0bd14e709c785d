"""Recording metrics (``aigw_`` scheme; labels: tenant, source, stage, reason: bounded).

Capture ratio = ``aigw_recordings_captured_total / aigw_recording_calls_answered_total``
(per tenant and source). Registered on the gateway's registry, or on a private one in
the stand-alone upload worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class RecordingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.answered = Counter(
            "aigw_recording_calls_answered",
            "Answered calls whose agent records, by tenant and source (capture ratio base).",
            ["tenant", "source"], registry=r)
        self.captured = Counter(
            "aigw_recordings_captured",
            "Recordings captured complete and queued, by tenant and source.",
            ["tenant", "source"], registry=r)
        self.verified = Counter(
            "aigw_recordings_verified",
            "Recordings uploaded with a verified checksum, by tenant.", ["tenant"], registry=r)
        self.upload_seconds = Histogram(
            "aigw_recording_upload_seconds",
            "From capture complete to verified upload (includes retries).",
            buckets=UPLOAD_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "aigw_recording_queue_depth",
            "Recordings / transcription jobs not yet done, by queue.", ["queue"], registry=r)
        self.failures = Counter(
            "aigw_recording_failures",
            "Recording failures by stage (capture, upload, transcribe, callback) and reason.",
            ["stage", "reason"], registry=r)
        self.transcription_seconds = Histogram(
            "aigw_transcription_seconds",
            "From transcription job creation to stored transcript.",
            buckets=UPLOAD_BUCKETS, registry=r)
