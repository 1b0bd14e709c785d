"""The silence watchdog end to end: real gateway, PBX simulator over TCP, watchdogs on
the pacer. "Bot audio" that holds a call open is audio the caller can hear."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from audiosocket_gw.backends.base import Backend, BackendSession, CallControl, CallInfo
from audiosocket_gw.call import Call
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.testing.simulator.pbx import CallPlan, CallReport, run_simulation
from audiosocket_gw.watchdogs import Watchdogs

from .helpers import MS, make_config

TIMEOUT_S = 600 * MS
CHECK_S = 0.25  # the watchdogs' interval
SLACK_S = 150 * MS


class BotBackend(Backend):
    """Plays ``pcm`` once when the call starts (nothing when empty); ignores the caller."""

    name = "bot"
    local_barge_in = False

    def __init__(self, pcm: bytes = b"") -> None:
        self.pcm = pcm

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        return _BotSession(control, self.pcm)


class _BotSession(BackendSession):
    def __init__(self, control: CallControl, pcm: bytes) -> None:
        self.control = control
        self.pcm = pcm

    async def start(self) -> None:
        if self.pcm:
            self.control.play(self.pcm)
            self.control.end_of_audio()

    def on_audio(self, pcm: bytes) -> None:
        pass


def tone(seconds: float, amplitude: float) -> npt.NDArray[np.int16]:
    t = np.arange(int(8000 * seconds)) / 8000
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def zeros(seconds: float) -> npt.NDArray[np.int16]:
    return np.zeros(int(8000 * seconds), dtype=np.int16)


@asynccontextmanager
async def gateway(backend: Backend | None = None) -> AsyncIterator[tuple[Gateway, list[float]]]:
    """A gateway whose default agent is an echo agent with a short silence timeout; yields
    it and the list of call durations (seconds) at the moment each call ended."""
    path = Path(tempfile.mkdtemp(prefix="aigw-silence-")) / "agents.toml"
    path.write_text(
        '[tenants.t]\n[agents.a]\ntenant = "t"\nbackend = "echo"\necho_delay_ms = 0\n'
        f"silence_timeout_s = {TIMEOUT_S}\n"
    )
    gw = Gateway(make_config(config=str(path)), backend=backend)
    ended: list[float] = []

    def on_end(call: Call) -> None:
        ended.append(time.monotonic() - call.started_at)

    gw.events.ended.connect(on_end)
    await gw.start()
    try:
        yield gw, ended
    finally:
        await gw.shutdown(grace=0)


def silence_hangups(gw: Gateway) -> float:
    v = gw.metrics.registry.get_sample_value(
        "aigw_watchdog_hangups_total", {"reason": "silence-timeout"})
    return 0.0 if v is None else v


async def call(gw: Gateway, seconds: float, audio: npt.NDArray[np.int16] | None) -> CallReport:
    plan = CallPlan(seconds=seconds, audio=audio)
    report = await run_simulation(*gw.audiosocket.address, plans=[plan], out_dir=None)
    await asyncio.sleep(20 * MS)
    return report.calls[0]


async def test_silence_to_an_echo_agent_is_hung_up() -> None:
    """The caller sends only silence; the echo agent returns it. Echoed silence is not
    the bot talking: the call is hung up after the silence timeout."""
    async with gateway() as (gw, ended):
        # The watchdogs run on the pacer's clock, no loop of their own.
        assert gw.component(Watchdogs)._sub is not None
        assert not [t for t in asyncio.all_tasks() if "Watchdogs" in repr(t.get_coro())]
        c = await call(gw, seconds=TIMEOUT_S + 1.5, audio=zeros(1.0))
        assert c.ended_by == "gateway-hangup", c
        assert silence_hangups(gw) == 1
        (duration,) = ended
        assert TIMEOUT_S <= duration <= TIMEOUT_S + CHECK_S + SLACK_S


async def test_silent_frames_from_any_backend_do_not_hold_the_call() -> None:
    """A backend that plays (digital) silence is not audible bot audio either."""
    async with gateway(BotBackend(bytes(16000 * 3))) as (gw, ended):
        c = await call(gw, seconds=TIMEOUT_S + 1.5, audio=None)
        assert c.ended_by == "gateway-hangup", c
        (duration,) = ended
        assert TIMEOUT_S <= duration <= TIMEOUT_S + CHECK_S + SLACK_S


async def test_audible_bot_holds_the_call_then_silence_ends_it() -> None:
    """While the bot is audibly speaking the silent caller is not hung up; the timeout
    counts from the bot's last audible frame."""
    talk_s = 2 * TIMEOUT_S
    bot = tone(talk_s, 3000.0).tobytes()
    async with gateway(BotBackend(bot)) as (gw, ended):
        c = await call(gw, seconds=talk_s + TIMEOUT_S + 1.5, audio=None)
        assert c.ended_by == "gateway-hangup", c
        assert silence_hangups(gw) == 1
        (duration,) = ended
        assert talk_s + TIMEOUT_S <= duration <= talk_s + TIMEOUT_S + CHECK_S + SLACK_S


async def test_caller_speech_resets_the_silence_timer() -> None:
    """Caller speech (the bridge's VAD) restarts the silence count; a silent bot."""
    quiet_s, talk_s = TIMEOUT_S / 2, TIMEOUT_S
    audio = np.concatenate([zeros(quiet_s), tone(talk_s, 8000.0), zeros(30.0)])
    async with gateway(BotBackend()) as (gw, ended):
        c = await call(gw, seconds=quiet_s + talk_s + TIMEOUT_S + 2.0, audio=audio)
        assert c.ended_by == "gateway-hangup", c
        (duration,) = ended
        # Speech ends at quiet_s + talk_s; the VAD holds it for its 400 ms hangover.
        last_speech = quiet_s + talk_s + 0.4
        assert last_speech + TIMEOUT_S - 0.05 <= duration
        assert duration <= last_speech + TIMEOUT_S + CHECK_S + SLACK_S + 0.05


async def test_watchdogs_hook_moves_to_the_pacer_it_is_attached_to() -> None:
    """``Watchdogs.attach(pacer)`` is the wiring hook: one subscription, every
    ``interval`` worth of ticks, moved (not doubled) by a second attach."""
    from audiosocket_gw.pacer import Pacer

    async with gateway() as (gw, _):
        dogs = gw.component(Watchdogs)
        other = Pacer()
        dogs.attach(other)
        assert [s.n_ticks for s in other._every] == [round(0.25 / 0.020)]
        assert all(s.fn != dogs._on_tick for s in gw.pacer._every)
        dogs.attach(gw.pacer)
        assert other._every == ()
        await dogs.stop()
        assert all(s.fn != dogs._on_tick for s in gw.pacer._every)
