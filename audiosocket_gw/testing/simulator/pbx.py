"""Simulated Asterisk calls over real AudioSocket TCP.

Each call behaves as Asterisk's ``AudioSocket()`` application does (docs/PROTOCOLS.md §1):
connect, send the 16-byte UUID frame first, then one audio frame per packetisation
interval (320 bytes every 20 ms by default, 480 every 30 ms for a 30 ms SIP caller),
DTMF as one 0x03 frame per digit, and at the end close the socket without any frame
(caller hangup). It applies Asterisk's 2 s rule: if neither side sent anything for
2 s, the call drops. It records every frame the gateway sends with its arrival time
(the kernel's receive time, `stamped.py`: not when the simulator got round to it).

One ticker task sends for every call (as Asterisk's channel threads would, but
without a task per call); each call keeps its own schedule from its own start, so the
gateway sees arrivals spread across its 20 ms tick, as with real independent channels.

For long, large runs (``make bench``) a plan can set ``keep_audio=False``: received
frames are then parsed as they arrive and only their arrival times (and, tagged, their
transit) are kept, not the audio (400 calls for a minute would otherwise hold ~400 MB),
and ``run_simulation(lateness=SimLateness())`` records how late the simulator's own send
loop and event loop ran, so a figure can be checked against the tool's own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import struct
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ... import audiosocket as asp
from ...dsp.vad import frame_levels
from .audio import (
    FRAME_SAMPLES,
    RATE,
    TAG_MAGIC,
    read_tag,
    speech_like,
    tag_frames,
    write_wav,
)
from .stamped import StampedSocket, connect_stamped

INACTIVITY_S: Final = 2.0
BATCH_S: Final = 0.001
SILENT_LEVEL: Final = 256.0


@dataclass
class CallPlan:
    """What one simulated caller does."""

    seconds: float
    """How long the caller stays; may be changed while the call runs (shortened, the
    caller hangs up at its next tick)."""
    audio: npt.NDArray[np.int16] | None = None  # None: a silent caller (sends no frames)
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    index: int = 0
    frame_ms: int = 20
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    tagged: bool = False
    pauses: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) seconds into the call when no frames are sent (DTX, as a phone with
    silence suppression does: Asterisk then sends AudioSocket nothing)."""
    leave: asyncio.Event | None = None
    """Set it to make the channel leave AudioSocket (AMI Redirect/Bridge): the gateway
    sees a plain EOF, no frame (docs/PROTOCOLS.md §2c.2)."""
    send_dtmf: list[str] = field(default_factory=list)
    """Digits to send as 0x03 frames at the next tick (``PlayDTMF Receive: true``)."""
    press_after_audio: tuple[float, str] | None = None
    """(seconds, digit): press ``digit`` that long after the first audible frame from
    the gateway (a person who listens to a prompt, then answers it)."""
    keep_audio: bool = True
    """False: keep only the arrival time of each received frame (and its transit when
    tagged), parsed as it arrives; no WAV, levels or ``heard`` (long, large runs)."""


@dataclass
class CallReport:
    call_id: str
    connected: bool = False
    ended_by: str = "pending"
    """simulator | gateway-hangup | gateway-close | inactivity | moved | error"""
    error: str | None = None
    frames_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    first_frame_s: float | None = None
    first_audio_s: float | None = None
    jitter_p50_ms: float | None = None
    jitter_p99_ms: float | None = None
    max_gap_ms: float | None = None
    gaps_over_40ms: int = 0
    transit_ms: list[float] = field(default_factory=list, repr=False)
    jitter_ms: list[float] = field(default_factory=list, repr=False)
    heard: list[tuple[float, float]] = field(default_factory=list, repr=False)
    """(arrival in seconds since the call connected, mean |sample|) of every frame."""
    arrivals: array[float] = field(default_factory=lambda: array("d"), repr=False)
    """``time.monotonic()`` arrival of every audio frame received, in order."""
    connected_at: float | None = None
    """``time.monotonic()`` when the AudioSocket connection was made."""
    nonzero_frames: int = 0
    """Received audio frames that were not all zero samples (``keep_audio=False`` only):
    whether the bot's audio, not just the gateway's silence, reached the caller."""

    def cut_after(
        self, onset_s: float, *, silent: float = 256.0, hold_s: float = 0.2
    ) -> float | None:
        """Seconds from ``onset_s`` until the caller hears silence that lasts ``hold_s``
        (speech has short quiet frames of its own), provided they were hearing audio
        just before: how long barge-in took, as the caller hears it."""
        before = [lvl for t, lvl in self.heard if onset_s - 0.2 <= t < onset_s]
        if not before or max(before) < silent:
            return None
        start: float | None = None
        for t, lvl in self.heard:
            if t < onset_s:
                continue
            if lvl >= silent:
                start = None
            elif start is None:
                start = t
            elif t - start >= hold_s:
                return start - onset_s
        return None
    wav: str | None = None

    @property
    def ok(self) -> bool:
        return self.connected and self.ended_by == "simulator" and self.error is None

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("transit_ms")
        d.pop("jitter_ms")
        d.pop("heard")
        d.pop("arrivals")
        d["ok"] = self.ok
        return d


@dataclass
class SimulationReport:
    calls: list[CallReport]
    seconds: float

    def _values(self, attr: str) -> list[float]:
        return [v for c in self.calls if (v := getattr(c, attr)) is not None]

    @property
    def ok_calls(self) -> int:
        return sum(c.ok for c in self.calls)

    def summary(self) -> dict[str, Any]:
        transit = [t for c in self.calls for t in c.transit_ms]
        pooled = [j for c in self.calls for j in c.jitter_ms]
        jitter50 = self._values("jitter_p50_ms")
        jitter99 = self._values("jitter_p99_ms")
        first = self._values("first_audio_s")
        return {
            "calls": len(self.calls),
            "ok": self.ok_calls,
            "failed": len(self.calls) - self.ok_calls,
            "ended_by": _count(c.ended_by for c in self.calls),
            "frames_sent": sum(c.frames_sent for c in self.calls),
            "frames_received": sum(c.frames_received for c in self.calls),
            "gaps_over_40ms": sum(c.gaps_over_40ms for c in self.calls),
            "max_gap_ms": max(self._values("max_gap_ms"), default=None),
            "jitter_p50_ms": _pct(jitter50, 50),
            "jitter_p99_ms": max(jitter99, default=None),
            "pooled_jitter_p50_ms": _pct(pooled, 50),
            "pooled_jitter_p99_ms": _pct(pooled, 99),
            "first_audio_p50_s": _pct(first, 50),
            "first_audio_max_s": max(first, default=None),
            "transit_p50_ms": _pct(transit, 50),
            "transit_p99_ms": _pct(transit, 99),
            "errors": [c.error for c in self.calls if c.error][:10],
        }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), p))


@dataclass
class SimLateness:
    """How late the simulator itself ran: ``send`` holds (when, seconds late) of each
    send-loop wake-up that had frames due (now minus the earliest frame's schedule);
    ``loop`` the same for a timer re-armed every ``LOOP_PROBE_S``: any socket that became
    readable waited about that long for its data to be read and time-stamped."""

    send: array[float] = field(default_factory=lambda: array("d"))
    loop: array[float] = field(default_factory=lambda: array("d"))

    @staticmethod
    def _window(pairs: array[float], t0: float, t1: float) -> list[float]:
        return [pairs[i + 1] for i in range(0, len(pairs), 2) if t0 <= pairs[i] <= t1]

    def summary(self, t0: float = 0.0, t1: float = float("inf")) -> dict[str, float | None]:
        """p50/p99/max in ms of both, over wake-ups between ``t0`` and ``t1``."""
        out: dict[str, float | None] = {}
        for name, pairs in (("send", self.send), ("loop", self.loop)):
            late = [max(0.0, v) * 1000.0 for v in self._window(pairs, t0, t1)]
            out[f"{name}_late_p50_ms"] = _pct(late, 50)
            out[f"{name}_late_p99_ms"] = _pct(late, 99)
            out[f"{name}_late_max_ms"] = max(late, default=None)
        return out


LOOP_PROBE_S: Final = 0.005
_ZERO_FRAME: Final = bytes(320)


class _SimCall(asyncio.Protocol):
    """The Asterisk end of one AudioSocket connection."""

    def __init__(self, plan: CallPlan, report: CallReport, transit_offset_s: float = 0.0,
                 sock: StampedSocket | None = None) -> None:
        self.plan = plan
        self.sock = sock  # arrival times from the kernel (stamped.py)
        self.report = report
        self.decoder = asp.Decoder(require_uuid_first=False)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.arrivals: array[float] = array("d")
        self.rx = bytearray()
        self.rx_times = array("d")
        self.rx_offsets = array("q")
        self.decoded = False
        self.frames: list[bytes] = []
        self.send_times: dict[int, float] = {}
        self.started = 0.0
        self.last_activity = 0.0
        self.frame_bytes = plan.frame_ms * 16
        self.pcm = b"" if plan.audio is None else plan.audio.tobytes()
        self.offset = 0
        self.seq = 0
        self.dtmf = sorted(plan.dtmf)
        self.done = False
        self.next_send = 0.0
        self.heard_at: float | None = None  # first audible frame (press_after_audio)
        self.live = asp.Decoder(require_uuid_first=False) if plan.press_after_audio else None
        self.lean = not plan.keep_audio
        self.tag_index = plan.index & 0x7FFF
        self.transit_offset_s = transit_offset_s
        # keep_audio=False: the looped audio encoded once; frames written straight to
        # the socket while the transport has nothing queued (no per-frame encode or
        # transport bookkeeping: the simulator must stay cheap at hundreds of calls).
        self.encoded: list[bytes] = []
        self.frame_i = 0
        self.fd = -1
        if self.lean and len(self.pcm) >= self.frame_bytes:
            fb = self.frame_bytes
            self.encoded = [asp.encode_audio(self.pcm[i : i + fb])
                            for i in range(0, len(self.pcm) - fb + 1, fb)]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.started = self.last_activity = self.next_send = time.monotonic()
        self.report.connected = True
        self.report.connected_at = self.started
        transport.write(asp.encode_uuid(self.plan.call_id))
        if self.encoded:
            sock = transport.get_extra_info("socket")
            self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        # Only stamp and keep the bytes here: decoding later keeps this callback short,
        # so a burst of 200 calls' frames is time-stamped close to when it arrived.
        # Plain arrays and one bytearray: no per-chunk Python objects for the garbage
        # collector to walk (a full collection over 100k tuples would itself add
        # milliseconds of "jitter" to the stamps). The stamp is the kernel's receive
        # time where available: the simulator's own lateness is not the gateway's.
        now = self.sock.stamp if self.sock is not None else time.monotonic()
        self.last_activity = now
        if self.lean:
            self._parse_lean(data, now)
            return
        self.rx_times.append(now)
        self.rx_offsets.append(len(self.rx))
        self.rx += data
        if self.live is not None and self.heard_at is None:
            with contextlib.suppress(asp.ProtocolError):
                self.live.feed(data)
                while (ev := self.live.next_event()) is not None:
                    if isinstance(ev, asp.Audio) and ev.data and np.abs(
                            np.frombuffer(ev.data[: len(ev.data) // 2 * 2], dtype="<i2"
                                          ).astype(np.int32)).mean() >= SILENT_LEVEL:
                        self.heard_at = now
                        self.live = None
                        break

    def _parse_lean(self, data: bytes, now: float) -> None:
        """``keep_audio=False``: frames parsed as they come, only arrivals kept (the
        common case, one whole audio frame per read, takes the first branch)."""
        if self.done:
            return
        rx = self.rx
        if not rx and len(data) == 323 and data[0] == 0x10 and data[1:3] == b"\x01\x40":
            self.arrivals.append(now)
            if data[3:] != _ZERO_FRAME:
                self.report.nonzero_frames += 1
            if self.plan.tagged:
                self._transit(data, 3, now)
            return
        rx += data
        off = 0
        n = len(rx)
        while n - off >= 3:
            kind = rx[off]
            size = (rx[off + 1] << 8) | rx[off + 2]
            if n - off - 3 < size:
                break
            if kind == 0x10:
                self.arrivals.append(now)
                if rx[off + 3 : off + 3 + size].count(0) != size:
                    self.report.nonzero_frames += 1
                if self.plan.tagged:
                    self._transit(rx, off + 3, now)
            elif kind == 0x00:
                if self.report.ended_by == "pending":
                    self.report.ended_by = "gateway-hangup"
                self._finish(self.report.ended_by)
                return
            else:
                self._finish("error", f"gateway sent a frame of kind {kind:#04x}")
                return
            off += 3 + size
        del rx[:off]

    def _transit(self, buf: bytes | bytearray, at: int, now: float) -> None:
        if len(buf) < at + 8:
            return
        magic, index, hi, lo = struct.unpack_from("<4h", buf, at)
        if magic == TAG_MAGIC and index == self.tag_index:
            sent = self.send_times.pop((hi << 15) | lo, None)
            if sent is not None:
                self.report.transit_ms.append((now - sent - self.transit_offset_s) * 1000.0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.done = True
            self._decode()
            if self.report.ended_by == "pending":
                self.report.ended_by = "gateway-close"
        if not self.closed.done():
            self.closed.set_result(None)

    def _decode(self) -> None:
        """Turn the received bytes into frames with arrival times (once)."""
        if self.decoded:
            return
        self.decoded = True
        if self.lean:
            return
        dec = self.decoder
        if not self.rx_times:
            return
        ends = [*self.rx_offsets[1:], len(self.rx)]
        try:
            for t, start, end in zip(self.rx_times, self.rx_offsets, ends, strict=True):
                dec.feed(bytes(self.rx[start:end]))
                while (ev := dec.next_event()) is not None:
                    if isinstance(ev, asp.Audio):
                        self.arrivals.append(t)
                        self.frames.append(ev.data)
                    elif isinstance(ev, asp.Hangup):
                        if self.report.ended_by == "pending":
                            self.report.ended_by = "gateway-hangup"
                        return
                    else:  # Asterisk would kill the call on any other kind
                        self.report.ended_by = "error"
                        self.report.error = f"gateway sent a non-audio frame: {ev!r}"
                        return
        except asp.ProtocolError as exc:
            self.report.ended_by = "error"
            self.report.error = f"gateway broke the protocol: {exc}"

    def _finish(self, how: str, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.report.ended_by = how
        self.report.error = error
        if self.transport is not None:
            self.transport.close()

    def tick(self, now: float, horizon: float) -> float:
        """Send what is due by ``horizon`` (>= now); return when this call next needs a tick."""
        if self.done or self.transport is None:
            return float("inf")
        elapsed = now - self.started
        if elapsed >= self.plan.seconds:
            self._finish("simulator")
            return float("inf")
        if self.plan.leave is not None and self.plan.leave.is_set():
            self._finish("moved")
            return float("inf")
        if now - self.last_activity > INACTIVITY_S:
            self._finish("inactivity", "no audio either way for 2 s (Asterisk would hang up)")
            return float("inf")
        while self.dtmf and self.dtmf[0][0] <= elapsed:
            self.transport.write(asp.encode_dtmf(self.dtmf.pop(0)[1]))
            self.last_activity = now
        press = self.plan.press_after_audio
        if press is not None and self.heard_at is not None and now - self.heard_at >= press[0]:
            self.plan.press_after_audio = None
            self.transport.write(asp.encode_dtmf(press[1]))
            self.last_activity = now
        while self.plan.send_dtmf:
            self.transport.write(asp.encode_dtmf(self.plan.send_dtmf.pop(0)))
            self.last_activity = now
        period = self.plan.frame_ms / 1000.0
        if not self.pcm:
            self.next_send = now + period
            return self.next_send
        if self.encoded:
            return self._tick_lean(now, horizon, period)
        while self.next_send <= horizon:
            if self.plan.pauses and self._paused(self.next_send - self.started):
                self.next_send += period
                continue
            chunk = self.pcm[self.offset : self.offset + self.frame_bytes]
            if len(chunk) < self.frame_bytes:
                self.offset = 0
                chunk = self.pcm[: self.frame_bytes]
            self.offset += self.frame_bytes
            self.transport.write(asp.encode_audio(chunk))
            if self.plan.tagged:
                self.send_times[self.seq] = now
            self.seq += 1
            self.report.frames_sent += 1
            self.last_activity = now
            self.next_send += period
            if now - self.next_send > 2 * period:  # stalled: do not burst, skip ahead
                self.next_send = now + period
        return self.next_send

    def _tick_lean(self, now: float, horizon: float, period: float) -> float:
        """:meth:`tick`'s sending for ``keep_audio=False`` (pre-encoded looped frames;
        a tagged frame's send time is keyed by its place in the loop, as its tag is)."""
        transport = self.transport
        assert transport is not None
        while self.next_send <= horizon:
            i = self.frame_i
            frame = self.encoded[i]
            self.frame_i = (i + 1) % len(self.encoded)
            if self.fd >= 0 and not transport.get_write_buffer_size():
                try:
                    n = os.write(self.fd, frame)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:  # the transport reports the broken connection
                    n = 0
                if n < len(frame):
                    transport.write(frame[n:])
            else:
                transport.write(frame)
            if self.plan.tagged:
                self.send_times[i] = now
            self.report.frames_sent += 1
            self.last_activity = now
            self.next_send += period
            if now - self.next_send > 2 * period:  # stalled: do not burst, skip ahead
                self.next_send = now + period
        return self.next_send

    def _gaps(self, r: CallReport) -> None:
        gaps = np.diff(np.asarray(self.arrivals)) * 1000.0
        if len(gaps):
            jitter = np.abs(gaps - 20.0)
            r.jitter_ms = jitter.tolist()
            r.jitter_p50_ms = float(np.percentile(jitter, 50))
            r.jitter_p99_ms = float(np.percentile(jitter, 99))
            r.max_gap_ms = float(gaps.max())
            r.gaps_over_40ms = int((gaps > 40.0).sum())

    def _paused(self, at: float) -> bool:
        return any(start <= at < end for start, end in self.plan.pauses)

    def analyse(self, out_dir: Path | None, transit_offset_s: float) -> None:
        self._decode()
        r = self.report
        if self.lean:
            r.arrivals = array("d", self.arrivals)
            r.frames_received = len(self.arrivals)
            r.bytes_received = 320 * len(self.arrivals)
            self._gaps(r)
            return
        r.frames_received = len(self.frames)
        r.bytes_received = sum(len(f) for f in self.frames)
        if not self.arrivals:
            return
        r.first_frame_s = self.arrivals[0] - self.started
        levels = frame_levels(self.frames).tolist()
        r.heard = [(t - self.started, lvl) for t, lvl in zip(self.arrivals, levels, strict=True)]
        for t, lvl in r.heard:
            if lvl >= SILENT_LEVEL:
                r.first_audio_s = t
                break
        r.arrivals = array("d", self.arrivals)
        self._gaps(r)
        if self.plan.tagged:
            for t, f in zip(self.arrivals, self.frames, strict=True):
                seq = read_tag(f, self.plan.index)
                if seq is not None and seq in self.send_times:
                    r.transit_ms.append((t - self.send_times[seq] - transit_offset_s) * 1000.0)
        if out_dir is not None:
            path = out_dir / f"call-{self.plan.index:03d}-{self.plan.call_id}.wav"
            write_wav(path, b"".join(self.frames))
            r.wav = str(path)


async def run_simulation(
    host: str,
    port: int,
    *,
    calls: int = 1,
    seconds: float = 5.0,
    audio: npt.NDArray[np.int16] | None = None,
    plans: list[CallPlan] | None = None,
    out_dir: str | Path | None = None,
    ramp_s: float = 0.0,
    tagged: bool = False,
    transit_offset_ms: float = 0.0,
    connect_timeout: float = 2.0,
    on_progress: Callable[[int, int, int], None] | None = None,
    lateness: SimLateness | None = None,
) -> SimulationReport:
    """Place ``calls`` concurrent calls (or the given ``plans``) and report on each.

    ``ramp_s`` spreads the call starts; ``transit_offset_ms`` is subtracted from
    measured transit (for example the echo backend's configured delay).
    ``on_progress(connected, ended, total)`` is called as calls connect and end.
    ``lateness`` (optional) receives the simulator's own send-loop and event-loop
    lateness (see :class:`SimLateness`).
    """
    if plans is None:
        plans = []
        for i in range(calls):
            samples = audio if audio is not None else speech_like(seconds + 1.0, seed=i)
            if tagged:
                samples = tag_frames(samples, i)
            plans.append(CallPlan(seconds=seconds, audio=samples, index=i, tagged=tagged))
    out_path = Path(out_dir) if out_dir else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    reports = [CallReport(call_id=p.call_id) for p in plans]
    sims: list[_SimCall | None] = [None] * len(plans)
    heap: list[tuple[float, int, _SimCall]] = []
    wake = asyncio.Event()
    counts = [0, 0]  # connected, ended
    offset_s = transit_offset_ms / 1000.0
    sends = lateness.send if lateness is not None else None

    def progress(connected: int = 0, ended: int = 0) -> None:
        counts[0] += connected
        counts[1] += ended
        if on_progress is not None:
            on_progress(counts[0], counts[1], len(plans))

    async def _connect(plan: CallPlan, report: CallReport) -> _SimCall:
        sock = await connect_stamped(host, port)
        try:
            _, proto = await loop.create_connection(
                lambda: _SimCall(plan, report, offset_s, sock), sock=sock)
        except BaseException:
            sock.close()
            raise
        return proto

    async def connect(i: int, plan: CallPlan) -> None:
        if ramp_s and len(plans) > 1:
            await asyncio.sleep(ramp_s * i / (len(plans) - 1))
        try:
            proto = await asyncio.wait_for(_connect(plan, reports[i]), connect_timeout)
        except (OSError, TimeoutError) as exc:
            reports[i].ended_by = "error"
            reports[i].error = f"connect failed: {exc!r}"
            progress(ended=1)
            return
        sims[i] = proto
        progress(connected=1)
        proto.closed.add_done_callback(lambda _f: progress(ended=1))
        heapq.heappush(heap, (time.monotonic(), i, proto))
        wake.set()

    connecting = [loop.create_task(connect(i, p)) for i, p in enumerate(plans)]

    async def ticker() -> None:
        # Each call keeps its own 20 ms (or 30 ms) schedule from its own start, so the
        # phases are spread like independent Asterisk channels. Calls due within the
        # same millisecond are sent in one wake-up.
        while True:
            if not heap:
                wake.clear()
                await wake.wait()
                continue
            delay = heap[0][0] - time.monotonic()
            if delay > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                continue
            now = time.monotonic()
            if sends is not None:
                sends.append(now)
                sends.append(now - heap[0][0])
            while heap and heap[0][0] <= now + BATCH_S:
                _, i, sim = heapq.heappop(heap)
                nxt = sim.tick(now, now + BATCH_S)
                if nxt != float("inf"):
                    heapq.heappush(heap, (nxt, i, sim))

    tick_task = loop.create_task(ticker())
    probe: list[asyncio.TimerHandle] = []
    if lateness is not None:
        probes = lateness.loop

        def probe_loop(due: float) -> None:
            now = loop.time()
            probes.append(time.monotonic())
            probes.append(now - due)
            probe[:] = [loop.call_at(now + LOOP_PROBE_S, probe_loop, now + LOOP_PROBE_S)]

        first = loop.time() + LOOP_PROBE_S
        probe.append(loop.call_at(first, probe_loop, first))
    try:
        await asyncio.gather(*connecting)
        live = [s for s in sims if s is not None]
        # Every call ends by itself: its own duration, a gateway hangup, or a close.
        limit = max(p.seconds for p in plans) + ramp_s + INACTIVITY_S + 5.0
        if live:
            await asyncio.wait([s.closed for s in live], timeout=limit)
    except BaseException:  # cancelled (or failed): leave no connection or socket behind
        for task in connecting:
            task.cancel()
        for sim in sims:
            if sim is not None and sim.transport is not None:
                sim.transport.abort()
        raise
    finally:
        for handle in probe:
            handle.cancel()
        tick_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick_task
    for sim in sims:
        if sim is None:
            continue
        if not sim.closed.done():
            sim._finish("error", "call did not end in time")
            if sim.transport is not None:
                sim.transport.abort()
        sim.analyse(out_path, transit_offset_ms / 1000.0)
    return SimulationReport(calls=reports, seconds=max((p.seconds for p in plans), default=0))


def format_report(report: SimulationReport) -> str:
    """A human-readable table of a simulation."""
    s = report.summary()
    lines = [
        f"calls: {s['calls']}  ok: {s['ok']}  failed: {s['failed']}  ended_by: {s['ended_by']}",
        f"frames sent/received: {s['frames_sent']}/{s['frames_received']}  "
        f"gaps > 40 ms: {s['gaps_over_40ms']}  max gap: {_fmt(s['max_gap_ms'])} ms",
        f"inter-arrival jitter p50: {_fmt(s['jitter_p50_ms'])} ms  "
        f"p99 (worst call): {_fmt(s['jitter_p99_ms'])} ms",
        f"time to first audio p50: {_fmt(s['first_audio_p50_s'], 3)} s  "
        f"max: {_fmt(s['first_audio_max_s'], 3)} s",
    ]
    if s["transit_p50_ms"] is not None:
        lines.append(
            f"frame transit p50: {_fmt(s['transit_p50_ms'])} ms  "
            f"p99: {_fmt(s['transit_p99_ms'])} ms"
        )
    lines.append("")
    lines.append(f"{'#':>3} {'call id':36} {'ended by':15} {'rx':>5} {'1st audio':>9} "
                 f"{'jit p99':>7} {'gaps':>4}")
    for i, c in enumerate(report.calls[:20]):
        lines.append(
            f"{i:>3} {c.call_id:36} {c.ended_by:15} {c.frames_received:>5} "
            f"{_fmt(c.first_audio_s, 3):>9} {_fmt(c.jitter_p99_ms):>7} {c.gaps_over_40ms:>4}"
        )
    if len(report.calls) > 20:
        lines.append(f"... {len(report.calls) - 20} more")
    for e in s["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


__all__ = ["FRAME_SAMPLES", "RATE", "CallPlan", "CallReport", "SimLateness",
           "SimulationReport", "format_report", "run_simulation", "speech_like"]
