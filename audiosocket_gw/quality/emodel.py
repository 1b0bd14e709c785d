"""ITU-T G.107 E-model, simplified for G.711 calls (docs/PROTOCOLS.md §6.3).

What: turn one-way delay and packet loss into an R factor and a MOS (1.0-4.5)::

    R      = 93.2 - Id - Ie_eff
    Id     = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)        d = one-way delay, ms
    Ie_eff = Ie + (95 - Ie) Ppl / (Ppl + Bpl)               Ppl = loss, percent
    MOS    = 1 if R <= 0, 4.5 if R >= 100, else 1 + 0.035 R + 7e-6 R (R - 60)(100 - R)

The cubic is slightly below 1 (minimum 0.99 near R = 3.2) for 0 < R < 6.5; we clamp
it to 1.0 there so MOS stays on its scale and never rises as quality falls.

G.711 has Ie = 0 and Bpl = 25.1 with packet loss concealment (4.3 without).
:func:`estimate_mos` builds ``d`` from what RTCP tells us: RTT/2 + a jitter buffer of
about twice the jitter + about 25 ms of codec and packetization delay.

Why: Asterisk reports jitter, loss and RTT on AMI (``RTCPSent``/``RTCPReceived``)
but its own ``MES`` is not a MOS; dashboards and alerts want the familiar scale.
Pure functions, no I/O, no clock.

Errors: ``ValueError`` (with the offending value in the text) for inputs that no
measurement can produce: NaN, negative delay, loss outside 0-100 %, Bpl <= 0. These
are caller bugs; the RTCP parser validates peer data before it gets here.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "BPL_G711_NO_PLC",
    "BPL_G711_PLC",
    "DEFAULT_CODEC_DELAY_MS",
    "ID_KNEE_MS",
    "R0",
    "estimate_mos",
    "mos_from_r",
    "r_factor",
]

R0: Final = 93.2
"""R factor of a perfect G.711 call (default transmission rating)."""
ID_KNEE_MS: Final = 177.3
"""One-way delay (ms) past which the delay impairment grows much faster."""
BPL_G711_PLC: Final = 25.1
"""Packet-loss robustness of G.711 with packet loss concealment."""
BPL_G711_NO_PLC: Final = 4.3
"""Packet-loss robustness of G.711 without packet loss concealment."""
DEFAULT_CODEC_DELAY_MS: Final = 25.0
"""Codec plus packetization delay assumed for 20 ms G.711 frames."""


def _finite(name: str, value: float) -> None:
    if math.isnan(value):
        raise ValueError(f"{name} is NaN")


def r_factor(
    one_way_delay_ms: float,
    loss_percent: float,
    *,
    ie: float = 0.0,
    bpl: float = BPL_G711_PLC,
) -> float:
    """R factor for a one-way delay (ms) and a random packet loss (percent)."""
    _finite("one_way_delay_ms", one_way_delay_ms)
    _finite("loss_percent", loss_percent)
    _finite("ie", ie)
    _finite("bpl", bpl)
    if one_way_delay_ms < 0:
        raise ValueError(f"one_way_delay_ms must be >= 0, got {one_way_delay_ms}")
    if not 0.0 <= loss_percent <= 100.0:
        raise ValueError(f"loss_percent must be within 0..100, got {loss_percent}")
    if bpl <= 0:
        raise ValueError(f"bpl must be > 0, got {bpl}")
    d = one_way_delay_ms
    id_ = 0.024 * d
    if d > ID_KNEE_MS:
        id_ += 0.11 * (d - ID_KNEE_MS)
    ie_eff = ie + (95.0 - ie) * loss_percent / (loss_percent + bpl)
    return R0 - id_ - ie_eff


def mos_from_r(r: float) -> float:
    """MOS (1.0-4.5) from an R factor."""
    _finite("r", r)
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The cubic dips to 0.99 for 0 < R < 6.5; clamping keeps MOS on its 1-4.5 scale
    # and monotonic in R (so in loss and delay).
    return max(1.0, 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r))


def estimate_mos(
    *,
    rtt_s: float | None,
    jitter_ms: float,
    loss_fraction: float,
    codec_delay_ms: float = DEFAULT_CODEC_DELAY_MS,
    extra_delay_ms: float = 0.0,
    plc: bool = True,
) -> float:
    """MOS of a G.711 stream from RTCP figures.

    ``d = rtt_s * 1000 / 2 + 2 * jitter_ms + codec_delay_ms + extra_delay_ms``
    (an unknown RTT counts as 0); loss in percent is ``loss_fraction * 100``.
    """
    if rtt_s is not None:
        _finite("rtt_s", rtt_s)
        if rtt_s < 0:
            raise ValueError(f"rtt_s must be >= 0, got {rtt_s}")
    for name, value in (
        ("jitter_ms", jitter_ms),
        ("codec_delay_ms", codec_delay_ms),
        ("extra_delay_ms", extra_delay_ms),
    ):
        _finite(name, value)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    _finite("loss_fraction", loss_fraction)
    if not 0.0 <= loss_fraction <= 1.0:
        raise ValueError(f"loss_fraction must be within 0..1, got {loss_fraction}")
    rtt_ms = 0.0 if rtt_s is None else rtt_s * 1000.0
    d = rtt_ms / 2.0 + 2.0 * jitter_ms + codec_delay_ms + extra_delay_ms
    bpl = BPL_G711_PLC if plc else BPL_G711_NO_PLC
    return mos_from_r(r_factor(d, loss_fraction * 100.0, bpl=bpl))
