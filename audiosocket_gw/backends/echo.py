"""Echo backend: the caller hears themself after a fixed delay (a line check).

The delay is a block of silence queued just before the first echoed audio (and again
after a pause that let the queue run dry), so echo costs no task and no timer: the
pacer's clock does the waiting, and the caller hears each frame ``delay_ms`` (plus at
most one tick) after sending it.

Echo's utterances are the caller's talk spurts: frames keep coming every 20 or 30 ms
while the caller's phone sends them, and stop while it does not (silence suppression,
DTX). A frame arriving more than ``PAUSE_S`` after the previous one starts a new
utterance (``end_of_audio`` first), so the ticks the bot sat idle during the pause are
not underruns, while a frame merely late inside a spurt still is. Audio is queued in
whole 20 ms frames (a 30 ms frame's extra 10 ms waits here for the next frame), so
the playout never holds a partial tail across a pause.
"""

from __future__ import annotations

import time
from typing import Final

from ..playout import FRAME_BYTES
from .base import Backend, BackendSession, CallControl, CallInfo

PAUSE_S: Final = 0.060
"""No caller frame for longer than this: the caller paused (Asterisk sends one every
20 or 30 ms while the caller's phone sends audio)."""


class EchoSession(BackendSession):
    __slots__ = ("_control", "_delay_bytes", "_last_at", "_primed", "_rest")

    def __init__(self, control: CallControl, delay_ms: int) -> None:
        self._control = control
        self._delay_bytes = delay_ms * 16
        self._primed = False
        self._rest = b""  # less than a frame, waiting for the next caller frame
        self._last_at = 0.0

    def on_audio(self, pcm: bytes) -> None:
        control = self._control
        now = time.monotonic()
        if now - self._last_at > PAUSE_S:
            control.end_of_audio()  # after a pause: a new talk spurt, the bot was idle
            if not control.bot_audio_pending:
                self._primed = False  # played out: the delay is queued again
        self._last_at = now
        if self._rest or not self._primed or len(pcm) != FRAME_BYTES:
            if not self._primed:
                self._primed = True
                pcm = bytes(self._delay_bytes) + pcm
            if self._rest:
                pcm = self._rest + pcm
            whole = len(pcm) - len(pcm) % FRAME_BYTES
            self._rest = pcm[whole:]
            if not whole:
                return
            pcm = pcm[:whole]
        control.play(pcm)


class EchoBackend(Backend):
    name = "echo"
    local_barge_in = False  # a line check: the caller talking must not cut their echo

    def __init__(self, delay_ms: int = 200) -> None:
        self.delay_ms = delay_ms

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        delay = call.agent_cfg.echo_delay_ms if call.agent_cfg is not None else self.delay_ms
        return EchoSession(control, delay)
