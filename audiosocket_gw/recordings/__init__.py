"""Recordings: gateway-side stereo capture, MixMonitor completion, durable S3 upload,
verification, URLs, status callbacks and transcription. See ``component.py``.

This package's ``__init__`` imports nothing so that ``recordings.settings`` is a leaf
module the gateway's ``settings`` can import without pulling the component in."""
