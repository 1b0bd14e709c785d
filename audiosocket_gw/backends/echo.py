"""Echo backend: the caller hears themself after a fixed delay (a line check).

The delay is a block of silence queued just before the first echoed audio, so echo
costs no task and no timer: the pacer's clock does the waiting, and the caller hears
each frame ``delay_ms`` (plus at most one tick) after sending it.

Echo has no utterances of its own: each caller frame is complete when it arrives, so
it is queued as whole 20 ms frames and closed at once (``end_of_audio``). A caller
who pauses (no frames, as with DTX) leaves an idle bot, not a run of underruns; a
30 ms frame's extra 10 ms waits here for the next frame rather than being padded.
"""

from __future__ import annotations

from ..playout import FRAME_BYTES
from .base import Backend, BackendSession, CallControl, CallInfo


class EchoSession(BackendSession):
    __slots__ = ("_control", "_delay_bytes", "_primed", "_rest")

    def __init__(self, control: CallControl, delay_ms: int) -> None:
        self._control = control
        self._delay_bytes = delay_ms * 16
        self._primed = False
        self._rest = b""  # less than a frame, waiting for the next caller frame

    def on_audio(self, pcm: bytes) -> None:
        control = self._control
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
        control.end_of_audio()


class EchoBackend(Backend):
    name = "echo"
    local_barge_in = False  # a line check: the caller talking must not cut their echo

    def __init__(self, delay_ms: int = 200) -> None:
        self.delay_ms = delay_ms

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        delay = call.agent_cfg.echo_delay_ms if call.agent_cfg is not None else self.delay_ms
        return EchoSession(control, delay)
