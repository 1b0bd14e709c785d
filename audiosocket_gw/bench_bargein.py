"""Barge-in benchmark: gateway + ``openai`` backend + local Realtime bot, as a caller hears it.

Why: the barge-in promise ("the bot stops talking as soon as I speak") can only be
measured from the caller's side: the time from the first loud frame the caller sends
to the first silent frame the gateway sends back. This module starts
:class:`~audiosocket_gw.realtime.localbot.LocalRealtimeBot` (a long reply, buffered
faster than real time as OpenAI sends it) and a real gateway child process
(``--backend openai``, ``AIGW_OPENAI_URL`` pointing at the bot, an agent with a
greeting), then places simulated calls whose caller stays silent while the bot greets,
then speaks loudly mid-greeting. Per call it records:

* time to first bot audio (connect -> first non-silent frame received);
* barge-in cut (first loud frame sent -> first silent frame received after it).

:class:`SimCaller` is a minimal Asterisk stand-in (UUID frame, 320-byte frames on an
absolute 20 ms schedule, close on hangup) that keeps every received frame with its
arrival time; the tests use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import audiosocket as asp
from .dsp.vad import SILENCE_LEVEL, frame_level

__all__ = ["HeardCall", "SimCaller", "caller_audio", "measure_barge_in", "percentile"]

FRAME_BYTES: Final = 320
FRAME_S: Final = 0.02


def caller_audio(
    seconds: float, speech: list[tuple[float, float]], *, amplitude: float = 20000.0
) -> npt.NDArray[np.int16]:
    """8 kHz caller audio: silence, with a loud voiced tone in each (start, end) span."""
    n = int(round(seconds * 8000))
    t = np.arange(n) / 8000.0
    out = np.zeros(n, dtype=np.float64)
    for start, end in speech:
        span = (t >= start) & (t < end)
        tone = (np.sin(2 * math.pi * 220 * t) + 0.4 * np.sin(2 * math.pi * 440 * t)) / 1.4
        out[span] = amplitude * tone[span]
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


@dataclass
class HeardCall:
    """What one simulated caller sent and heard."""

    call_id: str
    started: float = 0.0  # monotonic time of the connect
    frames: list[tuple[float, bytes]] = field(default_factory=list, repr=False)
    sent: list[float] = field(default_factory=list, repr=False)  # send time of frame n
    ended_by: str = "pending"  # simulator | gateway-hangup | gateway-close | error

    def first_audio_s(self) -> float | None:
        """Seconds from connect to the first non-silent frame received."""
        for at, frame in self.frames:
            if frame_level(frame) >= SILENCE_LEVEL:
                return at - self.started
        return None

    def audio_frames_before(self, at: float) -> int:
        """Non-silent frames received before monotonic time ``at``."""
        return sum(1 for t, f in self.frames if t < at and frame_level(f) >= SILENCE_LEVEL)

    def cut_after(self, onset: float) -> float | None:
        """Seconds from ``onset`` to the first silent frame received after it.

        None when no bot audio was arriving at ``onset`` (nothing to cut).
        """
        before = [f for t, f in self.frames if t < onset]
        if not before or frame_level(before[-1]) < SILENCE_LEVEL:
            return None
        for t, f in self.frames[len(before):]:
            if frame_level(f) < SILENCE_LEVEL:
                return t - onset
        return None

    def heard_ms_until_cut(self, onset: float) -> int:
        """Bot audio (ms) heard from the first bot frame to the cut that followed ``onset``."""
        frames = [(t, frame_level(f) >= SILENCE_LEVEL) for t, f in self.frames]
        start = next((i for i, (_, loud) in enumerate(frames) if loud), None)
        if start is None:
            return 0
        n = 0
        for t, loud in frames[start:]:
            if not loud and t >= onset:
                break
            n += loud
        return n * 20


class SimCaller:
    """One Asterisk-like AudioSocket call that keeps received frames with arrival times."""

    def __init__(self, host: str, port: int, audio: npt.NDArray[np.int16], *,
                 call_id: str | None = None) -> None:
        self.host = host
        self.port = port
        self.pcm = audio.astype("<i2").tobytes()
        self.report = HeardCall(call_id=call_id or str(uuid.uuid4()))

    def onset(self, seconds: float) -> float:
        """Monotonic send time of the frame holding the sample at ``seconds``."""
        index = int(seconds / FRAME_S + 1e-9)
        return self.report.sent[index]

    async def run(self, limit_s: float | None = None) -> HeardCall:
        """Place the call; returns when the audio is sent (then hangs up) or it ended."""
        report = self.report
        duration = len(self.pcm) / 16000
        limit = limit_s if limit_s is not None else duration + 5.0
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), 5.0)
        except (OSError, TimeoutError):
            report.ended_by = "error"
            return report
        report.started = time.monotonic()
        writer.write(asp.encode_uuid(report.call_id))
        reading = asyncio.get_running_loop().create_task(self._read(reader))
        try:
            async with asyncio.timeout(limit):
                await self._send(writer, reading)
        except TimeoutError:
            report.ended_by = "error"
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        return report

    async def _send(self, writer: asyncio.StreamWriter, reading: asyncio.Task[None]) -> None:
        report, pcm = self.report, self.pcm
        loop = asyncio.get_running_loop()
        n_frames = len(pcm) // FRAME_BYTES
        start = loop.time()
        for n in range(n_frames):
            delay = start + n * FRAME_S - loop.time()
            if delay > 0:
                done, _ = await asyncio.wait({reading}, timeout=delay)
                if done:
                    return
            elif reading.done():
                return
            writer.write(asp.encode_audio(pcm[n * FRAME_BYTES:(n + 1) * FRAME_BYTES]))
            report.sent.append(time.monotonic())
        report.ended_by = "simulator"

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = asp.Decoder(require_uuid_first=False)
        report = self.report
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                if report.ended_by == "pending":
                    report.ended_by = "gateway-close"
                return
            now = time.monotonic()
            decoder.feed(data)
            for ev in decoder.events():
                if isinstance(ev, asp.Audio):
                    report.frames.append((now, ev.data))
                elif isinstance(ev, asp.Hangup):
                    if report.ended_by == "pending":
                        report.ended_by = "gateway-hangup"
                    return


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile of ``values`` (None when empty)."""
    return float(np.percentile(np.asarray(values), p)) if values else None


_AGENT_TOML: Final = """\
default_agent = "bench"
[tenants.bench]
[agents.bench]
tenant = "bench"
backend = "openai"
greeting = "Hello, thank you for calling the barge-in benchmark."
"""


async def _fetch_metrics(host: str, port: int) -> dict[str, float]:
    """Plain-text Prometheus scrape of the gateway (name{labels} -> value)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    body = (await asyncio.wait_for(reader.read(), 5.0)).decode("utf-8", "replace")
    writer.close()
    out: dict[str, float] = {}
    for line in body.split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _r(v: float | None, scale: float = 1000.0) -> float | None:
    return None if v is None else round(v * scale, 1)


async def measure_barge_in(
    calls: int = 10, seconds: float = 6.0, *, server_vad: bool = True
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the figures as a dict.

    ``server_vad=False`` puts the bot's speech detection out of reach, so only the
    gateway's local VAD can cut (its onset time is then part of the figure).

    Keys: ``calls``, ``ok`` (calls that heard a greeting and a cut),
    ``cut_p50_ms``/``cut_p99_ms``/``cut_max_ms`` (speech onset -> first silent frame),
    ``first_audio_p50_ms``/``first_audio_p99_ms`` (time to greeting),
    ``truncates``/``cancels`` (what the bot received), ``barge_ins_by_source``,
    ``cpu_ms_per_call_s`` (gateway CPU per call-second with this backend).
    """
    from .proc import GatewayProcess
    from .realtime.localbot import LocalRealtimeBot

    speak_at = min(2.0, seconds / 3)
    speak_for = min(1.0, seconds / 6)
    bot = LocalRealtimeBot(reply_ms=int(seconds * 1000) + 2000, send_realtime=False,
                           silence_ms=400, vad_threshold=600.0 if server_vad else 1e9)
    await bot.start()
    try:
        with tempfile.TemporaryDirectory(prefix="aigw-bargein-") as tmp:
            cfg = Path(tmp) / "agents.toml"
            cfg.write_text(_AGENT_TOML)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("AIGW_") and k != "OPENAI_API_KEY"}
            env["AIGW_OPENAI_URL"] = f"ws://127.0.0.1:{bot.port}/v1/realtime"
            env["AIGW_OPENAI_MODEL"] = "local-bot"
            env["AIGW_LOG_LEVEL"] = "warning"
            async with GatewayProcess(
                "--backend", "openai", "--allow-unregistered", "--config", str(cfg),
                "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0", env=env,
            ) as gw:
                host, port = gw.audiosocket
                callers = []
                for i in range(calls):
                    # Spread the onsets over a frame so they sample the pacer's phase.
                    at = speak_at + (i % 5) * 0.0043
                    audio = caller_audio(seconds, [(at, at + speak_for)])
                    callers.append((SimCaller(host, port, audio), at))
                cpu0, t0 = _cpu_seconds(gw.pid), time.monotonic()
                heard = await asyncio.gather(*(c.run() for c, _ in callers))
                cpu1, t1 = _cpu_seconds(gw.pid), time.monotonic()
                metrics = await _fetch_metrics(*gw.http)
    finally:
        await bot.stop()
    cuts: list[float] = []
    firsts: list[float] = []
    ok = 0
    for (caller, at), report in zip(callers, heard, strict=True):
        first = report.first_audio_s()
        if first is not None:
            firsts.append(first)
        cut = None
        if len(report.sent) > int(at / FRAME_S):
            cut = report.cut_after(caller.onset(at))
        if cut is not None:
            cuts.append(cut)
        ok += first is not None and cut is not None
    sources = {
        name.split('source="', 1)[1].split('"', 1)[0]: int(v)
        for name, v in metrics.items()
        if name.startswith("aigw_barge_ins_total{") and 'source="' in name
    }
    cpu = None
    if cpu0 is not None and cpu1 is not None and calls:
        cpu = (cpu1 - cpu0) / ((t1 - t0) * calls)
    return {
        "calls": calls,
        "seconds": seconds,
        "ok": ok,
        "cut_p50_ms": _r(percentile(cuts, 50)),
        "cut_p99_ms": _r(percentile(cuts, 99)),
        "cut_max_ms": _r(max(cuts, default=None)),
        "first_audio_p50_ms": _r(percentile(firsts, 50)),
        "first_audio_p99_ms": _r(percentile(firsts, 99)),
        "truncates": sum(len(s.truncates) for s in bot.sessions),
        "cancels": sum(len(s.cancels) for s in bot.sessions),
        "barge_ins_by_source": sources,
        "cpu_ms_per_call_s": _r(cpu),
    }


def main() -> None:
    """``python -m audiosocket_gw.bench_bargein [CALLS [SECONDS]]``: print the figures.

    Two runs: server VAD and local VAD both active (whichever cuts first), then the
    gateway's local VAD alone.
    """
    import json
    import sys

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
    for server_vad in (True, False):
        figures = asyncio.run(measure_barge_in(calls, seconds, server_vad=server_vad))
        print(json.dumps({"server_vad": server_vad, **figures}))


if __name__ == "__main__":
    main()
