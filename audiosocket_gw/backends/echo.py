"""Echo backend: the caller hears themself after a fixed delay (a line check).

The delay is a block of silence queued just before the first echoed audio, so echo
costs no task and no timer: the pacer's clock does the waiting, and the caller hears
each frame ``delay_ms`` (plus at most one tick) after sending it.
"""

from __future__ import annotations

from .base import Backend, BackendSession, CallControl, CallInfo


class EchoSession(BackendSession):
    __slots__ = ("_control", "_delay_bytes", "_primed")

    def __init__(self, control: CallControl, delay_ms: int) -> None:
        self._control = control
        self._delay_bytes = delay_ms * 16
        self._primed = False

    def on_audio(self, pcm: bytes) -> None:
        if not self._primed:
            self._primed = True
            if self._delay_bytes:
                self._control.play(bytes(self._delay_bytes))
        self._control.play(pcm)


class EchoBackend(Backend):
    name = "echo"
    local_barge_in = False  # a line check: the caller talking must not cut their echo

    def __init__(self, delay_ms: int = 200) -> None:
        self.delay_ms = delay_ms

    def create(self, call: CallInfo, control: CallControl) -> BackendSession:
        delay = call.agent_cfg.echo_delay_ms if call.agent_cfg is not None else self.delay_ms
        return EchoSession(control, delay)
