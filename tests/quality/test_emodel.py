"""Tests for the simplified G.107 E-model, with the arithmetic written out."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket_gw.quality.emodel import (
    BPL_G711_NO_PLC,
    BPL_G711_PLC,
    ID_KNEE_MS,
    R0,
    estimate_mos,
    mos_from_r,
    r_factor,
)


def test_constants() -> None:
    assert (R0, ID_KNEE_MS, BPL_G711_PLC, BPL_G711_NO_PLC) == (93.2, 177.3, 25.1, 4.3)


def test_perfect_call_mos_is_4_41() -> None:
    # 1 + 0.035 * 93.2 + 7e-6 * 93.2 * (93.2 - 60) * (100 - 93.2)
    # = 1 + 3.262 + 7e-6 * 93.2 * 33.2 * 6.8 = 1 + 3.262 + 0.147286 = 4.409286
    assert mos_from_r(93.2) == pytest.approx(4.409286, abs=1e-6)
    assert round(mos_from_r(93.2), 2) == 4.41
    assert mos_from_r(r_factor(0.0, 0.0)) == mos_from_r(93.2)


@pytest.mark.parametrize("r", [0.0, -0.001, -50.0, -math.inf])
def test_mos_floor(r: float) -> None:
    assert mos_from_r(r) == 1.0


@pytest.mark.parametrize("r", [100.0, 100.001, 250.0, math.inf])
def test_mos_ceiling(r: float) -> None:
    assert mos_from_r(r) == 4.5


def test_mos_mid_values() -> None:
    # R = 50: 1 + 1.75 + 7e-6 * 50 * (-10) * 50 = 2.75 - 0.175 = 2.575
    assert mos_from_r(50.0) == pytest.approx(2.575)
    # R = 80: 1 + 2.8 + 7e-6 * 80 * 20 * 20 = 3.8 + 0.224 = 4.024
    assert mos_from_r(80.0) == pytest.approx(4.024)


def test_mos_cubic_dip_below_one_is_clamped() -> None:
    # R = 3: 1 + 0.105 + 7e-6 * 3 * (-57) * 97 = 1.105 - 0.116109 = 0.988891 -> 1.0
    assert mos_from_r(3.0) == 1.0
    # R = 10: 1 + 0.35 + 7e-6 * 10 * (-50) * 90 = 1.35 - 0.315 = 1.035 (no clamp)
    assert mos_from_r(10.0) == pytest.approx(1.035)


def test_mos_is_continuous_at_the_clamps() -> None:
    assert mos_from_r(1e-9) == pytest.approx(1.0, abs=1e-6)
    assert mos_from_r(100 - 1e-9) == pytest.approx(4.5, abs=1e-6)


@pytest.mark.parametrize(
    ("loss_percent", "bpl", "expected_r"),
    [
        # Ie_eff = 95 * 1 / (1 + 25.1) = 3.639847; R = 93.2 - 3.639847
        (1.0, BPL_G711_PLC, 89.560153),
        # Ie_eff = 95 * 2 / (2 + 25.1) = 7.011070; R = 93.2 - 7.011070
        (2.0, BPL_G711_PLC, 86.188930),
        # Ie_eff = 95 * 5 / (5 + 25.1) = 15.780731; R = 93.2 - 15.780731
        (5.0, BPL_G711_PLC, 77.419269),
        # No PLC: Ie_eff = 95 * 10 / (10 + 4.3) = 66.433566; R = 93.2 - 66.433566
        (10.0, BPL_G711_NO_PLC, 26.766434),
        # All lost: Ie_eff = 95 * 100 / 125.1 = 75.939249
        (100.0, BPL_G711_PLC, 17.260751),
    ],
)
def test_hand_computed_loss(loss_percent: float, bpl: float, expected_r: float) -> None:
    assert r_factor(0.0, loss_percent, bpl=bpl) == pytest.approx(expected_r, abs=1e-6)


def test_ie_of_another_codec() -> None:
    # Ie = 11 (G.729a-like), no loss: R = 93.2 - 11 = 82.2
    assert r_factor(0.0, 0.0, ie=11.0) == pytest.approx(82.2)
    # Ie = 11, 2 % loss, Bpl 19: Ie_eff = 11 + 84 * 2 / 21 = 19.0; R = 74.2
    assert r_factor(0.0, 2.0, ie=11.0, bpl=19.0) == pytest.approx(74.2)


def test_delay_below_and_at_the_knee() -> None:
    # d = 100: Id = 0.024 * 100 = 2.4
    assert r_factor(100.0, 0.0) == pytest.approx(93.2 - 2.4)
    # d = 177.3: Id = 0.024 * 177.3 = 4.2552, the H() term is still 0
    assert r_factor(177.3, 0.0) == pytest.approx(88.9448)


def test_delay_above_the_knee() -> None:
    # d = 200: Id = 0.024 * 200 + 0.11 * (200 - 177.3) = 4.8 + 2.497 = 7.297
    assert r_factor(200.0, 0.0) == pytest.approx(85.903)
    # d = 400: Id = 9.6 + 0.11 * 222.7 = 9.6 + 24.497 = 34.097
    assert r_factor(400.0, 0.0) == pytest.approx(59.103)


def test_knee_changes_the_slope() -> None:
    eps = 1.0
    below = r_factor(ID_KNEE_MS - eps, 0.0) - r_factor(ID_KNEE_MS, 0.0)
    above = r_factor(ID_KNEE_MS, 0.0) - r_factor(ID_KNEE_MS + eps, 0.0)
    assert below == pytest.approx(0.024)
    assert above == pytest.approx(0.024 + 0.11)


@given(
    st.floats(min_value=0, max_value=2000),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
)
def test_monotonic_in_loss(delay: float, loss_a: float, loss_b: float) -> None:
    lo, hi = sorted((loss_a, loss_b))
    assert r_factor(delay, hi) <= r_factor(delay, lo)
    assert mos_from_r(r_factor(delay, hi)) <= mos_from_r(r_factor(delay, lo))


@given(
    st.floats(min_value=0, max_value=2000),
    st.floats(min_value=0, max_value=2000),
    st.floats(min_value=0, max_value=100),
)
def test_monotonic_in_delay(delay_a: float, delay_b: float, loss: float) -> None:
    lo, hi = sorted((delay_a, delay_b))
    assert r_factor(hi, loss) <= r_factor(lo, loss)
    assert mos_from_r(r_factor(hi, loss)) <= mos_from_r(r_factor(lo, loss))


@given(st.floats(min_value=-1000, max_value=1000))
def test_mos_monotonic_and_bounded(r: float) -> None:
    assert 1.0 <= mos_from_r(r) <= 4.5
    assert mos_from_r(r) <= mos_from_r(r + 0.5) + 1e-12


def test_estimate_mos_arithmetic() -> None:
    # d = 100 ms RTT / 2 + 2 * 10 ms jitter + 25 ms codec = 50 + 20 + 25 = 95 ms
    # Id = 0.024 * 95 = 2.28; Ie_eff (1 %) = 3.639847; R = 93.2 - 2.28 - 3.639847 = 87.280153
    # MOS = 1 + 0.035 * 87.280153 + 7e-6 * 87.280153 * 27.280153 * 12.719847 = 4.266808
    mos = estimate_mos(rtt_s=0.1, jitter_ms=10.0, loss_fraction=0.01)
    assert mos == pytest.approx(4.266808, abs=1e-6)


def test_estimate_mos_defaults_and_options() -> None:
    # No RTT, no jitter, no loss: d = 25 ms codec delay -> R = 93.2 - 0.6 = 92.6
    assert estimate_mos(rtt_s=None, jitter_ms=0.0, loss_fraction=0.0) == pytest.approx(
        mos_from_r(92.6)
    )
    # extra delay adds to d: 25 + 175 = 200 ms -> R = 85.903 (see above)
    assert estimate_mos(
        rtt_s=None, jitter_ms=0.0, loss_fraction=0.0, extra_delay_ms=175.0
    ) == pytest.approx(mos_from_r(85.903))
    # codec delay 0 and no loss: the perfect 4.41
    assert estimate_mos(
        rtt_s=0.0, jitter_ms=0.0, loss_fraction=0.0, codec_delay_ms=0.0
    ) == pytest.approx(mos_from_r(93.2))
    # Without PLC the same loss hurts more: 5 % -> Ie_eff = 95 * 5 / 9.3 = 51.075269
    no_plc = estimate_mos(rtt_s=None, jitter_ms=0.0, loss_fraction=0.05, plc=False)
    assert no_plc == pytest.approx(mos_from_r(93.2 - 0.6 - 51.075269), abs=1e-6)
    assert no_plc < estimate_mos(rtt_s=None, jitter_ms=0.0, loss_fraction=0.05)


def test_estimate_mos_jitter_counts_twice() -> None:
    a = estimate_mos(rtt_s=0.04, jitter_ms=30.0, loss_fraction=0.0)
    b = estimate_mos(rtt_s=0.16, jitter_ms=0.0, loss_fraction=0.0)  # 60 ms one way via RTT
    assert a == pytest.approx(b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rtt_s": -0.1, "jitter_ms": 0.0, "loss_fraction": 0.0},
        {"rtt_s": None, "jitter_ms": -1.0, "loss_fraction": 0.0},
        {"rtt_s": None, "jitter_ms": 0.0, "loss_fraction": 1.01},
        {"rtt_s": None, "jitter_ms": 0.0, "loss_fraction": -0.01},
        {"rtt_s": None, "jitter_ms": math.nan, "loss_fraction": 0.0},
        {"rtt_s": math.nan, "jitter_ms": 0.0, "loss_fraction": 0.0},
        {"rtt_s": None, "jitter_ms": 0.0, "loss_fraction": 0.0, "codec_delay_ms": -1.0},
    ],
)
def test_estimate_mos_rejects_impossible_input(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(ValueError):
        estimate_mos(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "loss", "bpl"),
    [(-1.0, 0.0, 25.1), (0.0, -1.0, 25.1), (0.0, 100.5, 25.1), (0.0, 1.0, 0.0), (math.nan, 0, 1)],
)
def test_r_factor_rejects_impossible_input(delay: float, loss: float, bpl: float) -> None:
    with pytest.raises(ValueError):
        r_factor(delay, loss, bpl=bpl)


def test_mos_from_r_rejects_nan() -> None:
    with pytest.raises(ValueError):
        mos_from_r(math.nan)
