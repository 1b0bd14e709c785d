"""A ``GatewayContext`` built from real parts, without ``gateway.py``, for component tests.

``make_context(tmp_path, tenants_toml, env)`` (an async context manager) yields a
``Harness``: the context plus what a test drives it with:

* ``clock``: a ``FakeClock`` (wall and monotonic, moved only by ``advance``);
* ``ticks``: a ``ManualTicks`` source (the pacer's ``every()``; ``advance(n)`` runs
  the subscribers due within the next ``n`` ticks, as the pacer would);
* ``calls``: the plain dict behind ``ctx.calls``;
* ``call_metrics``: the ``CallMetrics`` the status writer and admission count into.

Everything else is the real thing: ``Settings.load``, ``load_tenants``, an opened
``SqliteCallStore`` in ``tmp_path`` (closed on exit), ``Metrics``, ``CallRegistry``
(on the fake monotonic clock), ``CallEvents``, ``StatusWriter`` and ``Admission``.

``open_call(h, call_id)`` makes a real ``audiosocket_gw.call.Call`` on a real
loopback TCP connection (the server side's transport, as the AudioSocket server
would hand it over), claims the id in the registry, adds it to ``calls`` and emits
``events.started``; ending it removes it and emits ``events.ended``, as the server
does.

The call gets the context's clock, as the AudioSocket server gives it the
gateway's: its ``started_at`` and speech/bot-audio times are on the fake clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_gw.admission import Admission
from audiosocket_gw.ami_metrics import CallMetrics
from audiosocket_gw.backends.base import CallInfo
from audiosocket_gw.call import Call, LevelBatch
from audiosocket_gw.config import Config
from audiosocket_gw.context import Clock, GatewayContext
from audiosocket_gw.events import CallEvents
from audiosocket_gw.metrics import Metrics
from audiosocket_gw.server import CallRegistry
from audiosocket_gw.settings import Settings
from audiosocket_gw.status import StatusWriter
from audiosocket_gw.store.sqlite import SqliteCallStore
from audiosocket_gw.tenants import Agent, load_tenants
from tests.helpers import until

AUDIOSOCKET_ADDRESS = ("127.0.0.1", 9092)
"""What ``Admission`` believes the AudioSocket server is bound to."""

DEFAULT_TOML = """
default_agent = "bot"

[tenants.acme]
max_concurrent_calls = 2

[agents.bot]
tenant = "acme"
backend = "echo"

[numbers."+15551230000"]
agent = "bot"
"""


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self, wall: float = 1_750_000_000.0) -> None:
        self._wall = wall
        self._mono = 1000.0

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def clock(self) -> Clock:
        return Clock(wall=self.wall, monotonic=self.monotonic)


class _Sub:
    def __init__(self, ticks: ManualTicks, entry: list[Any]) -> None:
        self._ticks = ticks
        self._entry = entry

    def cancel(self) -> None:
        if self._entry in self._ticks._subs:
            self._ticks._subs.remove(self._entry)


class ManualTicks:
    """The pacer's ``every()`` with ticks fired by the test (``advance``)."""

    def __init__(self) -> None:
        self._subs: list[list[Any]] = []  # [period, ticks left, fn]
        self.ticks = 0

    def every(self, n_ticks: int, fn: Callable[[float], None]) -> _Sub:
        if n_ticks < 1:
            raise ValueError("n_ticks must be >= 1")
        entry: list[Any] = [n_ticks, n_ticks, fn]
        self._subs.append(entry)
        return _Sub(self, entry)

    def advance(self, n: int = 1, now: float = 0.0) -> None:
        for _ in range(n):
            self.ticks += 1
            for entry in tuple(self._subs):
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[1] = entry[0]
                    entry[2](now)

    def __len__(self) -> int:
        return len(self._subs)


@dataclass
class Harness:
    ctx: GatewayContext
    clock: FakeClock
    ticks: ManualTicks
    calls: dict[str, Call]
    call_metrics: CallMetrics
    store: SqliteCallStore
    tmp_path: Path
    _cleanups: list[Callable[[], Any]] = field(default_factory=list)

    def agent(self, name: str) -> Agent:
        agent = self.ctx.tenants.agent(name)
        assert agent is not None, name
        return agent


def call_info(agent: Agent, call_id: str, **kw: str) -> CallInfo:
    """Same as ``gateway.call_info`` (the composition root is not imported here)."""
    return CallInfo(call_id=call_id, tenant=agent.tenant, agent=agent.name,
                    agent_cfg=agent, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def make_context(tmp_path: Path, tenants_toml: str | None = None,
                       env: Mapping[str, str] | None = None,
                       *, allow_unregistered: bool = False) -> AsyncIterator[Harness]:
    toml = tmp_path / "tenants.toml"
    toml.write_text(DEFAULT_TOML if tenants_toml is None else tenants_toml)
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    core = Config.from_env(env={}, data_dir=str(data_dir), audiosocket="127.0.0.1:0",
                           http="127.0.0.1:0", config=str(toml),
                           allow_unregistered=allow_unregistered)
    settings = Settings.load(dict(env or {}), core=core)
    tenants = load_tenants(core.config)
    clock = FakeClock()
    ticks = ManualTicks()
    metrics = Metrics()
    call_metrics = CallMetrics(metrics.registry)
    store = SqliteCallStore(data_dir / "aigw.sqlite")
    await store.open()
    events = CallEvents()
    default_agent = tenants.agents[tenants.default_agent]
    registry = CallRegistry(allow_unregistered=allow_unregistered, clock=clock.monotonic,
                            default=lambda cid: call_info(default_agent, cid))
    status = StatusWriter(store, call_metrics, events, clock.wall)
    admission = Admission(
        tenants=tenants, store=store, status=status, registry=registry,
        call_info=call_info, routing=settings.routing, metrics=call_metrics,
        clock=clock.wall, bound_audiosocket=lambda: AUDIOSOCKET_ADDRESS,
    )
    calls: dict[str, Call] = {}
    ctx = GatewayContext(
        settings=settings, tenants=tenants, store=store, registry=registry, calls=calls,
        metrics=metrics, events=events, status=status, admission=admission, ticks=ticks,
        call_info=call_info, clock=clock.clock(),
    )
    h = Harness(ctx=ctx, clock=clock, ticks=ticks, calls=calls, call_metrics=call_metrics,
                store=store, tmp_path=tmp_path)
    try:
        yield h
    finally:
        for call in list(calls.values()):
            call.end("test-over", outcome="shutdown", send_hangup=False)
        for cleanup in reversed(h._cleanups):
            result = cleanup()
            if asyncio.iscoroutine(result):
                await result
        await store.close()


async def _loopback_transport(h: Harness) -> asyncio.Transport:
    """The server side of a fresh loopback TCP connection (closed with the harness)."""
    accepted: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class _Side(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            if not accepted.done():
                accepted.set_result(transport)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    transport = await asyncio.wait_for(accepted, 2.0)

    async def close() -> None:
        for t in (transport, client):
            if not t.is_closing():
                t.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the transports finish closing

    h._cleanups.append(close)
    return transport


async def open_call(h: Harness, call_id: str | None = None, *, backend_name: str = "echo",
                    info: CallInfo | None = None, start: bool = True) -> Call:
    """A real ``Call`` on a real loopback connection, as the AudioSocket server opens
    one: the id is claimed from the registry (an admitted call gets its agent), then
    the call is added to ``calls`` and ``events.started`` emitted (``start=False``:
    neither). Its end removes it from ``calls`` and emits ``events.ended``. With
    ``info`` the registry is not asked (a call the gateway knows nothing about)."""
    ctx = h.ctx
    call_id = call_id or (info.call_id if info is not None else str(uuid.uuid4()))
    if info is None:
        info = ctx.registry.claim(call_id)
        assert info is not None, f"call {call_id} is not registered"
    transport = await _loopback_transport(h)

    def on_end(call: Call) -> None:
        h.calls.pop(call.call_id, None)
        ctx.events.ended.emit(call)

    call = Call(info, transport, backend_name=backend_name, config=ctx.settings.core,
                metrics=ctx.metrics, on_end=on_end, levels=LevelBatch(immediate=True),
                clock=ctx.clock)
    if start:
        h.calls[call_id] = call
        ctx.events.started.emit(call)
    return call


until_async = until  # the one poller in tests.helpers takes async predicates too
