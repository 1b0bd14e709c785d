"""Audio signal processing cores: G.711 codecs, streaming resampling and voice activity.

Why a separate package: these are pure, clock-free, I/O-free functions and classes over
slin16 little-endian mono bytes, so the call/session code can use them from the event loop
without blocking worries and they can be tested exhaustively in isolation. numpy only.
"""

from audiosocket_gw.dsp.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from audiosocket_gw.dsp.resample import StreamResampler
from audiosocket_gw.dsp.vad import (
    SILENCE_LEVEL,
    VadConfig,
    VadEvent,
    VoiceActivityDetector,
    frame_level,
)

__all__ = [
    "ALAW_SILENCE",
    "SILENCE_LEVEL",
    "ULAW_SILENCE",
    "StreamResampler",
    "VadConfig",
    "VadEvent",
    "VoiceActivityDetector",
    "alaw_decode",
    "alaw_encode",
    "frame_level",
    "ulaw_decode",
    "ulaw_encode",
]
