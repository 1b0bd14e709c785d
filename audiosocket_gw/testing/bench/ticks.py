"""Whole-tick delays at the caller: was a late frame one call's, or the whole tick's?

The gateway writes every call's frame of a tick from one pacer tick, each call at its
own steady offset within the tick. A frame that reaches its caller late shows as two
jitter samples (the gap before it is long, the one after short). When a tick started
late (the event loop was busy at the deadline, or the virtual CPU did not run), every
call's frame of that tick is late by about the same amount; a slow write late in the
tick delays only the calls written after it. ``tick_delays`` tells them apart from the
callers' kernel receive stamps alone: each call's frames are set against that call's
usual offset within the tick, frames are grouped by the tick that wrote them, and a
tick counts as *stalled* when nearly all of its calls were late together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...pacer import PERIOD


def _wrap(x: np.ndarray[Any, Any], period: float) -> np.ndarray[Any, Any]:
    """Into [-period/2, period/2)."""
    return (x + period / 2) % period - period / 2


def tick_delays(arrivals: list[Any], t0: float, t1: float, *, period: float = PERIOD,
                late_ms: float = 1.0, share: float = 0.9) -> dict[str, Any]:
    """Frames of ``arrivals`` (per call, ascending arrival times) inside [t0, t1].

    Returns ``ticks`` (ticks seen), ``stalled_ticks`` (ticks where at least ``share`` of
    the calls' frames were more than ``late_ms`` later than their call's usual offset),
    ``stall_p50_ms`` / ``stall_max_ms`` (how late those ticks' frames were, median per
    tick) and ``late_in_stalls`` (the share of all frames later than ``late_ms`` that
    belong to stalled ticks: near 1 means the late frames came from whole ticks).
    """
    delays: list[np.ndarray[Any, Any]] = []
    intended: list[np.ndarray[Any, Any]] = []
    for arr in arrivals:
        a = np.asarray(arr, dtype=np.float64)
        a = a[(a >= t0) & (a <= t1)]
        if len(a) < 10:
            continue
        d = _wrap(a - a[0], period)
        d = _wrap(d - np.median(d), period)  # lateness against the call's usual offset
        delays.append(d)
        intended.append(a - d)
    empty = {"ticks": 0, "stalled_ticks": 0, "stall_p50_ms": None, "stall_max_ms": None,
             "late_in_stalls": None}
    if not delays:
        return empty
    # Each call's offset within the tick; ticks are cut in the widest empty stretch
    # between offsets, so one tick's frames are never split across two.
    phases = np.sort(np.asarray([(i[0] - t0) % period for i in intended]))
    gaps = np.diff(np.append(phases, phases[0] + period))
    k = int(np.argmax(gaps))
    cut = (phases[k] + gaps[k] / 2) % period
    tick_ids = [np.floor((i - t0 - cut) / period).astype(np.int64) for i in intended]
    ids = np.concatenate(tick_ids)
    late = np.concatenate(delays) * 1000.0
    base = int(ids.min())
    per_tick = np.bincount(ids - base)
    is_late = late > late_ms
    late_per_tick = np.bincount(ids[is_late] - base, minlength=len(per_tick))
    ncalls = len(delays)
    stalled = (per_tick >= ncalls // 2) & (late_per_tick >= share * np.maximum(per_tick, 1))
    stalled_ids = np.flatnonzero(stalled)
    sizes = []
    for t in stalled_ids:
        sizes.append(float(np.median(late[ids - base == t])))
    n_late = int(is_late.sum())
    in_stalls = int(np.isin(ids[is_late] - base, stalled_ids).sum()) if n_late else 0
    return {
        "ticks": int((per_tick > 0).sum()),
        "stalled_ticks": len(stalled_ids),
        "stall_p50_ms": round(float(np.median(sizes)), 2) if sizes else None,
        "stall_max_ms": round(max(sizes), 2) if sizes else None,
        "late_in_stalls": round(in_stalls / n_late, 3) if n_late else None,
    }
