"""Recordings: capture (gateway stereo tap or Asterisk MixMonitor), durable S3 upload with
verification, URLs, status callbacks and transcription. See ``component.py``."""

from .component import RecordingsComponent
from .settings import RecordingSettings

__all__ = ["RecordingSettings", "RecordingsComponent"]
