"""What every component is given: one small immutable context.

The composition root (``gateway.py``) builds one ``GatewayContext`` and hands it, with
the component's own settings group, to each component's constructor. A component
reads what it needs from the context, subscribes to ``events`` in ``start()``,
exposes its HTTP routes through ``routes()`` and never reaches into another
component. Tests build a context with real parts (a SQLite store in a temp dir, a
fresh metrics registry, a fake clock) and one component alone: see
``tests/components/context.py: make_context``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from .clock import Clock
from .events import CallEvents
from .metrics import Metrics
from .settings import Settings
from .tenants import TenantsConfig

if TYPE_CHECKING:
    from .admission import Admission
    from .backends.base import CallInfo
    from .call import Call
    from .server import CallRegistry
    from .status import StatusWriter
    from .store.base import CallStore

__all__ = ["Clock", "Component", "GatewayContext", "TickSource"]


class TickSource(Protocol):
    """The pacer's subscription API: run ``fn`` every ``n`` 20 ms ticks."""

    def every(self, n_ticks: int, fn: Callable[[], None]) -> Callable[[], None]: ...


class Component(Protocol):
    """A feature beyond the AudioSocket core (AMI, routing, recordings...)."""

    def routes(self) -> Sequence[web.RouteDef]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class GatewayContext:
    """Shared, immutable references; the objects they point to have their own locks.

    ``calls`` is the live AudioSocket calls by id (read-only for components);
    ``audiosocket_address`` returns this node's AudioSocket ``host:port`` as
    Asterisk should dial it (known once the server is bound).
    """

    settings: Settings
    tenants: TenantsConfig
    store: CallStore
    registry: CallRegistry
    calls: Mapping[str, Call]
    metrics: Metrics
    events: CallEvents
    status: StatusWriter
    admission: Admission
    ticks: TickSource
    call_info: Callable[..., CallInfo]
    clock: Clock = field(default_factory=Clock)
