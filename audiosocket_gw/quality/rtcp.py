"""Call quality from Asterisk's RTCP AMI events and RTPAUDIOQOS variables.

What: ``RTCPSent``/``RTCPReceived`` events (class ``reporting``, every 5 s on a PJSIP
call; docs/PROTOCOLS.md §6.1) become :class:`RtcpSample` values;
:class:`MosTracker` turns a call's samples into a MOS per direction with the
E-model (:mod:`.emodel`), next to Asterisk's own ``MES``. :func:`parse_rtpaudioqos`
reads the ``RTPAUDIOQOS*`` variables set (as ``VarSet`` events) at hangup.

Directions: ``RTCPSent``'s ``Report0`` is Asterisk's report on the stream it
receives from the caller (``caller_to_asterisk``); ``RTCPReceived``'s ``Report0`` is
the caller's report on the stream Asterisk sends (``asterisk_to_caller``). Only
``RTCPReceived`` carries ``RTT``; the tracker reuses the last known RTT for the other
direction, since the round trip is shared.

Why: pure functions over header mappings, so the AMI client, the simulator and the
tests use the same code without a socket or a clock.

Errors: :class:`RtcpFormatError` (a ``ValueError``) when a present ``Report0`` block
holds a value that is not a number or is out of range: the peer's fault; the caller
counts it and drops the event. An event without a ``Report0`` block (``ReportCount:
0``) or that is not an RTCP event is not an error: :func:`parse_rtcp_event` returns
``None``. :func:`parse_rtpaudioqos` never raises: it skips what it cannot read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from audiosocket_gw.quality.emodel import DEFAULT_CODEC_DELAY_MS, estimate_mos

__all__ = [
    "ASTERISK_TO_CALLER",
    "CALLER_TO_ASTERISK",
    "DirectionStats",
    "MosTracker",
    "RtcpFormatError",
    "RtcpSample",
    "parse_rtcp_event",
    "parse_rtpaudioqos",
]

Direction = Literal["caller_to_asterisk", "asterisk_to_caller"]
CALLER_TO_ASTERISK: Final[Direction] = "caller_to_asterisk"
ASTERISK_TO_CALLER: Final[Direction] = "asterisk_to_caller"
_DIRECTIONS: Final[tuple[Direction, Direction]] = (CALLER_TO_ASTERISK, ASTERISK_TO_CALLER)

_EVENT_DIRECTION: Final[Mapping[str, Direction]] = {
    "rtcpsent": CALLER_TO_ASTERISK,
    "rtcpreceived": ASTERISK_TO_CALLER,
}


class RtcpFormatError(ValueError):
    """A present RTCP report field is not a number or is out of range."""


@dataclass(frozen=True, slots=True)
class RtcpSample:
    """One RTCP report block (``Report0``) about one direction of a call's audio."""

    direction: Direction
    jitter_ms: float
    """Interarrival jitter, ms (``Report0IAJitter`` / samples per ms)."""
    loss_fraction: float
    """Loss since the previous report, 0-1 (``Report0FractionLost`` / 256)."""
    rtt_s: float | None
    """Round-trip time, s (``RTT``, ``RTCPReceived`` only)."""
    mes: float | None
    """Asterisk's Media Experience Score (0-100), when the event has ``MES``."""
    channel: str | None
    uniqueid: str | None
    linkedid: str | None


def _number(headers: Mapping[str, str], key: str) -> float | None:
    raw = headers.get(key)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise RtcpFormatError(f"{key} is not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise RtcpFormatError(f"{key} is not finite: {raw!r}")
    return value


def parse_rtcp_event(headers: Mapping[str, str], *, clock_rate_hz: int = 8000) -> RtcpSample | None:
    """Read an ``RTCPSent``/``RTCPReceived`` event (keys case-insensitive).

    Returns ``None`` when the event is not one of those two or has no ``Report0``
    block. ``clock_rate_hz`` converts the jitter from RTP timestamp units (8000 for
    G.711). Raises :class:`RtcpFormatError` for a malformed ``Report0`` value.
    """
    if clock_rate_hz <= 0:
        raise ValueError(f"clock_rate_hz must be > 0, got {clock_rate_hz}")
    low = {key.lower(): value for key, value in reversed(list(headers.items()))}
    direction = _EVENT_DIRECTION.get(low.get("event", "").strip().lower())
    if direction is None:
        return None
    fraction = _number(low, "report0fractionlost")
    jitter = _number(low, "report0iajitter")
    if fraction is None or jitter is None:
        return None
    if not 0 <= fraction <= 255:
        raise RtcpFormatError(f"Report0FractionLost out of 0..255: {fraction}")
    if jitter < 0:
        raise RtcpFormatError(f"Report0IAJitter is negative: {jitter}")
    rtt: float | None = None
    if direction == ASTERISK_TO_CALLER:
        rtt = _number(low, "rtt")
        if rtt is not None and rtt < 0:
            raise RtcpFormatError(f"RTT is negative: {rtt}")
    mes = _number(low, "mes")
    return RtcpSample(
        direction=direction,
        jitter_ms=jitter / (clock_rate_hz / 1000.0),
        loss_fraction=fraction / 256.0,
        rtt_s=rtt,
        mes=mes,
        channel=low.get("channel"),
        uniqueid=low.get("uniqueid"),
        linkedid=low.get("linkedid"),
    )


def parse_rtpaudioqos(value: str) -> dict[str, float]:
    """``k=v;k=v`` of an ``RTPAUDIOQOS*`` variable as floats.

    Handles the padded shapes (``  minrxlost=000.000000;  maxrxlost=...;``), a
    missing or doubled ``;`` and surrounding spaces. Parts that are not ``k=number``
    (or are NaN/infinite, as ``stdevrxjitter=inf`` once was) are skipped.
    """
    out: dict[str, float] = {}
    for part in value.split(";"):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        try:
            number = float(raw.strip())
        except ValueError:
            continue
        if math.isfinite(number):
            out[key] = number
    return out


@dataclass(frozen=True, slots=True)
class DirectionStats:
    """Summary of one direction of a call."""

    samples: int
    min_mos: float | None
    mean_mos: float | None
    last_mos: float | None
    min_mes: float | None
    mean_mes: float | None


class _Acc:
    __slots__ = ("mes_count", "mes_min", "mes_sum", "mos_last", "mos_min", "mos_sum", "n")

    def __init__(self) -> None:
        self.n = 0
        self.mos_sum = 0.0
        self.mos_min = math.inf
        self.mos_last = math.nan
        self.mes_count = 0
        self.mes_sum = 0.0
        self.mes_min = math.inf


class MosTracker:
    """Per-call accumulator of RTCP samples: MOS (E-model) and MES per direction.

    ``codec_delay_ms``, ``extra_delay_ms`` and ``plc`` go to
    :func:`~audiosocket_gw.quality.emodel.estimate_mos` (use ``extra_delay_ms`` for
    delay the gateway adds, such as the AI backend's path, if it should count).
    """

    def __init__(
        self,
        *,
        codec_delay_ms: float = DEFAULT_CODEC_DELAY_MS,
        extra_delay_ms: float = 0.0,
        plc: bool = True,
    ) -> None:
        self._codec_delay_ms = codec_delay_ms
        self._extra_delay_ms = extra_delay_ms
        self._plc = plc
        self._acc: dict[Direction, _Acc] = {d: _Acc() for d in _DIRECTIONS}
        self._rtt_s: float | None = None
        self._qos: dict[str, dict[str, float]] = {}

    @property
    def rtt_s(self) -> float | None:
        """Last RTT reported by an ``RTCPReceived`` event, seconds."""
        return self._rtt_s

    def add(self, sample: RtcpSample) -> float:
        """Account one sample; return its MOS.

        A sample without RTT uses the last known RTT of the call (or none).
        """
        if sample.rtt_s is not None:
            self._rtt_s = sample.rtt_s
        rtt = sample.rtt_s if sample.rtt_s is not None else self._rtt_s
        mos = estimate_mos(
            rtt_s=rtt,
            jitter_ms=sample.jitter_ms,
            loss_fraction=sample.loss_fraction,
            codec_delay_ms=self._codec_delay_ms,
            extra_delay_ms=self._extra_delay_ms,
            plc=self._plc,
        )
        acc = self._acc[sample.direction]
        acc.n += 1
        acc.mos_sum += mos
        acc.mos_min = min(acc.mos_min, mos)
        acc.mos_last = mos
        if sample.mes is not None:
            acc.mes_count += 1
            acc.mes_sum += sample.mes
            acc.mes_min = min(acc.mes_min, sample.mes)
        return mos

    def add_event(self, headers: Mapping[str, str]) -> float | None:
        """Parse an AMI event and account it; the MOS, or ``None`` if not a sample.

        Raises :class:`RtcpFormatError` like :func:`parse_rtcp_event`.
        """
        sample = parse_rtcp_event(headers)
        return None if sample is None else self.add(sample)

    def add_qos_variable(self, variable: str, value: str) -> bool:
        """Keep an ``RTPAUDIOQOS*`` VarSet; ``False`` if ``variable`` is not one."""
        name = variable.strip().upper()
        if not name.startswith("RTPAUDIOQOS"):
            return False
        self._qos[name] = parse_rtpaudioqos(value)
        return True

    @property
    def asterisk_qos(self) -> Mapping[str, Mapping[str, float]]:
        """The ``RTPAUDIOQOS*`` variables seen, by upper-case name, parsed."""
        return dict(self._qos)

    def samples(self, direction: Direction) -> int:
        return self._acc[direction].n

    def min_mos(self, direction: Direction) -> float | None:
        acc = self._acc[direction]
        return acc.mos_min if acc.n else None

    def mean_mos(self, direction: Direction) -> float | None:
        acc = self._acc[direction]
        return acc.mos_sum / acc.n if acc.n else None

    def min_mes(self, direction: Direction) -> float | None:
        """Lowest Asterisk ``MES`` seen for ``direction``."""
        acc = self._acc[direction]
        return acc.mes_min if acc.mes_count else None

    def mean_mes(self, direction: Direction) -> float | None:
        """Mean Asterisk ``MES`` for ``direction``."""
        acc = self._acc[direction]
        return acc.mes_sum / acc.mes_count if acc.mes_count else None

    def stats(self, direction: Direction) -> DirectionStats:
        acc = self._acc[direction]
        return DirectionStats(
            samples=acc.n,
            min_mos=self.min_mos(direction),
            mean_mos=self.mean_mos(direction),
            last_mos=acc.mos_last if acc.n else None,
            min_mes=self.min_mes(direction),
            mean_mes=self.mean_mes(direction),
        )

    def overall_min_mos(self) -> float | None:
        """Worst MOS over both directions, ``None`` before any sample."""
        values = [m for d in _DIRECTIONS if (m := self.min_mos(d)) is not None]
        return min(values) if values else None
