"""G.711 mu-law and A-law codecs for 16-bit signed little-endian mono PCM (slin).

Why: AI backends and Twilio-style peers often speak G.711 (``g711_ulaw`` / ``g711_alaw``)
while Asterisk's AudioSocket carries slin. Asking the backend for G.711 avoids resampling
entirely, so the gateway only has to transcode. ``audioop`` is deprecated (removed in
Python 3.13), so this module is a numpy replacement.

How: every conversion is a single numpy table lookup. Both tables are built once at
import time:

* decode: a 256-entry ``int16`` table, code byte -> linear sample;
* encode: a 65536-entry ``uint8`` table indexed by the ``uint16`` view of each sample.

The encoders reproduce Asterisk's ``linear2ulaw()`` / ``linear2alaw()`` (main/ulaw.c,
main/alaw.c, default non-``G711_NEW_ALGORITHM`` build): mu-law uses BIAS 0x84, CLIP 32635,
an exponent lookup on ``(magnitude + BIAS) >> 7`` and ``byte = ~(sign | exp << 4 |
mantissa)`` without the ZEROTRAP; A-law uses the segment-end table and XOR mask 0x55.
The one intentional difference is ``-32768``: the C functions overflow on it (mu-law gives
0x7F, i.e. silence; A-law gives 0xD5, i.e. +8), whereas Asterisk's run-time lookup tables
(``AST_LIN2MU`` / ``AST_LIN2A``) give full-scale negative (0x00 / 0x2A). We follow the
run-time tables for that single input by clipping the magnitude.

Note: Asterisk's run-time tables are indexed by the top 14 (mu-law) or 13 (A-law) bits, so
for some negative inputs Asterisk itself and ``audioop`` emit a neighbouring code (one
quantisation step away) compared with the exact function implemented here. Decoding is
exact in every implementation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

ULAW_SILENCE = 0xFF
"""mu-law code byte for digital silence (decodes to 0)."""

ALAW_SILENCE = 0xD5
"""A-law code byte for (near) silence (decodes to +8, A-law has no zero level)."""

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_MASK = 0x55
_ALAW_SEG_END = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF], np.int32)

# Asterisk's exp_lut[256]: floor(log2(i)) for i >= 2, and 0 for i in (0, 1).
_ULAW_EXP_LUT = np.array([max(i.bit_length() - 1, 0) for i in range(256)], dtype=np.int32)

_Int16Table = npt.NDArray[np.int16]
_Uint8Table = npt.NDArray[np.uint8]


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered so that position == the value's uint16 bit pattern."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_decode() -> _Int16Table:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    sample = np.where(code & 0x80, -magnitude, magnitude)
    return sample.astype("<i2")


def _build_ulaw_encode() -> _Uint8Table:
    x = _all_samples()
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    exponent = _ULAW_EXP_LUT[(magnitude >> 7) & 0xFF]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code: npt.NDArray[np.int64] = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return code.astype(np.uint8)


def _build_alaw_decode() -> _Int16Table:
    code = np.arange(256, dtype=np.int32) ^ _ALAW_MASK
    segment = (code & 0x70) >> 4
    level = ((code & 0x0F) << 4) + 8
    level = np.where(segment > 0, (level + 0x100) << np.maximum(segment - 1, 0), level)
    sample = np.where(code & 0x80, level, -level)
    return sample.astype("<i2")


def _build_alaw_encode() -> _Uint8Table:
    x = _all_samples()
    mask = np.where(x >= 0, _ALAW_MASK | 0x80, _ALAW_MASK)
    magnitude = np.minimum(np.abs(x), 32767)
    segment = np.searchsorted(_ALAW_SEG_END, magnitude, side="left").astype(np.int32)
    shift = np.where(segment > 0, segment + 3, 4)
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


_ULAW_DECODE: _Int16Table = _build_ulaw_decode()
_ULAW_ENCODE: _Uint8Table = _build_ulaw_encode()
_ALAW_DECODE: _Int16Table = _build_alaw_decode()
_ALAW_ENCODE: _Uint8Table = _build_alaw_encode()


# ``table.take(index)`` rather than ``table[index]``: same result, a third less time per
# 20 ms frame (numpy's fancy indexing has the larger fixed cost).


def _encode(pcm: bytes, table: _Uint8Table) -> bytes:
    index = np.frombuffer(pcm, dtype="<u2", count=len(pcm) // 2)
    encoded: _Uint8Table = table.take(index)
    return encoded.tobytes()


def _decode(data: bytes, table: _Int16Table) -> bytes:
    index = np.frombuffer(data, dtype=np.uint8)
    return table.take(index).tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """Encode slin16 LE mono to mu-law, one byte per sample (odd trailing byte ignored)."""
    return _encode(pcm, _ULAW_ENCODE)


def ulaw_decode(data: bytes) -> bytes:
    """Decode mu-law bytes to slin16 LE mono (two bytes per input byte)."""
    return _decode(data, _ULAW_DECODE)


def alaw_encode(pcm: bytes) -> bytes:
    """Encode slin16 LE mono to A-law, one byte per sample (odd trailing byte ignored)."""
    return _encode(pcm, _ALAW_ENCODE)


def alaw_decode(data: bytes) -> bytes:
    """Decode A-law bytes to slin16 LE mono (two bytes per input byte)."""
    return _decode(data, _ALAW_DECODE)
