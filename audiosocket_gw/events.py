"""Typed call events: the one way components hear about calls.

Components never append to each other's lists; they subscribe to a ``Signal`` of the
gateway's ``CallEvents`` in their ``start()`` (so constructors have no side effects)
and the composition root emits. Subscribers run synchronously, in subscription
order, on the event loop: each must return at once (spawn a task for I/O). One
failing subscriber is logged and does not stop the others, nor the call.

Events:

- ``started``: an AudioSocket call connected (``Call``), before its backend opens;
- ``ended``: it ended (``Call``, with ``end_reason``), after it left the pacer;
- ``status_changed``: the status writer applied an input (``StatusChange``);
- ``ami_message``: one AMI event, after the call tracker has correlated it;
- ``answered_by``: answering-machine detection decided (the record after it was stored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .ami.protocol import AmiMessage
    from .call import Call
    from .callstate import CallInput
    from .store.base import CallRecord

__all__ = ["CallEvents", "Signal", "StatusChange"]

log = logging.getLogger("audiosocket_gw.events")

T = TypeVar("T")


class Signal(Generic[T]):
    """An ordered list of subscribers to one kind of event."""

    __slots__ = ("_name", "_subscribers")

    def __init__(self, name: str) -> None:
        self._name = name
        self._subscribers: list[Callable[[T], None]] = []

    def connect(self, fn: Callable[[T], None]) -> Callable[[], None]:
        """Subscribe ``fn``; returns a function that unsubscribes it."""
        self._subscribers.append(fn)

        def disconnect() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return disconnect

    def emit(self, value: T) -> None:
        for fn in tuple(self._subscribers):
            try:
                fn(value)
            except Exception:
                log.exception("%s subscriber %r failed", self._name, fn)

    def __len__(self) -> int:
        return len(self._subscribers)


@dataclass(frozen=True)
class StatusChange:
    """One input applied to a call's record: the record before and after it."""

    input: CallInput
    before: CallRecord
    after: CallRecord

    @property
    def changed(self) -> bool:
        return self.before.status is not self.after.status


@dataclass(frozen=True)
class CallEvents:
    started: Signal[Call] = field(default_factory=lambda: Signal("call started"))
    ended: Signal[Call] = field(default_factory=lambda: Signal("call ended"))
    status_changed: Signal[StatusChange] = field(
        default_factory=lambda: Signal("status changed"))
    ami_message: Signal[AmiMessage] = field(default_factory=lambda: Signal("AMI message"))
    answered_by: Signal[CallRecord] = field(default_factory=lambda: Signal("answered by"))
