"""Tests for the G.711 codecs against independent scalar references."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from audiosocket_gw.dsp.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)
ALL_PCM = ALL_SAMPLES.astype("<i2").tobytes()
ALL_CODES = bytes(range(256))


def _pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def _samples(pcm: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(pcm, dtype="<i2")]


# --- scalar references -----------------------------------------------------------------


def g711_ulaw_formula(code: int) -> int:
    """ITU-T G.711 mu-law expansion, scaled from 14 to 16 bits."""
    c = ~code & 0xFF
    sign, exponent, mantissa = c & 0x80, (c >> 4) & 7, c & 0x0F
    magnitude = (((2 * mantissa + 33) << exponent) - 33) * 4
    return -magnitude if sign else magnitude


def g711_alaw_formula(code: int) -> int:
    """ITU-T G.711 A-law expansion (mid-point of the interval), scaled from 13 to 16 bits."""
    c = code ^ 0x55
    segment, mantissa = (c >> 4) & 7, c & 0x0F
    if segment == 0:
        magnitude = 2 * mantissa + 1
    else:
        magnitude = (2 * mantissa + 33) << (segment - 1)
    magnitude *= 8
    return magnitude if c & 0x80 else -magnitude


ASTERISK_EXP_LUT = [0, 0, 1, 1, 2, 2, 2, 2] + [3] * 8 + [4] * 16 + [5] * 32 + [6] * 64 + [7] * 128


def asterisk_linear2ulaw(sample: int) -> int:
    """Line-by-line port of linear2ulaw() from Asterisk main/ulaw.c (no ZEROTRAP)."""
    sign = (sample >> 8) & 0x80
    if sign:
        sample = -sample
    sample = min(sample, 32635)
    sample += 0x84
    exponent = ASTERISK_EXP_LUT[(sample >> 7) & 0xFF]
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def asterisk_linear2alaw(linear: int) -> int:
    """Port of linear2alaw() from Asterisk main/alaw.c (valid for -32767..32767)."""
    seg_end = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF]
    if linear >= 0:
        mask, pcm_val = 0x55 | 0x80, linear
    else:
        mask, pcm_val = 0x55, -linear
    seg = 0
    while seg < 8 and pcm_val > seg_end[seg]:
        seg += 1
    shift = seg + 3 if seg else 4
    return ((seg << 4) | ((pcm_val >> shift) & 0x0F)) ^ mask


def audioop_lin2ulaw(sample: int) -> int:
    """Port of audioop's st_14linear2ulaw(sample >> 2) (the 14-bit Sun/CCITT encoder)."""
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + 33
    seg_uend = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]
    seg = next((i for i, end in enumerate(seg_uend) if value <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def ulaw_ordinal(code: int) -> int:
    """Signed position of a mu-law code on the quantisation ladder (+0 and -0 both 0)."""
    c = ~code & 0xFF
    return -(c & 0x7F) if c & 0x80 else c & 0x7F


# --- decode ----------------------------------------------------------------------------


def test_ulaw_decode_table_matches_g711_formula() -> None:
    assert _samples(ulaw_decode(ALL_CODES)) == [g711_ulaw_formula(c) for c in range(256)]


def test_alaw_decode_table_matches_g711_formula() -> None:
    assert _samples(alaw_decode(ALL_CODES)) == [g711_alaw_formula(c) for c in range(256)]


def test_decode_hand_checked_values() -> None:
    assert _samples(ulaw_decode(bytes([0xFF, 0x7F, 0xCE, 0x4E, 0x00, 0x80, 0xFE]))) == [
        0,
        0,
        988,
        -988,
        -32124,
        32124,
        8,
    ]
    assert _samples(alaw_decode(bytes([0xD5, 0x55, 0xFA, 0x7A, 0xAA, 0x2A]))) == [
        8,
        -8,
        1008,
        -1008,
        32256,
        -32256,
    ]


def test_silence_bytes() -> None:
    assert ULAW_SILENCE == 0xFF
    assert ALAW_SILENCE == 0xD5
    assert ulaw_decode(bytes([ULAW_SILENCE]) * 160) == bytes(320)
    assert _samples(alaw_decode(bytes([ALAW_SILENCE]) * 3)) == [8, 8, 8]
    assert ulaw_encode(bytes(320)) == bytes([ULAW_SILENCE]) * 160
    assert alaw_encode(bytes(320)) == bytes([ALAW_SILENCE]) * 160


def test_decode_output_length_and_empty() -> None:
    assert ulaw_decode(b"") == b""
    assert alaw_decode(b"") == b""
    assert len(ulaw_decode(bytes(160))) == 320
    assert len(alaw_decode(bytes(161))) == 322


# --- encode ----------------------------------------------------------------------------


def test_ulaw_encode_matches_asterisk_function_for_every_sample() -> None:
    expected = bytes(asterisk_linear2ulaw(int(x)) for x in ALL_SAMPLES)
    assert ulaw_encode(ALL_PCM) == expected


def test_alaw_encode_matches_asterisk_function_for_every_sample() -> None:
    # -32768 overflows the C function; Asterisk's run-time table gives full-scale 0x2A.
    expected = bytes([0x2A]) + bytes(asterisk_linear2alaw(int(x)) for x in ALL_SAMPLES[1:])
    assert alaw_encode(ALL_PCM) == expected


def test_encode_hand_checked_values() -> None:
    assert ulaw_encode(_pcm(0, 1, -1, 1000, -1000, 32767, -32768, 8159)) == bytes(
        [0xFF, 0xFF, 0x7F, 0xCE, 0x4E, 0x80, 0x00, 0x9F]
    )
    assert alaw_encode(_pcm(0, -1, 1000, -1000, 32767, -32768)) == bytes(
        [0xD5, 0x55, 0xFA, 0x7A, 0xAA, 0x2A]
    )


def test_encode_ignores_odd_trailing_byte_and_empty() -> None:
    assert ulaw_encode(b"") == b""
    assert alaw_encode(b"\x01") == b""
    pcm = _pcm(1000, -1000)
    assert ulaw_encode(pcm + b"\x7f") == ulaw_encode(pcm)
    assert alaw_encode(pcm + b"\x7f") == alaw_encode(pcm)
    assert len(ulaw_encode(bytes(480))) == 240


def test_ulaw_round_trip_within_half_step() -> None:
    codes = np.frombuffer(ulaw_encode(ALL_PCM), dtype=np.uint8).astype(np.int32)
    decoded = np.frombuffer(ulaw_decode(ulaw_encode(ALL_PCM)), dtype="<i2").astype(np.int32)
    exponent = ((~codes) >> 4) & 7
    half_step = 1 << (exponent + 2)
    in_range = np.abs(ALL_SAMPLES) <= 32635
    error = np.abs(decoded - ALL_SAMPLES)
    assert np.all(error[in_range] <= half_step[in_range])
    # Beyond CLIP the output saturates at full scale with the right sign.
    assert np.all(decoded[ALL_SAMPLES > 32635] == 32124)
    assert np.all(decoded[ALL_SAMPLES < -32635] == -32124)
    # Sanity: quantisation is not a no-op and not wildly off either.
    assert error.max() > 0
    audible = np.abs(ALL_SAMPLES) > 8
    assert np.all(np.sign(decoded[audible]) == np.sign(ALL_SAMPLES[audible]))


def test_alaw_round_trip_within_half_step() -> None:
    codes = np.frombuffer(alaw_encode(ALL_PCM), dtype=np.uint8).astype(np.int32)
    decoded = np.frombuffer(alaw_decode(alaw_encode(ALL_PCM)), dtype="<i2").astype(np.int32)
    segment = ((codes ^ 0x55) >> 4) & 7
    half_step = 8 << np.maximum(segment - 1, 0)
    error = np.abs(decoded - ALL_SAMPLES)
    assert np.all(error <= half_step)
    assert error.max() == 512


def test_ulaw_encode_of_decode_is_identity_except_negative_zero() -> None:
    again = ulaw_encode(ulaw_decode(ALL_CODES))
    mismatches = {c: again[c] for c in range(256) if again[c] != c}
    # 0x7F is "-0": it decodes to 0, which encodes as the canonical +0 code 0xFF.
    assert mismatches == {0x7F: 0xFF}


def test_alaw_encode_of_decode_is_identity() -> None:
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


def test_ulaw_differs_from_audioop_by_one_code_on_381_negative_inputs() -> None:
    ours = ulaw_encode(ALL_PCM)
    diffs = [
        (int(x), ours[i], audioop_lin2ulaw(int(x)))
        for i, x in enumerate(ALL_SAMPLES)
        if ours[i] != audioop_lin2ulaw(int(x))
    ]
    assert len(diffs) == 381
    assert all(x < 0 for x, _, _ in diffs)
    assert all(abs(ulaw_ordinal(a) - ulaw_ordinal(b)) == 1 for _, a, b in diffs)


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_encoding_is_monotonic(encode, decode) -> None:
    decoded = np.frombuffer(decode(encode(ALL_PCM)), dtype="<i2")
    assert np.all(np.diff(decoded.astype(np.int32)) >= 0)
