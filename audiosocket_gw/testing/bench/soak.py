"""``audiosocket-gw soak`` / ``make soak``: many calls for a long time, with faults.

Why: the benchmark says how many calls one core carries for seconds; the soak says the
gateway stays correct for minutes while things go wrong around it: no call it should
have kept is dropped, no record is left "in progress", memory and file descriptors stay
flat.

Set-up (as :mod:`.run`): the real gateway is a child process
(:class:`~audiosocket_gw.testing.proc.GatewayProcess`) pinned to the first core when
there are two or more; this process (the PBX simulator: AMI server and AudioSocket
callers) and the two AI peers, each in a process of its own (:mod:`.soak_peers`: the
local Realtime bot, the fake Twilio Media Streams app), share the other cores. The
gateway's AMI points at the AMI simulator, so the AMI faults are real disconnects.

Calls: ``calls`` slots, each placing one call after another until the end, a mix of
three agents (echo, openai against the local bot, twilio-stream against the fake app).
A call is what Asterisk does for an inbound DID: AMI ``Newchannel`` and AGI, ``POST
/v1/route`` (the AGI script's request), ``VarSet AIGW_CALL_ID``, ``Newexten
AudioSocket``, then the AudioSocket leg (320-byte speech-like frames every 20 ms) for a
random 20-60 s, then the caller hangs up (socket closed, AMI ``Hangup``). When the
gateway ends a call first, the AMI channel hangs up too (the dialplan's AudioSocket()
returned).

Faults, one every ``fault_every_s``, rotating:

* ``ai-drop`` -- the local bot and the fake app each abort about 10 % of their live
  sessions (no close frame). An openai call must survive (the gateway reconnects); a
  twilio-stream call ends (the app is gone, as with Twilio) and is that fault's target;
* ``ami-drop`` -- the AMI simulator closes the gateway's AMI connection (time to
  reconnect is reported);
* ``stalled-reader`` -- one caller stops reading its socket (the gateway must drop it as
  a slow peer, or it ends as planned, without disturbing the others): the target;
* ``ami-flood`` -- thousands of irrelevant AMI events in a burst, then one oversized
  garbage message (1 MiB header).

Calls end and start throughout (each slot's calls live a random 20-60 s).

Figures (printed and written as JSON):

* ``dropped_calls``: calls that ended other than by their planned end or as an injected
  fault's target (with the gateway's ``hangup_reason`` for each);
* ``gaps``: gaps > 40 ms between frames heard by healthy callers, and how many fell
  while this process's own event loop was late (then the simulator, not the gateway, may
  be to blame);
* ``gateway``: RSS and open fds sampled every ``sample_every_s`` (slope per minute over
  the steady part, least squares), and before the first call / after the last one;
* ``stuck_records``: calls still ``queued``/``ringing``/``in-progress`` in the store
  (``GET /v1/calls?status=``) once every call has ended;
* ``peers_cpu``: CPU of the simulator, bot and app processes (percent of one core).

The verdict (``ok`` and ``failures``, each failure saying why) uses the bounds of
:class:`Bounds`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import json
import os
import random
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np

from ... import audiosocket as asp
from ...twilio.ids import call_sid_for
from ..proc import GatewayProcess, cpu_seconds, rss_kib
from ..simulator.ami import AmiSimulator
from ..simulator.audio import speech_like
from .run import machine
from .soak_peers import PeerProcess as _Peer

__all__ = ["Bounds", "SoakConfig", "evaluate", "main_async", "run_soak", "slope_per_minute"]

FRAME_BYTES: Final = 320
FRAME_S: Final = 0.02
GAP_S: Final = 0.040
KINDS: Final = ("echo", "openai", "twilio-stream")
DIDS: Final = {"echo": "+15550100001", "openai": "+15550100002",
               "twilio-stream": "+15550100003"}
FAULTS: Final = ("ai-drop", "ami-drop", "stalled-reader", "ami-flood")
ACTIVE_STATUSES: Final = ("queued", "ringing", "in-progress")
LATE_S: Final = 0.020  # this process's loop later than this: its gaps may be its own


@dataclass
class SoakConfig:
    minutes: float = 10.0
    calls: int = 100
    fault_every_s: float = 60.0
    life_s: tuple[float, float] = (20.0, 60.0)
    sample_every_s: float = 10.0
    seed: int = 1
    flood_events: int = 5000
    garbage_bytes: int = 1 << 20


@dataclass
class Bounds:
    """What the verdict requires (the CLI's exit code, the CI test's asserts)."""

    max_dropped: int = 0
    max_stuck: int = 0
    max_fd_growth: int = 10
    """open fds after every call ended minus before the first: sockets all closed."""
    max_fd_slope_per_min: float | None = 5.0
    """None: not judged (a one-minute run has too few samples for a slope)."""
    max_rss_slope_mib_per_min: float | None = 2.0
    max_rss_growth_mib: float = 150.0
    """RSS at the end minus the first steady sample (calls up)."""


@dataclass
class CallRecord:
    index: int
    kind: str
    life_s: float
    call_id: str = ""
    uniqueid: str = ""
    started: float = 0.0  # monotonic, AudioSocket connected
    ended: float = 0.0
    ended_by: str = "pending"  # planned | gateway-hangup | gateway-close | route-* | connect
    target: str | None = None  # the fault whose target this call is
    frames_sent: int = 0
    frames_received: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, ms)
    hangup_reason: str | None = None


class _Caller(asyncio.Protocol):
    """The Asterisk end of one AudioSocket leg: frames out on a 20 ms schedule, frames
    in time-stamped as they arrive (gaps measured on the fly, nothing kept)."""

    def __init__(self, rec: CallRecord, pcm: bytes) -> None:
        self.rec = rec
        self.pcm = pcm
        self.offset = 0
        self.decoder = asp.Decoder(require_uuid_first=False)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.next_send = 0.0
        self.last_rx: float | None = None
        self.done = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.rec.started = self.next_send = time.monotonic()
        transport.write(asp.encode_uuid(self.rec.call_id))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        try:
            self.decoder.feed(data)
            while (ev := self.decoder.next_event()) is not None:
                if isinstance(ev, asp.Audio):
                    if self.last_rx is not None and now - self.last_rx > GAP_S:
                        self.rec.gaps.append((now, (now - self.last_rx) * 1000.0))
                    self.last_rx = now
                    self.rec.frames_received += 1
                elif isinstance(ev, asp.Hangup):
                    self._finish("gateway-hangup")
                    return
        except asp.ProtocolError:
            self._finish("gateway-protocol-error")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("gateway-close")
        if not self.closed.done():
            self.closed.set_result(None)

    def _finish(self, how: str) -> None:
        if self.done:
            return
        self.done = True
        self.rec.ended_by = how
        self.rec.ended = time.monotonic()
        if self.transport is not None:
            self.transport.close()

    def hang_up(self) -> None:
        """The caller hangs up (Asterisk closes the socket without a frame)."""
        self._finish("planned")

    def stall(self) -> None:
        """Stop reading the socket (and stop measuring: this caller is the target)."""
        if self.transport is not None and not self.done:
            self.paused = True
            self.transport.pause_reading()

    def tick(self, now: float) -> float:
        """Send what is due; return when this caller next needs a tick (inf: never)."""
        if self.done or self.transport is None:
            return float("inf")
        while self.next_send <= now + 0.001:
            chunk = self.pcm[self.offset:self.offset + FRAME_BYTES]
            if len(chunk) < FRAME_BYTES:
                self.offset = 0
                chunk = self.pcm[:FRAME_BYTES]
            self.offset += FRAME_BYTES
            self.transport.write(asp.encode_audio(chunk))
            self.rec.frames_sent += 1
            self.next_send += FRAME_S
            if now - self.next_send > 2 * FRAME_S:  # we were late: do not burst
                self.next_send = now + FRAME_S
        return self.next_send


class _Ticker:
    """One task sends for every caller (each on its own schedule from its own start)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Caller]] = []
        self.wake = asyncio.Event()
        self.seq = 0

    def add(self, caller: _Caller) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (caller.next_send, self.seq, caller))
        self.wake.set()

    async def run(self) -> None:
        heap = self.heap
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            delay = heap[0][0] - time.monotonic()
            if delay > 0:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                continue
            now = time.monotonic()
            while heap and heap[0][0] <= now + 0.001:
                _, seq, caller = heapq.heappop(heap)
                nxt = caller.tick(now)
                if nxt != float("inf"):
                    heapq.heappush(heap, (nxt, seq, caller))


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute (None below 3 points)."""
    if len(points) < 3:
        return None
    t = np.asarray([p[0] for p in points])
    v = np.asarray([p[1] for p in points])
    if float(np.ptp(t)) <= 0:
        return None
    return float(np.polyfit(t, v, 1)[0]) * 60.0


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (Linux /proc), 0 when unknown."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds of ``pid`` by kind (``socket``, ``pipe``, ``anon_inode:[eventpoll]``, or a
    file's name), so a growth says what leaked."""
    out: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) \
            else target if target.startswith("anon_inode:") else Path(target).name
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def _agents_toml(calls: int, app_url: str) -> str:
    return f"""\
default_agent = "echo"
[tenants.soak]
max_concurrent_calls = {calls * 2 + 50}
[agents.echo]
tenant = "soak"
backend = "echo"
echo_delay_ms = 20
[agents.openai]
tenant = "soak"
backend = "openai"
greeting = "Hello, this is the soak test."
[agents.twilio]
tenant = "soak"
backend = "twilio-stream"
stream_url = "{app_url}"
[numbers."{DIDS['echo']}"]
agent = "echo"
[numbers."{DIDS['openai']}"]
agent = "openai"
[numbers."{DIDS['twilio-stream']}"]
agent = "twilio"
"""


class Soak:
    """One soak run (see the module docstring); :func:`run_soak` drives it."""

    def __init__(self, cfg: SoakConfig, gw: GatewayProcess, ami: AmiSimulator,
                 bot: _Peer, app: _Peer, http: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.gw = gw
        self.ami = ami
        self.bot = bot
        self.app = app
        self.http = http
        self.rng = random.Random(cfg.seed)
        self.records: list[CallRecord] = []
        self.live: dict[str, _Caller] = {}  # call_id -> caller
        self.ticker = _Ticker()
        self.faults: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.late: list[tuple[float, float]] = []  # (monotonic, lag s) of late wake-ups
        self.lag_max = 0.0
        self.t0 = 0.0
        self.stop_at = 0.0
        self.pcms = [speech_like(30.0, seed=i).astype("<i2").tobytes() for i in range(8)]
        base = f"http://{gw.http[0]}:{gw.http[1]}"
        self.base = base

    def rel(self, t: float) -> float:
        return round(t - self.t0, 2)

    # -- calls ----------------------------------------------------------------------

    async def place(self, rec: CallRecord) -> None:
        did = DIDS[rec.kind]
        caller_no = f"+1555020{rec.index % 10000:04d}"
        ch = self.ami.new_inbound(did, caller_no)
        rec.uniqueid = ch.uniqueid
        try:
            async with self.http.post(f"{self.base}/v1/route", json={
                    "did": did, "caller": caller_no, "uniqueid": ch.uniqueid,
                    "channel": ch.name}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                body = (await resp.json()).get("variables", {})
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            rec.ended_by = f"route-error: {exc!r}"[:200]
            rec.ended = time.monotonic()
            self.ami.end_channel(ch.uniqueid, 16)
            return
        if status != 200 or body.get("AIGW_STATUS") != "ok":
            rec.ended_by = f"route-{body.get('AIGW_STATUS', status)}"
            rec.ended = time.monotonic()
            self.ami.end_channel(ch.uniqueid, 16)
            return
        rec.call_id = body["AIGW_CALL_ID"]
        host, port = self.gw.audiosocket
        self.ami.enter_audiosocket(ch, rec.call_id, f"{host}:{port}")
        loop = asyncio.get_running_loop()
        pcm = self.pcms[rec.index % len(self.pcms)]
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # A small receive buffer, as a busy Asterisk's would be: a caller that stops
            # reading fills it in seconds, not minutes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 5.0)
            _, caller = await loop.create_connection(lambda: _Caller(rec, pcm), sock=sock)
        except (OSError, TimeoutError) as exc:
            rec.ended_by = f"connect-error: {exc!r}"[:200]
            rec.ended = time.monotonic()
            self.ami.end_channel(ch.uniqueid, 16)
            return
        self.live[rec.call_id] = caller
        self.ticker.add(caller)
        end = min(rec.started + rec.life_s, self.stop_at)
        try:
            await asyncio.wait_for(asyncio.shield(caller.closed), max(0.0, end - loop.time()))
        except TimeoutError:
            caller.hang_up()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(caller.closed), 5.0)
        finally:
            self.live.pop(rec.call_id, None)
        # The channel hangs up: the caller's BYE, or AudioSocket() returned.
        self.ami.end_channel(ch.uniqueid, 16)

    async def slot(self, i: int, ramp_s: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(ramp_s * i / max(1, self.cfg.calls))
        lo, hi = self.cfg.life_s
        while loop.time() < self.stop_at - 1.0:
            rec = CallRecord(index=len(self.records), kind=KINDS[len(self.records) % 3],
                             life_s=self.rng.uniform(lo, hi))
            self.records.append(rec)
            try:
                await self.place(rec)
            except Exception as exc:  # keep the slot alive; the record says what happened
                rec.ended_by = f"simulator-error: {exc!r}"[:200]
                rec.ended = time.monotonic()
            if rec.ended_by != "planned":
                await asyncio.sleep(0.2)  # a failing gateway is not hammered

    # -- faults ---------------------------------------------------------------------

    def _live_of(self, *kinds: str) -> list[_Caller]:
        return [c for c in self.live.values() if c.rec.kind in kinds and not c.done]

    async def fault(self, name: str) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {"t_s": self.rel(now), "fault": name, "at": now}
        if name == "ai-drop":
            n_bot = max(1, len(self._live_of("openai")) // 10)
            n_app = max(1, len(self._live_of("twilio-stream")) // 10)
            # Mapped before the drop: the gateway hangs the app's victim up (app-closed)
            # and its caller may leave ``live`` before the app's answer arrives here.
            by_sid = {call_sid_for(c.rec.call_id): c for c in self.live.values()}
            bot = await self.bot.ask("drop", count=n_bot)
            app = await self.app.ask("drop", count=n_app)
            targets = []
            for sid in app.get("call_sids", []):
                c = by_sid.get(sid)
                if c is not None:
                    c.rec.target = name
                    targets.append(c.rec.call_id)
            out.update(bot_sessions_dropped=bot.get("dropped", 0),
                       app_sessions_dropped=app.get("dropped", 0), targets=targets)
        elif name == "ami-drop":
            self.ami.drop_sessions()
            out["ami_reconnect_s"] = await self._ami_back(now)
        elif name == "stalled-reader":
            # The live caller with the most time left, so the gateway has time to notice.
            left = [(c.rec.started + c.rec.life_s - now, c) for c in self._live_of(*KINDS)]
            if left:
                remaining, c = max(left, key=lambda x: x[0])
                c.rec.target = name
                c.stall()
                out.update(targets=[c.rec.call_id], target_kind=c.rec.kind,
                           target_time_left_s=round(remaining, 1), _caller=c)
        elif name == "ami-flood":
            sent = 0
            n = self.cfg.flood_events
            for start in range(0, n, 250):
                for k in range(start, min(n, start + 250)):
                    uid = f"9{k}.{k}"
                    self.ami.emit("VarSet" if k % 3 else "PeerStatus", [
                        ("Channel", f"PJSIP/other-{k:08x}"), ("Uniqueid", uid),
                        ("Linkedid", uid), ("Variable", "SOMETHING"),
                        ("Value", "x" * 40), ("PeerStatus", "Reachable")])
                    sent += 1
                await asyncio.sleep(0)  # this process's callers keep their schedule
            garbage = (b"Event: Garbage\r\nJunk: " + b"x" * self.cfg.garbage_bytes
                       + b"\r\n\r\n")
            self.ami.send_raw(garbage)
            out.update(events=sent, garbage_bytes=len(garbage))
            await asyncio.sleep(2.0)
            out["ami_connected_after_2s"] = self._ami_up()
            if not out["ami_connected_after_2s"]:
                out["ami_reconnect_s"] = await self._ami_back(now)
        return out

    def _ami_up(self) -> bool:
        return any(s.authenticated for s in self.ami.sessions)

    async def _ami_back(self, since: float, wait_s: float = 60.0) -> float | None:
        await asyncio.sleep(0.05)
        deadline = since + wait_s
        while time.monotonic() < deadline:
            if self._ami_up():
                return round(time.monotonic() - since, 2)
            await asyncio.sleep(0.05)
        return None

    async def faults_loop(self) -> None:
        k = 0
        every = self.cfg.fault_every_s
        while True:
            at = self.t0 + (k + 1) * every
            if at > self.stop_at - 5.0:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            name = FAULTS[k % len(FAULTS)]
            print(f"soak: t={self.rel(time.monotonic()):.0f}s fault {name} "
                  f"({len(self.live)} live calls)", flush=True)
            before = await self._counters()
            f = await self.fault(name)
            self.faults.append(f)
            asyncio.get_running_loop().create_task(self._counters_after(f, before))
            k += 1

    async def _counters(self) -> dict[str, float]:
        try:
            m = await self.metrics()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        return _stall_counters(m)

    async def _counters_after(self, fault: dict[str, Any], before: dict[str, float]) -> None:
        """The gateway's own stall counters over the 5 s after a fault started (gaps the
        gateway caused show up here; gaps of a late simulator do not)."""
        await asyncio.sleep(max(0.0, fault["at"] + 5.0 - time.monotonic()))
        after = await self._counters()
        fault["gateway_5s"] = {k: int(after[k] - before[k]) for k in after if k in before}

    # -- monitoring -----------------------------------------------------------------

    async def lag_monitor(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lag = time.monotonic() - before - 0.005
            self.lag_max = max(self.lag_max, lag)
            if lag > LATE_S:
                self.late.append((time.monotonic(), lag))

    async def sampler(self) -> None:
        pids = {"gateway": self.gw.pid, "bot": self.bot.pid, "app": self.app.pid}
        last = {k: cpu_seconds(p) or 0.0 for k, p in pids.items()}
        last_sim, last_t = time.process_time(), time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.sample_every_s)
            now = time.monotonic()
            dt = now - last_t
            cpu = {}
            for k, p in pids.items():
                c = cpu_seconds(p) or last[k]
                cpu[k] = round(100 * (c - last[k]) / dt, 1)
                last[k] = c
            sim = time.process_time()
            cpu["simulator"] = round(100 * (sim - last_sim) / dt, 1)
            last_sim, last_t = sim, now
            sample = {"t_s": self.rel(now), "rss_mib": round(rss_kib(self.gw.pid) / 1024, 1),
                      "fds": open_fds(self.gw.pid), "live_calls": len(self.live),
                      "cpu_percent": cpu, "simulator_lag_max_ms": round(self.lag_max * 1000, 1)}
            self.lag_max = 0.0
            self.samples.append(sample)
            print(f"soak: t={sample['t_s']:.0f}s live={sample['live_calls']} "
                  f"rss={sample['rss_mib']}MiB fds={sample['fds']} cpu={cpu} "
                  f"lag={sample['simulator_lag_max_ms']}ms", flush=True)

    async def active_records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for status in ACTIVE_STATUSES:
            async with self.http.get(f"{self.base}/v1/calls",
                                     params={"status": status, "limit": "1000"}) as resp:
                out += (await resp.json()).get("calls", [])
        return out

    async def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        async with self.http.get(f"{self.base}/metrics",
                                 timeout=aiohttp.ClientTimeout(total=10)) as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def hangup_reason(self, call_id: str) -> str | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with self.http.get(f"{self.base}/v1/calls/{call_id}") as resp:
                if resp.status == 200:
                    reason = (await resp.json()).get("hangup_reason")
                    return None if reason is None else str(reason)
        return None


async def run_soak(cfg: SoakConfig, *, bounds: Bounds | None = None,
                   log_dir: str | None = None) -> dict[str, Any]:
    """Run the soak; returns the report (see the module docstring), verdict included."""
    if cfg.calls < 1 or cfg.minutes <= 0 or cfg.fault_every_s <= 0:
        raise ValueError("need calls >= 1, minutes > 0 and fault_every_s > 0")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    tmp = tempfile.TemporaryDirectory(prefix="aigw-soak-")
    logs = Path(log_dir) if log_dir else Path(tmp.name)
    logs.mkdir(parents=True, exist_ok=True)
    if pin:
        os.sched_setaffinity(0, set(cpus[1:]))  # the peers inherit the other core(s)
    bot = _Peer("bot", logs / "soak-bot.log")
    app = _Peer("app", logs / "soak-app.log")
    ami = AmiSimulator(username="aigw", secret="soak-secret")
    try:
        await bot.start()
        await app.start()
        await ami.start()
        cfg_path = Path(tmp.name) / "agents.toml"
        cfg_path.write_text(_agents_toml(cfg.calls, app.url))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AIGW_") and k != "OPENAI_API_KEY"}
        env.update({
            "AIGW_OPENAI_URL": bot.url.split("?", 1)[0], "AIGW_OPENAI_MODEL": "local-bot",
            "AIGW_LOG_LEVEL": "warning", "AIGW_AMI_HOST": ami.address[0],
            "AIGW_AMI_PORT": str(ami.address[1]), "AIGW_AMI_USER": "aigw",
            "AIGW_AMI_SECRET": "soak-secret",
        })
        gw = GatewayProcess(
            "--config", str(cfg_path), "--audiosocket", "127.0.0.1:0", "--http",
            "127.0.0.1:0", "--max-connections", str(max(1000, cfg.calls * 4)),
            env=env, cpu=cpus[0] if pin else None, log_path=str(logs / "soak-gateway.log"))
        # No keep-alive: pooled client connections would hold gateway sockets open and
        # read as an fd leak at the end.
        async with gw, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http:
            soak = Soak(cfg, gw, ami, bot, app, http)
            report = await _drive(soak, cfg)
        report["gateway_log"] = _log_summary(logs / "soak-gateway.log")
        report["gateway_pinned_to_cpu"] = cpus[0] if pin else None
    finally:
        await ami.stop()
        await bot.stop()
        await app.stop()
        if pin:
            os.sched_setaffinity(0, set(cpus))
        tmp.cleanup()
    report["verdict"] = evaluate(report, bounds or Bounds())
    return report


async def _drive(soak: Soak, cfg: SoakConfig) -> dict[str, Any]:
    gw = soak.gw
    loop = asyncio.get_running_loop()
    ami_wait = time.monotonic()
    if await soak._ami_back(ami_wait, 30.0) is None:
        raise RuntimeError("the gateway never logged in to the AMI simulator")
    await asyncio.sleep(1.0)
    rss_before, fds_before = rss_kib(gw.pid) / 1024, open_fds(gw.pid)
    kinds_before = fd_kinds(gw.pid)
    soak.t0 = loop.time()
    soak.stop_at = soak.t0 + cfg.minutes * 60.0
    ramp_s = min(10.0, cfg.minutes * 60.0 / 6)
    helpers = [loop.create_task(c) for c in (soak.ticker.run(), soak.lag_monitor(),
                                             soak.sampler())]
    faults = loop.create_task(soak.faults_loop())
    sim0, wall0 = time.process_time(), time.monotonic()
    cpu0 = {"bot": cpu_seconds(soak.bot.pid) or 0.0, "app": cpu_seconds(soak.app.pid) or 0.0,
            "gateway": cpu_seconds(gw.pid) or 0.0}
    print(f"soak: {cfg.calls} calls for {cfg.minutes:g} min, a fault every "
          f"{cfg.fault_every_s:g} s (gateway pid {gw.pid})", flush=True)
    try:
        await asyncio.gather(*(soak.slot(i, ramp_s) for i in range(cfg.calls)))
        await faults
    finally:
        faults.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await faults
    wall = time.monotonic() - wall0
    cpu_total = {k: round(100 * ((cpu_seconds(p) or 0.0) - cpu0[k]) / wall, 1)
                 for k, p in (("bot", soak.bot.pid), ("app", soak.app.pid), ("gateway", gw.pid))}
    cpu_total["simulator"] = round(100 * (time.process_time() - sim0) / wall, 1)
    # Every call has ended: the store must say so within a few seconds.
    stuck: list[dict[str, Any]] = []
    settle = time.monotonic() + 15.0
    while True:
        stuck = await soak.active_records()
        if not stuck or time.monotonic() > settle:
            break
        await asyncio.sleep(0.5)
    # Sockets of the last calls may still be closing (WebSocket close handshakes): a
    # leak stays, a close in progress does not, so wait a little for the count to settle.
    settle = time.monotonic() + 10.0
    await asyncio.sleep(1.0)
    for _ in range(20):
        if open_fds(gw.pid) <= fds_before or time.monotonic() > settle:
            break
        await asyncio.sleep(0.5)
    rss_after, fds_after = rss_kib(gw.pid) / 1024, open_fds(gw.pid)
    kinds_after = fd_kinds(gw.pid)
    for t in helpers:
        t.cancel()
    for t in helpers:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    metrics = await soak.metrics()
    return await _report(soak, cfg, stuck=stuck, metrics=metrics, cpu_total=cpu_total,
                         rss=(rss_before, rss_after), fds=(fds_before, fds_after),
                         fd_kinds=(kinds_before, kinds_after), ramp_s=ramp_s)


def _stall_counters(m: dict[str, float]) -> dict[str, float]:
    """The gateway's own signs of a stall: playout underruns, pacer ticks skipped, and
    pacer ticks that ran more than 20 ms late (its event loop was blocked or descheduled)."""
    late = m.get("aigw_pacer_lateness_seconds_count", 0.0) - m.get(
        'aigw_pacer_lateness_seconds_bucket{le="0.02"}', 0.0)
    return {"underruns": m.get("aigw_playout_underruns_total", 0.0),
            "missed_ticks": m.get("aigw_pacer_missed_ticks_total", 0.0),
            "ticks_late_over_20ms": late}


def _within(t: float, faults: list[dict[str, Any]], name: str, window_s: float) -> bool:
    return any(f["fault"] == name and 0.0 <= t - f["at"] <= window_s for f in faults)


async def _report(soak: Soak, cfg: SoakConfig, *, stuck: list[dict[str, Any]],
                  metrics: dict[str, float], cpu_total: dict[str, float],
                  rss: tuple[float, float], fds: tuple[float, float],
                  fd_kinds: tuple[dict[str, int], dict[str, int]],
                  ramp_s: float) -> dict[str, Any]:
    records = soak.records
    unplanned = [r for r in records if r.ended_by != "planned" and r.target is None]
    for r in unplanned[:200]:
        if r.call_id:
            r.hangup_reason = await soak.hangup_reason(r.call_id)
    # An openai call whose bot session was aborted is that fault's target only if the
    # gateway gave up on the bot (its reconnect guard); it is expected to survive.
    budget = sum(f.get("bot_sessions_dropped", 0) for f in soak.faults)
    for r in unplanned:
        if budget > 0 and r.kind == "openai" and (r.hangup_reason or "").startswith(
                "backend") and _within(r.ended, soak.faults, "ai-drop", 60.0):
            r.target = "ai-drop"
            budget -= 1
    dropped = [r for r in records if r.ended_by != "planned" and r.target is None]
    late = soak.late
    gaps_all: list[tuple[float, float, CallRecord]] = [
        (t, ms, r) for r in records if r.target is None for t, ms in r.gaps]

    late_at = sorted(late)
    late_times = [a for a, _ in late_at]
    max_lag = max((lag for _, lag in late_at), default=0.0)

    def simulator_late(t: float, gap_s: float) -> bool:
        # Our loop was blocked during [at - lag, at]: overlapping the gap, the frame may
        # have waited in our socket rather than in the gateway.
        i = bisect.bisect_left(late_times, t - gap_s)
        while i < len(late_at) and late_at[i][0] <= t + max_lag + 0.05:
            at, lag = late_at[i]
            if at - lag - 0.005 <= t:
                return True
            i += 1
        return False

    late_gaps = sum(1 for t, ms, _ in gaps_all if simulator_late(t, ms / 1000.0))
    by_fault = []
    for f in soak.faults:
        win = [(ms, r.kind) for t, ms, r in gaps_all if 0.0 <= t - f["at"] <= 5.0]
        by_fault.append({"fault": f["fault"], "t_s": f["t_s"], "gaps_over_40ms": len(win),
                         "max_gap_ms": round(max((ms for ms, _ in win), default=0.0), 1),
                         "by_kind": _count(k for _, k in win)})
    faults_out = []
    for f in soak.faults:
        d = {k: v for k, v in f.items() if k not in ("at", "_caller")}
        caller = f.get("_caller")
        if isinstance(caller, _Caller):
            r = caller.rec
            d["target_ended_by"] = r.ended_by
            d["target_ended_after_s"] = round(r.ended - f["at"], 2) if r.ended else None
            d["target_hangup_reason"] = await soak.hangup_reason(r.call_id)
        if f["fault"] == "ai-drop":
            ended = [r for r in records if r.call_id in set(f.get("targets", []))]
            d["targets_ended_by"] = _count(r.ended_by for r in ended)
        faults_out.append(d)
    steady = [s for s in soak.samples if s["t_s"] >= ramp_s + cfg.sample_every_s
              and s["t_s"] <= cfg.minutes * 60.0]
    rss_slope = slope_per_minute([(s["t_s"], s["rss_mib"]) for s in steady])
    fd_slope = slope_per_minute([(s["t_s"], s["fds"]) for s in steady])
    peer_max = {k: max((s["cpu_percent"].get(k, 0.0) for s in soak.samples), default=None)
                for k in ("simulator", "bot", "app", "gateway")}
    peers_core = [round(sum(s["cpu_percent"].get(k, 0.0) for k in ("simulator", "bot", "app")),
                        1) for s in soak.samples]
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    dropped_out = []
    for r in dropped[:50]:
        last = [f for f in soak.faults if f["at"] <= (r.ended or 0.0)]
        dropped_out.append({
            "call_id": r.call_id, "kind": r.kind, "ended_by": r.ended_by,
            "hangup_reason": r.hangup_reason,
            "t_s": soak.rel(r.ended) if r.ended else None,
            "lived_s": round(r.ended - r.started, 2) if r.started and r.ended else None,
            "planned_s": round(r.life_s, 1),
            "last_fault": (f"{last[-1]['fault']} at t={last[-1]['t_s']}s" if last else None)})
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "config": {**asdict(cfg), "mix": list(KINDS)},
        "calls_started": len(records),
        "calls_by_kind": _count(r.kind for r in records),
        "ended_by": _count(r.ended_by for r in records),
        "fault_targets": _count(r.target for r in records if r.target),
        "dropped": len(dropped),
        "dropped_calls": dropped_out,
        "gaps": {
            "over_40ms": len(gaps_all),
            "healthy_calls_with_gaps": len({id(r) for _, _, r in gaps_all}),
            "max_gap_ms": round(max((ms for _, ms, _ in gaps_all), default=0.0), 1),
            "by_kind": _count(r.kind for _, _, r in gaps_all),
            "by_size_ms": _count(next(b for b in ("40-60", "60-100", "100-200", ">200")
                                      if ms <= {"40-60": 60, "60-100": 100, "100-200": 200}
                                      .get(b, 1e9)) for _, ms, _ in gaps_all),
            "while_simulator_late": late_gaps,
            "simulator_late_wakeups": len(late),
            "after_each_fault_5s": by_fault,
            "frames_received": sum(r.frames_received for r in records),
        },
        "faults": faults_out,
        "gateway": {
            "rss_before_mib": round(rss[0], 1), "rss_after_mib": round(rss[1], 1),
            "rss_first_steady_mib": steady[0]["rss_mib"] if steady else None,
            "rss_max_mib": max((s["rss_mib"] for s in soak.samples), default=None),
            "rss_slope_mib_per_min": None if rss_slope is None else round(rss_slope, 3),
            "fds_before": fds[0], "fds_after": fds[1],
            "fd_kinds_before": fd_kinds[0], "fd_kinds_after": fd_kinds[1],
            "fd_slope_per_min": None if fd_slope is None else round(fd_slope, 3),
            "cpu_percent_mean": cpu_total["gateway"],
            **{k: int(v) for k, v in _stall_counters(metrics).items()},
        },
        "peers_cpu": {
            "mean_percent": {k: v for k, v in cpu_total.items() if k != "gateway"},
            "max_percent_per_sample": {k: v for k, v in peer_max.items() if k != "gateway"},
            "peer_cores": max(1, n_cpus - 1),
            "peers_busy_percent_max": max(peers_core, default=None),
        },
        "peer_violations": (await soak.app.ask("stats")).get("violations"),
        "stuck_records": [{"id": c.get("id"), "status": c.get("status"),
                           "agent": c.get("agent"), "created_at": c.get("created_at")}
                          for c in stuck[:50]],
        "stuck": len(stuck),
        "samples": soak.samples,
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[str(i)] = out.get(str(i), 0) + 1
    return out


def _log_summary(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    bad = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or " CRITICAL " in ln]
    return {"lines": len(lines), "warnings": sum(" WARNING " in ln for ln in lines),
            "errors": len(bad), "error_samples": [ln[:300] for ln in bad[:10]]}


def evaluate(report: dict[str, Any], bounds: Bounds) -> dict[str, Any]:
    """``{"ok": bool, "failures": [why, ...]}`` against ``bounds``."""
    why: list[str] = []
    if report["dropped"] > bounds.max_dropped:
        first = report["dropped_calls"][:5]
        why.append(f"{report['dropped']} dropped calls (max {bounds.max_dropped}): {first}")
    if report["stuck"] > bounds.max_stuck:
        why.append(f"{report['stuck']} stuck records in the store after every call ended: "
                   f"{report['stuck_records'][:5]}")
    g = report["gateway"]
    growth = g["fds_after"] - g["fds_before"]
    if growth > bounds.max_fd_growth:
        before, after = g.get("fd_kinds_before", {}), g.get("fd_kinds_after", {})
        grew = {k: after.get(k, 0) - before.get(k, 0) for k in {*before, *after}
                if after.get(k, 0) != before.get(k, 0)}
        why.append(f"gateway fds grew by {growth} (before {g['fds_before']}, after every call "
                   f"ended {g['fds_after']}; max {bounds.max_fd_growth}): a leak; by kind "
                   f"{grew}")
    if g["fd_slope_per_min"] is not None and bounds.max_fd_slope_per_min is not None \
            and g["fd_slope_per_min"] > bounds.max_fd_slope_per_min:
        why.append(f"gateway fds rose {g['fd_slope_per_min']}/min while calls were up "
                   f"(max {bounds.max_fd_slope_per_min})")
    if g["rss_slope_mib_per_min"] is not None and bounds.max_rss_slope_mib_per_min is not None \
            and g["rss_slope_mib_per_min"] > bounds.max_rss_slope_mib_per_min:
        why.append(f"gateway RSS rose {g['rss_slope_mib_per_min']} MiB/min while calls were up "
                   f"(max {bounds.max_rss_slope_mib_per_min})")
    if g["rss_first_steady_mib"] is not None:
        rss_growth = g["rss_after_mib"] - g["rss_first_steady_mib"]
        if rss_growth > bounds.max_rss_growth_mib:
            why.append(f"gateway RSS grew {rss_growth:.1f} MiB from the first steady sample "
                       f"to the end (max {bounds.max_rss_growth_mib})")
    return {"ok": not why, "failures": why}


def summary_text(report: dict[str, Any]) -> str:
    """The human-readable lines ``make soak`` prints."""
    g, gaps, peers = report["gateway"], report["gaps"], report["peers_cpu"]
    cfg = report["config"]
    lines = [
        f"soak: {cfg['calls']} concurrent calls for {cfg['minutes']:g} min "
        f"({report['calls_started']} calls placed: {report['calls_by_kind']}), "
        f"{len(report['faults'])} faults",
        f"  ended: {report['ended_by']}; fault targets: {report['fault_targets']}",
        f"  dropped calls: {report['dropped']}   stuck records: {report['stuck']}",
        f"  gaps > 40 ms heard by healthy callers: {gaps['over_40ms']} "
        f"({gaps['while_simulator_late']} while the simulator itself was late), "
        f"max {gaps['max_gap_ms']} ms",
        f"  gateway RSS {g['rss_before_mib']} -> {g['rss_after_mib']} MiB "
        f"(max {g['rss_max_mib']}, slope {g['rss_slope_mib_per_min']} MiB/min); "
        f"fds {g['fds_before']} -> {g['fds_after']} (slope {g['fd_slope_per_min']}/min); "
        f"CPU {g['cpu_percent_mean']} %",
        f"  peers CPU mean {peers['mean_percent']} %, max {peers['max_percent_per_sample']} %"
        f" (peer core(s) busy max {peers['peers_busy_percent_max']} %)",
    ]
    for f in report["faults"]:
        extra = {k: v for k, v in f.items() if k not in ("t_s", "fault", "targets")}
        lines.append(f"  fault t={f['t_s']}s {f['fault']}: {extra}")
    v = report["verdict"]
    lines.append("  verdict: OK" if v["ok"] else "  verdict: FAILED")
    lines += [f"    - {why}" for why in v["failures"]]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def main_async(minutes: float, calls: int, fault_every_s: float, out: str) -> int:
    """``audiosocket-gw soak``: run, print, write ``out``; exit code 0 when the verdict is OK."""
    cfg = SoakConfig(minutes=minutes, calls=calls, fault_every_s=fault_every_s)
    report = await run_soak(cfg)
    path = Path(out)
    await asyncio.to_thread(_write, path, json.dumps(report, indent=2) + "\n")
    print(summary_text(report))
    print(f"\nwritten to {path}")
    return 0 if report["verdict"]["ok"] else 1

