"""A Media Streams app shaped like Twilio's and OpenAI's samples runs unchanged behind the gateway.

Each test runs the real gateway in process (``running_gateway(backend="twilio-stream",
stream_url=app.url)``), the fake app of :mod:`audiosocket_gw.testing.fakeapp` behaving as
the samples do (``mark_each_chunk``, ``barge_in``, ``reply_ms``) and a simulated Asterisk
call (:func:`run_simulation`). What the app believes (mark echoes, how
much was played, when it cut) is checked against what the caller actually heard: the
simulator's per-frame arrival times (``CallReport.heard``).

Clocks: ``heard`` times are relative to the simulated call's connect
(``CallReport.connected_at``); the app stamps events with the same
:func:`time.monotonic` clock, in the same process.
"""

from __future__ import annotations

import asyncio

from audiosocket_gw.testing.bench.bargein import caller_audio
from audiosocket_gw.testing.fakeapp import AppSession, FakeTwilioApp
from audiosocket_gw.testing.simulator.pbx import CallPlan, CallReport, run_simulation
from tests.helpers import MS, running_gateway

LOUD = 256.0  # the simulator's silence threshold (mean |sample|)


def sample_app(*, greeting_ms: int, delta_ms: int = 100, reply_ms: int = 0) -> FakeTwilioApp:
    """The samples' behaviour: ``delta_ms`` deltas each followed by a mark, barge-in."""
    return FakeTwilioApp(greeting_ms=greeting_ms, greeting_chunk_bytes=8 * delta_ms,
                         mark_each_chunk=True, barge_in=True, reply_ms=reply_ms,
                         path="/media-stream")


async def place_call(app: FakeTwilioApp, seconds: float,
                     speech: list[tuple[float, float]]) -> tuple[CallReport, AppSession]:
    async with running_gateway(backend="twilio-stream", stream_url=app.url) as gw:
        plan = CallPlan(seconds=seconds, audio=caller_audio(seconds + 1.0, speech))
        sim = await run_simulation(*gw.audiosocket.address, plans=[plan])
        call = app.sessions[0]
        await asyncio.wait_for(call.closed.wait(), 2.0)  # the stop after the hangup
    return sim.calls[0], call


async def test_greeting_heard_and_each_mark_echoed_after_its_audio() -> None:
    async with sample_app(greeting_ms=400, delta_ms=100) as app:
        # The caller only speaks after the greeting: nothing to interrupt.
        report, call = await place_call(app, 1.0, [(0.8, 2.0)])
    assert report.ok, report.error
    assert call.violations == []
    assert report.connected_at is not None
    t0 = report.connected_at
    loud = [t0 + t for t, level in report.heard if level >= LOUD]
    assert len(loud) == 20  # 400 ms of greeting, whole
    assert max(b - a for a, b in zip(loud, loud[1:], strict=False)) < 0.035  # paced, no gap
    names = [f"greeting:{n}" for n in range(4)]
    assert [name for _, name in call.mark_echoes()] == names
    for k, (echo_at, _) in enumerate(call.mark_echoes()):
        last_frame = loud[5 * k + 4]  # the last 20 ms frame of delta k
        assert -10 * MS <= echo_at - last_frame <= 45 * MS, (k, echo_at - last_frame)
    # Caller speech with no mark pending: the sample's logic sends no clear.
    assert len(call.speech_starts) == 1
    assert call.interruptions == [] and call.mark_queue == []
    assert all(m["event"] != "clear" for _, m in call.timed_sent())


async def test_barge_in_clear_silences_the_line_within_a_tick() -> None:
    async with sample_app(greeting_ms=2400, delta_ms=100, reply_ms=300) as app:
        report, call = await place_call(app, 2.0, [(0.8, 1.1)])
    assert report.ok, report.error
    assert call.violations == []
    assert len(call.interruptions) == 1
    cut = call.interruptions[0]
    assert cut.item == "greeting"
    assert report.connected_at is not None
    t0 = report.connected_at
    heard = [(t0 + t, level >= LOUD) for t, level in report.heard]
    reply_at = next(t for t, m in call.timed_sent() if m["event"] == "media" and t > cut.at)

    # The caller's line goes silent on the next tick after the clear.
    first_silent = next(t for t, loud in heard if t >= cut.at and not loud)
    assert first_silent - cut.at <= 40 * MS, first_silent - cut.at
    assert not any(loud for t, loud in heard if first_silent <= t < reply_at)
    # Every pending mark came back at once, marking its audio as not played.
    pending = set(cut.pending_marks)
    assert len(pending) >= 10
    late = [t - cut.at for t, name in call.mark_echoes() if name in pending]
    assert len(late) == len(pending) and max(late) <= 40 * MS and min(late) >= 0
    # Each mark sent came back exactly once (the reply's after its audio played).
    assert sorted(n for _, n in call.mark_echoes()) == sorted(n for _, n in call.sent_marks())
    assert call.mark_queue == []

    # What the app computed as played matches what the caller heard.
    heard_ms = 20 * sum(1 for t, loud in heard if loud and t < first_silent)
    assert abs(heard_ms - cut.elapsed_ms) <= 60, (heard_ms, cut.elapsed_ms)
    assert cut.played_ms_by_marks <= heard_ms <= cut.played_ms_by_marks + 100 + 40
    assert len(pending) == 24 - cut.played_ms_by_marks // 100
    # Turn-taking went on: the reply to the caller was heard whole after the cut.
    reply = [t for t, loud in heard if loud and t >= reply_at]
    assert len(reply) == 15
