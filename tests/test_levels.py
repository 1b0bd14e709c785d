"""``LevelBatch``: one numpy pass per tick over every call's bot and caller frames."""

from __future__ import annotations

import numpy as np

from audiosocket_gw.call import LevelBatch
from audiosocket_gw.dsp.vad import frame_level


def pcm(value: int, n: int = 160) -> bytes:
    return np.full(n, value, dtype="<i2").tobytes()


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, float, int]] = []

    def on_caller_level(self, level: float, samples: int) -> None:
        self.events.append(("caller", level, samples))

    def on_bot_level(self, level: float) -> None:
        self.events.append(("bot", level, 0))


def test_bot_levels_come_before_the_caller_levels_of_the_same_tick() -> None:
    a, b = Seen(), Seen()
    batch = LevelBatch()
    batch.add(a, pcm(100))
    batch.add_bot(a, pcm(-3000))
    batch.add(b, pcm(7, 240))
    batch.add(a, pcm(200))
    assert a.events == [] and b.events == []  # nothing measured before the tick
    batch.run()
    assert a.events == [("bot", 3000.0, 0), ("caller", 100.0, 160), ("caller", 200.0, 160)]
    assert b.events == [("caller", 7.0, 240)]
    batch.run()  # nothing new: nothing reported
    assert len(a.events) == 3
    batch.add_bot(b, pcm(500))  # a bot frame alone (silent caller) is still measured
    batch.run()
    assert b.events[-1] == ("bot", 500.0, 0)


def test_immediate_batch_measures_on_add() -> None:
    a = Seen()
    batch = LevelBatch(immediate=True)
    batch.add_bot(a, pcm(-40))
    batch.add(a, pcm(9))
    assert a.events == [("bot", frame_level(pcm(-40)), 0), ("caller", 9.0, 160)]
