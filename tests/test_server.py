"""The AudioSocket server over real TCP: calls, bad input, slow peers, shutdown."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import aiohttp
import numpy as np
import pytest

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.backends.base import Backend, BackendSession, CallControl, CallInfo
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.quality.mos import MosMonitor
from audiosocket_gw.testing.simulator.audio import speech_like
from audiosocket_gw.testing.simulator.pbx import CallPlan, run_simulation

from .helpers import GAP_MS, MS, RawPeer, make_config, running_gateway, until


def calls_ended(gw: Gateway, outcome: str, backend: str = "echo") -> float:
    return counter(gw, "aigw_calls_total", backend=backend, tenant="default", outcome=outcome)


def counter(gw: Gateway, name: str, **labels: str) -> float:
    value = gw.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def healthy_call(gw: Gateway, seconds: float = 0.6) -> Any:
    return await run_simulation(*gw.audiosocket.address, calls=1, seconds=seconds)


def assert_healthy(report: Any) -> None:
    c = report.calls[0]
    assert c.ok, c
    assert c.max_gap_ms is not None and c.max_gap_ms < GAP_MS, c
    assert c.frames_received >= 20


async def test_echo_call_returns_the_callers_audio_exactly() -> None:
    async with running_gateway(echo_delay_ms=20) as gw:
        report = await run_simulation(
            *gw.audiosocket.address, calls=2, seconds=1.0, tagged=True, transit_offset_ms=20
        )
        for c in report.calls:
            assert c.ok, c
            assert 45 <= c.frames_received <= 52
            assert c.max_gap_ms is not None and c.max_gap_ms < GAP_MS
            # every echoed frame matched to the frame sent, in order
            assert len(c.transit_ms) >= c.frames_sent - 3
        s = report.summary()
        assert s["transit_p50_ms"] is not None and -1.0 <= s["transit_p50_ms"] <= 25.0
        assert calls_ended(gw, "completed") == 2
        assert counter(gw, "aigw_frames_received_total") == sum(c.frames_sent for c in report.calls)
        assert counter(gw, "aigw_active_calls", backend="echo") == 0


async def test_echo_caller_pauses_are_not_underruns_and_outbound_mos_holds() -> None:
    """A perfect loopback call whose caller pauses (DTX: no frames for a while, twice,
    in 20 and 30 ms frames). The echo bot is idle during the pauses, not underrunning:
    no underrun is counted and the gateway-only outbound MOS stays at its ceiling.
    (The echo delay is the jitter cushion: frames late by more than it inside a talk
    spurt would be real underruns, which a loaded test machine must not produce.)"""
    async with running_gateway(echo_delay_ms=round(100_000 * MS)) as gw:
        plans = [CallPlan(seconds=2.4, audio=speech_like(3.0), frame_ms=frame_ms,
                          pauses=[(0.4, 1.0), (1.4, 1.9)])
                 for frame_ms in (20, 30)]
        report = await run_simulation(*gw.audiosocket.address, plans=plans, out_dir=None)
        await gw.component(MosMonitor).drain()
        for plan, c in zip(plans, report.calls, strict=True):
            assert c.ok, c
            assert c.max_gap_ms is not None and c.max_gap_ms < GAP_MS  # silence kept flowing
            q = gw.component(MosMonitor).results[plan.call_id]
            assert q.underruns == 0
            assert q.outbound is not None and q.outbound.source == "gateway"
            assert q.outbound.mean_mos >= 4.0, q
        assert counter(gw, "aigw_playout_underruns_total") == 0


async def test_byte_at_a_time_client() -> None:
    async with running_gateway() as gw:
        peer = await RawPeer.connect(gw.audiosocket.address)
        pcm = np.arange(160, dtype="<i2").tobytes()
        data = asp.encode_uuid(uuid.uuid4()) + asp.encode_audio(pcm) * 3
        for i in range(len(data)):
            peer.send(data[i : i + 1])
            await peer.writer.drain()
        frames = await peer.read_frames(12)
        audio = b"".join(f.data for f in frames if isinstance(f, asp.Audio))
        assert pcm * 3 in audio
        await peer.close()


async def test_30ms_caller_frames_go_out_as_20ms_frames() -> None:
    async with running_gateway(echo_delay_ms=0) as gw:
        plan = CallPlan(seconds=0.6, audio=speech_like(1.0), frame_ms=30)
        report = await run_simulation(*gw.audiosocket.address, plans=[plan])
        c = report.calls[0]
        assert c.ok and c.frames_sent == pytest.approx(20, abs=2)
        assert c.frames_received == pytest.approx(30, abs=3)
        assert c.bytes_received == c.frames_received * 320


async def test_silent_caller_keeps_receiving_frames() -> None:
    """Asterisk sends nothing while the caller is silent; the gateway must keep streaming."""
    async with running_gateway() as gw:
        plan = CallPlan(seconds=0.6, audio=None)
        report = await run_simulation(*gw.audiosocket.address, plans=[plan])
        c = report.calls[0]
        assert c.ok, c
        assert c.frames_sent == 0
        assert c.frames_received >= 25 and c.max_gap_ms is not None and c.max_gap_ms < GAP_MS


BAD_INPUTS = {
    "unknown_kind": (True, bytes.fromhex("420004") + b"abcd", "unknown_kind"),
    "zero_length_audio": (True, bytes.fromhex("100000"), "bad_payload"),
    "oversize": (True, bytes.fromhex("10ffff") + bytes(100), "oversize"),
    "garbage": (False, b"GET / HTTP/1.1\r\n\r\n", "unknown_kind"),
    "audio_before_uuid": (False, asp.encode_audio(bytes(320)), "unexpected_frame"),
    "second_uuid": (True, asp.encode_uuid(uuid.uuid4()), "unexpected_frame"),
    "bad_dtmf": (True, bytes.fromhex("030001") + b"!", "bad_payload"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_ends_only_that_connection(case: str) -> None:
    with_uuid, payload, reason = BAD_INPUTS[case]
    async with running_gateway(max_payload=4096) as gw:
        healthy = asyncio.create_task(healthy_call(gw, seconds=0.8))
        await asyncio.sleep(100 * MS)
        peer = await RawPeer.connect(gw.audiosocket.address)
        if with_uuid:
            peer.send_uuid()
            peer.send(asp.encode_audio(bytes(320)))
        peer.send(payload)
        events = await peer.read_until_closed(within=2)
        # After the UUID the gateway says goodbye properly: 00 00 00 then close.
        assert events and isinstance(events[-1], asp.Hangup)
        assert counter(gw, "aigw_protocol_errors_total", reason=reason) == 1
        assert_healthy(await healthy)
        if with_uuid:
            assert calls_ended(gw, "protocol_error") == 1
        await peer.close()


async def test_abrupt_close_mid_frame_is_a_normal_hangup_for_others() -> None:
    async with running_gateway() as gw:
        healthy = asyncio.create_task(healthy_call(gw))
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid()
        peer.send(bytes.fromhex("100140") + bytes(100))
        await asyncio.sleep(50 * MS)
        peer.writer.transport.abort()
        assert_healthy(await healthy)
        assert counter(gw, "aigw_protocol_errors_total", reason="truncated") == 1
        assert calls_ended(gw, "completed") == 2


async def test_no_uuid_in_time_is_closed() -> None:
    async with running_gateway(uuid_timeout=0.2) as gw:
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send(b"\x01\x00")  # a slowloris: part of a header, then nothing
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        events = await peer.read_until_closed(within=2)
        assert events == []
        assert 0.15 <= loop.time() - t0 < 0.2 + 1300 * MS
        assert counter(gw, "aigw_connections_rejected_total", reason="uuid_timeout") == 1


async def test_connect_then_close_without_data_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """What Asterisk does when AudioSocket() runs on an unanswered channel."""
    async with running_gateway() as gw:
        peer = await RawPeer.connect(gw.audiosocket.address)
        await peer.close()
        await asyncio.sleep(50 * MS)
        assert counter(gw, "aigw_connections_rejected_total", reason="closed_before_uuid") == 1
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


async def test_connection_cap() -> None:
    async with running_gateway(max_connections=2, uuid_timeout=2.0) as gw:
        peers = [await RawPeer.connect(gw.audiosocket.address) for _ in range(2)]
        await asyncio.sleep(50 * MS)
        extra = await RawPeer.connect(gw.audiosocket.address)
        assert await extra.read_until_closed(within=2) == []
        assert counter(gw, "aigw_connections_rejected_total", reason="capacity") == 1
        for p in peers:
            await p.close()


async def test_unregistered_ids_are_refused_unless_allowed() -> None:
    async with running_gateway(allow_unregistered=False) as gw:
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid()
        assert await peer.read_until_closed() == [asp.Hangup()]
        assert counter(gw, "aigw_connections_rejected_total", reason="unregistered") == 1
        # A pre-registered id is accepted.
        cid = str(uuid.uuid4())
        gw.registry.register(CallInfo(call_id=cid, tenant="acme"))
        report = await run_simulation(
            *gw.audiosocket.address,
            plans=[CallPlan(seconds=0.3, audio=speech_like(1), call_id=cid)],
        )
        assert report.calls[0].ok
        # ...once.
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid(cid)
        assert await peer.read_until_closed() == [asp.Hangup()]


async def test_duplicate_live_call_id_is_refused() -> None:
    async with running_gateway() as gw:
        cid = str(uuid.uuid4())
        first = await RawPeer.connect(gw.audiosocket.address)
        first.send_uuid(cid)
        await first.read_frames(2)
        second = await RawPeer.connect(gw.audiosocket.address)
        second.send_uuid(cid)
        assert await second.read_until_closed() == [asp.Hangup()]
        assert counter(gw, "aigw_connections_rejected_total", reason="duplicate") == 1
        assert len(gw.audiosocket.calls) == 1
        await first.close()


async def test_peer_that_stops_reading_is_dropped_without_hurting_others() -> None:
    async with running_gateway(
        socket_sndbuf=4096, write_buffer_limit=4096, write_stall_timeout=0.3
    ) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, gw.audiosocket.address)
        sock.send(asp.encode_uuid(uuid.uuid4()))
        healthy = asyncio.create_task(healthy_call(gw, seconds=2.5))
        for _ in range(100):
            await asyncio.sleep(50 * MS)
            if calls_ended(gw, "slow_peer"):
                break
        assert calls_ended(gw, "slow_peer") == 1
        assert counter(gw, "aigw_frames_dropped_total", reason="slow_peer") > 0
        assert_healthy(await healthy)
        sock.close()


async def _stalled_peer(gw: Gateway) -> socket.socket:
    """A peer that sent its UUID and never reads: the gateway's write buffer fills."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, gw.audiosocket.address)
    sock.send(asp.encode_uuid(uuid.uuid4()))
    return sock


async def _stalled_calls(gw: Gateway, n: int) -> list[socket.socket]:
    """``n`` stalled peers (``_stalled_peer``), once every call's user-space write
    buffer holds data."""
    socks = [await _stalled_peer(gw) for _ in range(n)]
    await until(lambda: len(gw.audiosocket.calls) == n and all(
        c.transport.get_write_buffer_size() for c in gw.audiosocket.calls.values()))
    return socks


@pytest.mark.parametrize("how", ["hangup", "shutdown"])
async def test_ended_call_to_a_peer_that_stopped_reading_is_aborted(how: str) -> None:
    async with running_gateway(
        socket_sndbuf=4096, write_buffer_limit=1 << 20, write_stall_timeout=0.3
    ) as gw:
        socks = await _stalled_calls(gw, 3)
        assert len(gw.audiosocket.connections) == 3
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if how == "hangup":
            for call in list(gw.audiosocket.calls.values()):
                call.hangup("test")
        else:
            await gw.audiosocket.shutdown(grace=0)
        # Before: close() waited for the buffer forever and the connections stayed.
        for _ in range(100):
            if not gw.audiosocket.connections:
                break
            await asyncio.sleep(10 * MS)
        assert not gw.audiosocket.connections
        assert loop.time() - t0 < 0.3 + 1000 * MS
        assert loop.time() - t0 >= 0.25  # the peer got its bounded chance to read
        for sock in socks:
            sock.close()


async def test_graceful_shutdown_lets_calls_finish_then_hangs_up() -> None:
    gw = Gateway(make_config(shutdown_grace=0.3))
    await gw.start()
    addr = gw.audiosocket.address
    short = asyncio.create_task(run_simulation(*addr, calls=1, seconds=0.3))
    long = asyncio.create_task(run_simulation(*addr, calls=1, seconds=5.0))
    await asyncio.sleep(150 * MS)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await gw.shutdown()
    assert loop.time() - t0 < 2.0
    assert (await short).calls[0].ended_by == "simulator"  # finished inside the grace period
    assert (await long).calls[0].ended_by == "gateway-hangup"  # 00 00 00 after the grace
    assert calls_ended(gw, "shutdown") == 1
    with pytest.raises(OSError):
        await asyncio.open_connection(*addr)


class ScriptedBackend(Backend):
    """A real backend implementation driven by the test: records input, can hang up."""

    name = "scripted"

    def __init__(self) -> None:
        self.sessions: list[ScriptedSession] = []

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        s = ScriptedSession(control)
        self.sessions.append(s)
        return s


class ScriptedSession(BackendSession):
    def __init__(self, control: CallControl) -> None:
        self.control = control
        self.audio = bytearray()
        self.dtmf: list[str] = []
        self.marks: list[str] = []
        self.closed: str | None = None

    def on_audio(self, pcm: bytes) -> None:
        self.audio += pcm

    def on_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)
        if digit == "#":
            self.control.hangup("caller-pressed-hash")

    def on_marks(self, names: list[str]) -> None:
        self.marks.extend(names)

    async def close(self, reason: str) -> None:
        self.closed = reason


async def test_dtmf_reaches_backend_and_backend_can_hang_up() -> None:
    backend = ScriptedBackend()
    gw = Gateway(make_config(), backend=backend)
    await gw.start()
    try:
        plan = CallPlan(seconds=3.0, audio=speech_like(4), dtmf=[(0.1, "1"), (0.2, "#")])
        report = await run_simulation(*gw.audiosocket.address, plans=[plan])
        assert report.calls[0].ended_by == "gateway-hangup"
        await asyncio.sleep(20 * MS)
        (s,) = backend.sessions
        assert s.dtmf == ["1", "#"]
        assert s.closed == "caller-pressed-hash"
        assert len(s.audio) >= 320 * 5
    finally:
        await gw.shutdown(grace=0)


async def test_marks_are_echoed_after_their_audio_is_written() -> None:
    backend = ScriptedBackend()
    gw = Gateway(make_config(), backend=backend)
    await gw.start()
    try:
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid()
        await peer.read_frames(1)
        (s,) = backend.sessions
        s.control.mark("immediate")
        s.control.play(b"\x10\x00" * 800, item_id="i1")  # 100 ms
        s.control.mark("after-100ms")
        s.control.end_of_audio()
        await asyncio.sleep(10 * MS)
        assert s.marks == ["immediate"]
        await peer.read_frames(8)
        assert s.marks == ["immediate", "after-100ms"]
        assert s.control.played_ms("i1") == 100
        s.control.play(b"\x10\x00" * 8000)
        s.control.mark("never-played")
        s.control.clear()
        await asyncio.sleep(10 * MS)
        assert s.marks[-1] == "never-played"
        await peer.close()
    finally:
        await gw.shutdown(grace=0)


async def test_metrics_and_health_endpoints() -> None:
    async with running_gateway() as gw:
        await healthy_call(gw, seconds=0.3)
        base = "http://{}:{}".format(*gw.http_address)
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
                body = await r.json()
                assert body["status"] == "ok" and body["active_calls"] == 0
            async with http.get(base + "/metrics") as r:
                text = await r.text()
        for name in ("aigw_active_calls", "aigw_calls_total", "aigw_frames_received_total",
                     "aigw_frames_sent_total", "aigw_pacer_lateness_seconds_bucket",
                     "aigw_playout_underruns_total", "aigw_protocol_errors_total",
                     "aigw_pacer_wait_seconds_total", "aigw_pacer_cpu_stalls_total",
                     "aigw_pacer_cpu_stall_seconds_total"):
            assert name in text, name
        # the pacer waited on the clock before each tick of the call (a spin of up to
        # pacer_spin_ms per tick): counted, not left out of the gateway's CPU
        wait = counter(gw, "aigw_pacer_wait_seconds_total")
        assert 0.0 < wait < 1.0, wait


class TalkingSession(ScriptedSession):
    """Speaks 3 s of tone as soon as the call starts."""

    async def start(self) -> None:
        t = np.arange(8000 * 3) / 8000
        self.control.play((2000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes(), "bot1")
        self.control.end_of_audio()
        self.barged = 0

    def on_barge_in(self) -> None:
        self.barged += 1
        self.played_at_cut = self.control.played_ms("bot1")


class TalkingBackend(ScriptedBackend):
    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        s = TalkingSession(control)
        self.sessions.append(s)
        return s


def caller_audio(silence_s: float, talk_s: float, level: float) -> np.ndarray:
    t = np.arange(int(8000 * talk_s)) / 8000
    talk = (level * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return np.concatenate([np.zeros(int(8000 * silence_s), dtype=np.int16), talk])


@pytest.mark.parametrize(("level", "expect_cut"), [(8000.0, True), (2000.0, False)])
async def test_barge_in_cuts_bot_audio_on_the_next_tick(level: float, expect_cut: bool) -> None:
    """Loud caller speech over the bot cuts it within onset + one tick; the bot's own
    echo (caller audio at the bot's level) does not."""
    backend = TalkingBackend()
    gw = Gateway(make_config(), backend=backend)
    await gw.start()
    try:
        plan = CallPlan(seconds=1.2, audio=caller_audio(0.4, 1.0, level))
        report = await run_simulation(*gw.audiosocket.address, plans=[plan], out_dir=None)
        c = report.calls[0]
        assert c.ok
        (s,) = backend.sessions
        cuts = counter(gw, "aigw_barge_ins_total", backend="scripted", source="local-vad")
        if expect_cut:
            assert s.barged == 1 and cuts == 1
            # about 400 ms of bot audio had been played when the caller started
            assert 300 <= s.played_at_cut <= 600
            cut = gw.metrics.registry.get_sample_value(
                "aigw_barge_in_seconds_sum", {"backend": "scripted"})
            assert cut is not None and 0.05 <= cut <= 200 * MS
        else:
            assert s.barged == 0 and cuts == 0
    finally:
        await gw.shutdown(grace=0)


class AnsweringSession(ScriptedSession):
    """Says something 1 s into the call (after the caller's turn)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tone = (3000 * np.sin(2 * np.pi * 300 * np.arange(2400) / 8000)).astype("<i2")
        loop.call_later(1.0, self.control.play, tone.tobytes())


class AnsweringBackend(ScriptedBackend):
    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        s = AnsweringSession(control)
        self.sessions.append(s)
        return s


async def test_response_latency_is_timed_from_the_end_of_the_callers_turn() -> None:
    gw = Gateway(make_config(), backend=AnsweringBackend())
    await gw.start()
    try:
        # The caller talks for 0.3 s; the bot answers at 1.0 s: about 0.7 s of latency.
        plan = CallPlan(seconds=1.4, audio=np.concatenate(
            [caller_audio(0.0, 0.3, 8000.0), np.zeros(8000 * 2, dtype=np.int16)]))
        report = await run_simulation(*gw.audiosocket.address, plans=[plan])
        assert report.calls[0].ok
        reg = gw.metrics.registry
        labels = {"backend": "scripted"}
        assert reg.get_sample_value("aigw_response_latency_seconds_count", labels) == 1
        latency = reg.get_sample_value("aigw_response_latency_seconds_sum", labels)
        assert latency is not None and 0.5 <= latency <= 950 * MS
    finally:
        await gw.shutdown(grace=0)


async def test_floods_log_one_line_per_interval_with_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    backend = ScriptedBackend()
    gw = Gateway(make_config(max_connections=2, uuid_timeout=2.0, playout_max_seconds=0.1),
                 backend=backend)
    await gw.start()
    try:
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid()
        await peer.read_frames(2)
        (s,) = backend.sessions
        for _ in range(500):  # a backend far ahead of real time: the buffer is full
            s.control.play(bytes(3200))
        (call,) = gw.audiosocket.calls.values()
        assert getattr(call, "playout_drops", 500) > 400  # counted, not logged, each
        # A connection storm beyond the cap.
        other = await RawPeer.connect(gw.audiosocket.address)
        await asyncio.sleep(50 * MS)
        storm = [await RawPeer.connect(gw.audiosocket.address) for _ in range(40)]
        for p in storm:
            await p.read_until_closed(within=2)
        assert counter(gw, "aigw_connections_rejected_total", reason="capacity") == 40
        await other.close()
        await peer.close()
    finally:
        await gw.shutdown(grace=0)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([m for m in lines if "playout buffer full" in m]) == 1
    assert len([m for m in lines if "rejected connection" in m]) == 1


async def test_one_peer_cannot_hold_every_connection() -> None:
    async with running_gateway(max_connections=10, max_connections_per_peer=3,
                               uuid_timeout=2.0) as gw:
        # One PBX (127.0.0.1) fills its share; a second one (127.0.0.2) still gets in.
        mine = [await RawPeer.connect(gw.audiosocket.address) for _ in range(3)]
        await asyncio.sleep(50 * MS)
        extra = await RawPeer.connect(gw.audiosocket.address)
        assert await extra.read_until_closed(within=2) == []
        assert counter(gw, "aigw_connections_rejected_total", reason="peer_capacity") == 1
        r, w = await asyncio.open_connection(*gw.audiosocket.address,
                                             local_addr=("127.0.0.2", 0))
        other = RawPeer(r, w)
        other.send_uuid()
        assert len(await other.read_frames(2)) == 2
        # A slot is given back when a connection ends.
        await mine[0].close()
        await asyncio.sleep(50 * MS)
        again = await RawPeer.connect(gw.audiosocket.address)
        again.send_uuid()
        assert len(await again.read_frames(2)) == 2
        assert counter(gw, "aigw_connections_rejected_total", reason="peer_capacity") == 1
        for p in (*mine[1:], other, again):
            await p.close()


async def test_a_cancelled_simulation_closes_its_calls() -> None:
    """The test tool's own hygiene: cancelling ``run_simulation`` (a test that gives up
    on it, or the AMI simulator's channel ending) closes its connections at once; they
    stayed open until the garbage collector found them, and its unclosed-socket warning
    then failed whichever test happened to be running."""
    async with running_gateway() as gw:
        sim = asyncio.create_task(run_simulation(*gw.audiosocket.address, calls=2,
                                                 seconds=5.0))
        await until(lambda: len(gw.audiosocket.calls) == 2)
        sim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sim
        await until(lambda: not gw.audiosocket.calls, within=1.0)


async def test_a_burst_a_split_frame_and_dtmf_arrive_whole_and_in_order() -> None:
    """A caller that sends many frames at once (a PBX catching up after a stall), then
    a frame split across two segments, DTMF and the hang-up key: the backend gets
    every sample in order and both digits."""
    backend = ScriptedBackend()
    gw = Gateway(make_config(), backend=backend)
    await gw.start()
    try:
        peer = await RawPeer.connect(gw.audiosocket.address)
        cid = peer.send_uuid()
        await until(lambda: cid in gw.audiosocket.calls)
        (s,) = backend.sessions
        pcm = [np.full(160, i, dtype="<i2").tobytes() for i in range(150)]
        peer.send(b"".join(asp.encode_audio(p) for p in pcm[:120]) + asp.encode_dtmf("5"))
        split = asp.encode_audio(pcm[120])
        peer.send(split[:100])
        await peer.writer.drain()
        await asyncio.sleep(50 * MS)
        peer.send(split[100:] + b"".join(asp.encode_audio(p) for p in pcm[121:]))
        peer.send(asp.encode_dtmf("#"))  # the scripted backend hangs up on '#'
        events = await peer.read_until_closed(within=2)
        assert events and isinstance(events[-1], asp.Hangup)
        assert bytes(s.audio) == b"".join(pcm)
        assert s.dtmf == ["5", "#"]
        assert s.closed == "caller-pressed-hash"
    finally:
        await gw.shutdown(grace=0)


async def test_shutdown_returns_once_every_accepted_socket_is_closed() -> None:
    """Three calls whose Asterisk stopped reading, one connection that never sent its
    UUID: when the shutdown returns, every socket the gateway accepted is closed (the
    stalled peers after their bounded chance to read). Before, the shutdown returned
    with them still open, left to a timer or, if the loop stopped right after, to
    the garbage collector."""
    gw = Gateway(make_config(socket_sndbuf=4096, write_buffer_limit=1 << 20,
                             write_stall_timeout=0.3))
    await gw.start()
    socks: list[socket.socket] = []
    silent: RawPeer | None = None
    try:
        socks = await _stalled_calls(gw, 3)
        silent = await RawPeer.connect(gw.audiosocket.address)
        await until(lambda: len(gw.audiosocket.connections) == 4)
        accepted = list(gw.audiosocket.connections)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await gw.shutdown(grace=0)
        assert loop.time() - t0 >= 0.25  # the stalled peers got their bounded chance
        for conn in accepted:
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock is None or sock.fileno() == -1, conn.peer  # closed, not closing
    finally:
        await gw.shutdown(grace=0)  # (a no-op when the test got that far)
        if silent is not None:
            await silent.close()
        for sock in socks:
            sock.close()
