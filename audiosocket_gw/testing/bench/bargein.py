"""Barge-in benchmark: gateway + ``openai`` backend + local Realtime bot, as a caller hears it.

Why: the barge-in promise ("the bot stops talking as soon as I speak") can only be
measured from the caller's side: the time from the first loud frame the caller sends
to the first silent frame the gateway sends back. This module starts
:class:`~audiosocket_gw.testing.localbot.LocalRealtimeBot` (a long reply, buffered
faster than real time as OpenAI sends it) and a real gateway child process
(``--backend openai``, ``AIGW_OPENAI_URL`` pointing at the bot, an agent with a
greeting), then places simulated calls whose caller stays silent while the bot greets,
then speaks loudly mid-greeting, once, and stops (the bot then replies). Per call it
records:

* time to first bot audio (connect -> first non-silent frame received);
* barge-in cut (first loud frame sent -> first silent frame received after it);
* time-to-first-audio overhead of the gateway: the bot records (``BotResponse``) when it
  handed the greeting's first ``response.output_audio.delta`` to its socket; the caller
  records when the first non-silent frame arrived. Both are ``time.monotonic()``, which
  is system-wide, so the gateway child process in between is measured exactly;
* response latency as heard: caller speech stop (send time of the first frame with no
  speech in it) -> first non-silent frame of the reply, split at two instants the bot
  records: when the caller's trailing silence reached it and when it sent the reply's
  first delta. Between them is the bot's share (its VAD's ``silence_ms`` wait and its
  processing); before is the gateway's inbound share (AudioSocket read, append
  batching, WebSocket send), after is its outbound share (delta decode, playout, pacer).

Calls start ``stagger_s`` apart so each bot session can be paired with its call by time
(a session opens after its call connected and before the next one did); the default is
not a multiple of 20 ms, so the calls also sample the phase of the gateway's single
pacer clock, which a first delta waits for (0 to 20 ms) before it is written.

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

from ... import audiosocket as asp
from ...dsp.vad import SILENCE_LEVEL, frame_level

__all__ = [
    "HeardCall",
    "SimCaller",
    "caller_audio",
    "measure_barge_in",
    "pair_sessions",
    "percentile",
]

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

    def first_audio_at(self, after: float = 0.0) -> float | None:
        """Monotonic arrival time of the first non-silent frame received at/after ``after``."""
        for at, frame in self.frames:
            if at >= after and frame_level(frame) >= SILENCE_LEVEL:
                return at
        return None

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

    def stop_time(self, seconds: float) -> float | None:
        """Monotonic send time of the first frame holding no sample before ``seconds``.

        With speech ending at ``seconds`` this is when the caller's silence began to go
        out (None when the call ended before that frame was sent).
        """
        index = math.ceil(seconds / FRAME_S - 1e-9)
        return self.report.sent[index] if index < len(self.report.sent) else None

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


def _r(v: float | None, scale: float = 1000.0) -> float | None:
    return None if v is None else round(v * scale, 1)


def pair_sessions(call_starts: list[float], session_starts: list[float]) -> list[int | None]:
    """For each call (connect times, ascending), the index of its bot session, or None.

    A call's session is the only one opened in ``[its start, the next call's start)``:
    the gateway connects to the bot only after the call's UUID frame, and calls start far
    enough apart (``stagger_s``) that it has normally done so before the next one. When
    a loaded machine delays that and some window holds no session or several, but there
    is one session per call and the ``k``-th opened after the ``k``-th call connected,
    calls and sessions are paired in order (the gateway serves calls in arrival order);
    otherwise the unclear calls get None rather than a wrong pair.
    """
    out: list[int | None] = []
    for i, start in enumerate(call_starts):
        end = call_starts[i + 1] if i + 1 < len(call_starts) else math.inf
        inside = [j for j, t in enumerate(session_starts) if start <= t < end]
        out.append(inside[0] if len(inside) == 1 else None)
    if None in out and len(session_starts) == len(call_starts):
        order = sorted(range(len(session_starts)), key=session_starts.__getitem__)
        if all(session_starts[j] >= start for j, start in zip(order, call_starts, strict=True)):
            return list(order)
    return out


def _percentiles(name: str, values: list[float], *ps: int) -> dict[str, float | None]:
    return {f"{name}_p{p}_ms": _r(percentile(values, p)) for p in ps}


async def measure_barge_in(
    calls: int = 10,
    seconds: float = 6.0,
    *,
    server_vad: bool = True,
    stagger_s: float = 0.1073,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the figures as a dict.

    ``server_vad=False`` puts the bot's speech detection out of reach, so only the
    gateway's local VAD can cut (its onset time is then part of the figure); the bot then
    never hears the caller's turn end either, so the response figures are None.

    Keys: ``calls``, ``ok`` (calls that heard a greeting and a cut), ``paired`` (calls
    matched to their bot session), ``replies`` (calls that heard a reply),
    ``cut_p50_ms``/``cut_p95_ms``/``cut_p99_ms``/``cut_max_ms`` (speech onset -> first
    silent frame), ``first_audio_p50_ms``/``first_audio_p99_ms`` (time to greeting),
    ``ttfa_overhead_p50_ms``/``ttfa_overhead_p95_ms``/``ttfa_overhead_max_ms`` (bot's
    first greeting delta sent -> caller's first non-silent frame; target <= 20 ms p95),
    ``response_p50_ms``/``response_p95_ms`` (caller speech stop -> first reply frame
    heard), ``response_bot_p50_ms``/``response_bot_p95_ms`` (the bot's share: trailing
    silence received -> first reply delta sent; about ``bot_silence_ms``),
    ``response_gateway_p50_ms``/``response_gateway_p95_ms`` (per call, the rest) and its
    two parts ``response_gateway_in_p50_ms`` (caller speech stop -> the bot received the
    silence) and ``response_gateway_out_p50_ms`` (reply delta sent -> heard),
    ``truncates``/``cancels`` (what the bot received),
    ``barge_ins_by_source``, ``cpu_ms_per_call_s`` (gateway CPU ms per second of call).
    """
    from ..localbot import BotResponse, LocalRealtimeBot
    from ..proc import GatewayProcess, cpu_seconds

    if calls < 1 or seconds <= 0 or stagger_s < 0:
        raise ValueError("calls must be >= 1, seconds > 0 and stagger_s >= 0")
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

                async def place(index: int, caller: SimCaller) -> HeardCall:
                    await asyncio.sleep(index * stagger_s)
                    return await caller.run()

                cpu0 = cpu_seconds(gw.pid)
                heard = await asyncio.gather(*(place(i, c) for i, (c, _) in enumerate(callers)))
                cpu1 = cpu_seconds(gw.pid)
                metrics = await _fetch_metrics(*gw.http)
    finally:
        await bot.stop()
    sessions = sorted(bot.sessions, key=lambda s: s.started_at)
    pairs = pair_sessions([r.started for r in heard], [s.started_at for s in sessions])
    cuts: list[float] = []
    firsts: list[float] = []
    overheads: list[float] = []
    responses: list[float] = []
    bot_parts: list[float] = []
    gateway_parts: list[float] = []
    gateway_in: list[float] = []
    gateway_out: list[float] = []
    ok = 0
    for (caller, at), report, pair in zip(callers, heard, pairs, strict=True):
        first = report.first_audio_s()
        if first is not None:
            firsts.append(first)
        cut = None
        if len(report.sent) > int(at / FRAME_S):
            cut = report.cut_after(caller.onset(at))
        if cut is not None:
            cuts.append(cut)
        ok += first is not None and cut is not None
        if pair is None:
            continue
        log = list(sessions[pair].response_log)
        greeting = next((r for r in log if r.trigger == "response.create"), None)
        first_at = report.first_audio_at()
        if greeting is not None and greeting.first_delta_sent_at is not None \
                and first_at is not None:
            overheads.append(first_at - greeting.first_delta_sent_at)
        stop = caller.stop_time(at + speak_for)
        if stop is None or cut is None:
            continue
        reply: BotResponse | None = next(
            (r for r in log if r.trigger == "turn" and (r.turn_ended_at or 0.0) >= stop), None)
        heard_at = report.first_audio_at(after=stop)
        if reply is None or reply.speech_end_seen_at is None \
                or reply.first_delta_sent_at is None or heard_at is None:
            continue
        inbound = reply.speech_end_seen_at - stop
        outbound = heard_at - reply.first_delta_sent_at
        responses.append(heard_at - stop)
        bot_parts.append(reply.first_delta_sent_at - reply.speech_end_seen_at)
        gateway_parts.append(inbound + outbound)
        gateway_in.append(inbound)
        gateway_out.append(outbound)
    sources = {
        name.split('source="', 1)[1].split('"', 1)[0]: int(v)
        for name, v in metrics.items()
        if name.startswith("aigw_barge_ins_total{") and 'source="' in name
    }
    call_s = sum(len(r.sent) for r in heard) * FRAME_S
    cpu = None
    if cpu0 is not None and cpu1 is not None and call_s > 0:
        cpu = (cpu1 - cpu0) / call_s
    return {
        "calls": calls,
        "seconds": seconds,
        "ok": ok,
        "paired": sum(p is not None for p in pairs),
        "replies": len(responses),
        **_percentiles("cut", cuts, 50, 95, 99),
        "cut_max_ms": _r(max(cuts, default=None)),
        **_percentiles("first_audio", firsts, 50, 99),
        **_percentiles("ttfa_overhead", overheads, 50, 95),
        "ttfa_overhead_max_ms": _r(max(overheads, default=None)),
        **_percentiles("response", responses, 50, 95),
        **_percentiles("response_bot", bot_parts, 50, 95),
        **_percentiles("response_gateway", gateway_parts, 50, 95),
        **_percentiles("response_gateway_in", gateway_in, 50),
        **_percentiles("response_gateway_out", gateway_out, 50),
        "bot_silence_ms": bot.silence_ms,
        "truncates": sum(len(s.truncates) for s in bot.sessions),
        "cancels": sum(len(s.cancels) for s in bot.sessions),
        "barge_ins_by_source": sources,
        "cpu_ms_per_call_s": _r(cpu),
    }


def main() -> None:
    """``python -m audiosocket_gw.testing.bench.bargein [CALLS [SECONDS]]``: print the figures.

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
