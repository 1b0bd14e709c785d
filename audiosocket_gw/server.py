"""The AudioSocket TCP server: a thin asyncio layer over ``audiosocket.Decoder``.

One ``asyncio.Protocol`` per connection (no reader task per call). The protocol waits
for the UUID frame, asks the ``CallRegistry`` whether the id is expected, then hands
the connection to a ``Call`` and feeds it audio and DTMF. Everything that is wrong on
one connection ends that connection only, with one log line and one counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from . import audiosocket as asp
from .backends.base import Backend, CallInfo
from .call import Call, LevelBatch, close_bounded
from .clock import Clock
from .config import Config
from .lograte import LogRate
from .metrics import Metrics
from .pacer import Pacer

log = logging.getLogger("audiosocket_gw.server")

_SLIN: Final = int(asp.Kind.SLIN)
_SETTLE_ITERATIONS: Final = 5
"""Event-loop iterations a shutdown gives connections still being set up or closed."""


class CallRegistry:
    """Call ids the gateway expects (pre-registered by routing or Originate).

    Entries expire after ``ttl`` seconds if no AudioSocket claims them. With
    ``allow_unregistered`` any UUID is accepted with the default agent.

    ``lookup`` (set with a shared store): an id registered by another worker or node
    (the kernel spreads AudioSocket connections over the workers of a port) is
    looked up in the store, once, at call start, within ``lookup_timeout`` seconds;
    only then does the default agent apply.
    """

    lookup: Callable[[str], Awaitable[CallInfo | None]] | None = None
    lookup_timeout: float = 1.0

    def __init__(self, *, allow_unregistered: bool, ttl: float = 120.0,
                 clock: Callable[[], float] = time.monotonic,
                 default: Callable[[str], CallInfo] = lambda cid: CallInfo(call_id=cid)) -> None:
        self.allow_unregistered = allow_unregistered
        self.default = default
        self.ttl = ttl
        self._clock = clock
        self._expected: dict[str, tuple[CallInfo, float]] = {}

    def register(self, info: CallInfo, *, ttl: float | None = None) -> None:
        """Expect ``info.call_id`` for ``ttl`` seconds (default: the registry's)."""
        self._purge()
        self._expected[info.call_id] = (info, self._clock() + (self.ttl if ttl is None else ttl))

    def claim(self, call_id: str) -> CallInfo | None:
        self._purge()
        entry = self._expected.pop(call_id, None)
        if entry is not None:
            return entry[0]
        if self.allow_unregistered:
            return self.default(call_id)
        return None

    def is_registered(self, call_id: str) -> bool:
        self._purge()
        return call_id in self._expected

    def discard(self, call_id: str) -> None:
        self._expected.pop(call_id, None)

    def amend(self, call_id: str, metadata: Mapping[str, str]) -> bool:
        """Add ``metadata`` to an expected call's ``CallInfo`` (False: not expected)."""
        entry = self._expected.get(call_id)
        if entry is None:
            return False
        info, expires = entry
        info = dataclasses.replace(info, metadata={**info.metadata, **metadata})
        self._expected[call_id] = (info, expires)
        return True

    def _purge(self) -> None:
        now = self._clock()
        stale = [k for k, (_, exp) in self._expected.items() if exp < now]
        for k in stale:
            del self._expected[k]


class AudioSocketProtocol(asyncio.Protocol):
    __slots__ = (
        "_bytes", "_counted_ip", "_pending", "_rejected", "_server", "_timer", "call", "decoder",
        "peer", "transport",
    )

    def __init__(self, server: AudioSocketServer) -> None:
        self._server = server
        self.decoder = asp.Decoder(max_payload=server.config.max_payload)
        self.transport: asyncio.Transport | None = None
        self.call: Call | None = None
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._bytes = 0
        self._rejected = False
        self._counted_ip: str | None = None
        self._pending = False

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._server._open_sockets.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._server.config.socket_sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self._server.config.socket_sndbuf)
        server = self._server
        if not server.accepting:
            self._reject("shutting_down", "gateway is shutting down")
            return
        if len(server.connections) >= server.config.max_connections:
            self._reject("capacity", f"at capacity ({server.config.max_connections} connections)")
            return
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        limit = server.max_connections_per_peer
        if limit and server.per_peer.get(ip, 0) >= limit:
            self._reject("peer_capacity", f"{ip} already holds {limit} connections")
            return
        server.per_peer[ip] = server.per_peer.get(ip, 0) + 1
        self._counted_ip = ip
        server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(server.config.uuid_timeout, self._uuid_timeout)

    def data_received(self, data: bytes) -> None:
        self._bytes += len(data)
        dec = self.decoder
        call = self.call
        if call is not None and (pcm := dec.whole_slin_frame(data)) is not None:
            call.on_caller_audio(pcm)  # one whole frame, the usual case: no buffering
            self._server.pacer.poll()
            return
        dec.feed(data)
        try:
            while (ev := dec.next_event()) is not None:
                if call is not None and type(ev) is asp.Audio and ev.kind == _SLIN:
                    call.on_caller_audio(ev.data)
                    continue
                self._event(ev)
                call = self.call
                if self.transport is None or self.transport.is_closing() or self._pending:
                    return
        except asp.ProtocolError as exc:
            self._protocol_error(exc)
        self._server.pacer.poll()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        server._open_sockets.discard(self)
        if not server._open_sockets:
            server._sockets_closed.set()
        server.connections.discard(self)
        ip, self._counted_ip = self._counted_ip, None
        if ip is not None:
            left = server.per_peer.get(ip, 1) - 1
            if left > 0:
                server.per_peer[ip] = left
            else:
                server.per_peer.pop(ip, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.call is not None:
            try:
                self.decoder.eof()
            except asp.ProtocolError as perr:
                self._server.metrics.protocol_errors.labels(perr.reason).inc()
                self.call.log.info("closed mid-frame: %s", perr)
            self.call.end("caller-hangup", outcome="completed", send_hangup=False)
        elif self._bytes == 0 and not self._rejected:
            # Asterisk connects before checking the channel is answered, then closes
            # without a byte ("Channel is not answered"): not worth more than debug.
            log.debug("connection from %s closed before sending anything", self.peer)
            server.metrics.connections_rejected.labels("closed_before_uuid").inc()

    # -- events ------------------------------------------------------------------

    def _event(self, ev: asp.Event) -> None:
        call = self.call
        if isinstance(ev, asp.CallUUID):
            self._on_uuid(str(ev.uuid))
        elif call is None:  # pragma: no cover - the decoder enforces UUID first
            self._protocol_error(asp.UnexpectedFrame("frame before UUID"))
        elif isinstance(ev, asp.Audio):
            self._protocol_error(
                asp.BadPayload(f"audio kind 0x{ev.kind:02x} ({ev.rate} Hz) not supported here")
            )
        elif isinstance(ev, asp.Dtmf):
            call.on_dtmf(ev.digit)
        elif isinstance(ev, asp.Hangup):
            call.end("caller-hangup", outcome="completed", send_hangup=False)
        elif isinstance(ev, asp.ErrorFrame):
            call.log.warning("Asterisk sent an error frame (code %s)", ev.code)
            call.end("asterisk-error", outcome="asterisk_error", send_hangup=False)

    def _on_uuid(self, call_id: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        server = self._server
        if call_id in server.calls:
            self._reject("duplicate", f"call {call_id} is already connected", hangup=True)
            return
        registry = server.registry
        if registry.lookup is not None and not registry.is_registered(call_id):
            # Registered elsewhere (another worker or node)? One bounded store read;
            # the connection's frames wait in the decoder and the socket meanwhile.
            assert self.transport is not None
            self._pending = True
            self.transport.pause_reading()
            task = asyncio.get_running_loop().create_task(self._claim_shared(call_id))
            server.claims.add(task)
            task.add_done_callback(server.claims.discard)
            return
        self._open(call_id, registry.claim(call_id))

    async def _claim_shared(self, call_id: str) -> None:
        registry = self._server.registry
        assert registry.lookup is not None
        info: CallInfo | None = None
        try:
            info = await asyncio.wait_for(registry.lookup(call_id), registry.lookup_timeout)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - then unregistered
            log.warning("call id lookup in the store failed: %s", type(exc).__name__)
        if info is None:
            info = registry.claim(call_id)
        else:
            registry.discard(call_id)
        self._pending = False
        t = self.transport
        if t is None or t.is_closing():
            return
        if call_id in self._server.calls:
            self._reject("duplicate", f"call {call_id} is already connected", hangup=True)
            return
        self._open(call_id, info)
        if self.call is not None and not t.is_closing():
            t.resume_reading()
            self.data_received(b"")  # the frames that arrived behind the UUID

    def _open(self, call_id: str, info: CallInfo | None) -> None:
        if info is None:
            self._reject("unregistered", f"call id {call_id} was not registered", hangup=True)
            return
        assert self.transport is not None
        self.call = self._server.open_call(info, self.transport)

    def _uuid_timeout(self) -> None:
        self._timer = None
        if self.call is None:
            self._reject("uuid_timeout", "no UUID frame within the timeout")

    def _protocol_error(self, exc: asp.ProtocolError) -> None:
        server = self._server
        server.metrics.protocol_errors.labels(exc.reason).inc()
        if self.call is not None:
            self.call.log.warning("protocol error from %s: %s", self.peer, exc)
            self.call.end("protocol-error", outcome="protocol_error")
        else:
            log.warning("protocol error from %s before call start: %s", self.peer, exc)
            self._close(hangup=True)

    def _reject(self, reason: str, why: str, *, hangup: bool = False) -> None:
        self._rejected = True
        self._server.metrics.connections_rejected.labels(reason).inc()
        # A connection storm must not write one line per connection: per reason, one
        # line per interval with the count (the metric above counts every one).
        if (n := self._server.reject_log.allow(reason)) is not None:
            log.warning("rejected connection from %s: %s%s", self.peer, why,
                        LogRate.suffix(n))
        self._close(hangup=hangup)

    def _close(self, *, hangup: bool) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if hangup:
                t.write(asp.HANGUP_FRAME)
            t.close()
            close_bounded(t, self._server.config.write_stall_timeout)


class AudioSocketServer:
    """Owns the listening socket, the live connections and calls, and the pacer."""

    def __init__(
        self,
        config: Config,
        backend_for: Callable[[CallInfo], Backend],
        metrics: Metrics,
        registry: CallRegistry,
        pacer: Pacer,
        *,
        on_call_start: Callable[[Call], None] = lambda call: None,
        on_call_end: Callable[[Call], None] = lambda call: None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock if clock is not None else Clock()
        self.backend_for = backend_for
        self.metrics = metrics
        self.registry = registry
        self.pacer = pacer
        self.connections: set[AudioSocketProtocol] = set()
        self._open_sockets: set[AudioSocketProtocol] = set()
        """Every accepted connection until its socket is closed, turned away or not."""
        self._sockets_closed = asyncio.Event()
        """Set whenever the last of ``_open_sockets`` is closed."""
        self.calls: dict[str, Call] = {}
        self.reuse_port = False
        """Listen with SO_REUSEPORT (``serve --workers N``: the workers share the port)."""
        self.claims: set[asyncio.Task[None]] = set()
        """Call-id lookups in the shared store in flight (``CallRegistry.lookup``)."""
        self.accepting = True
        self._server: asyncio.Server | None = None
        self._ended: set[Call] = set()
        self._drained = asyncio.Event()
        self.levels = LevelBatch()
        pacer.before_tick.append(self.levels.run)
        self._on_call_start = on_call_start
        self._on_call_end = on_call_end
        self.reject_log = LogRate()
        self.per_peer: dict[str, int] = {}
        """Live connections per peer IP."""
        self.max_connections_per_peer = config.max_connections_per_peer
        """At most this many connections from one IP (0: only ``max_connections``). One
        Asterisk normally holds every call; with several PBXs, one must not starve the
        others."""

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def start(self) -> None:
        host, port = self.config.audiosocket_addr
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AudioSocketProtocol(self), host, port, reuse_address=True, backlog=1024,
            reuse_port=self.reuse_port or None,
        )
        self.pacer.start()
        log.info("AudioSocket listening on %s:%d", *self.address)

    def open_call(self, info: CallInfo, transport: asyncio.Transport) -> Call:
        backend = self.backend_for(info)
        call = Call(
            info,
            transport,
            backend_name=backend.name,
            config=self.config,
            metrics=self.metrics,
            on_end=self._call_ended,
            barge_in=backend.local_barge_in,
            levels=self.levels,
            clock=self.clock,
            ticker=self.pacer,
        )
        self.calls[info.call_id] = call
        self.metrics.active_calls.labels(backend.name).inc()
        self.pacer.add(call)
        call.log.info("connected (tenant %s, agent %s, backend %s)", info.tenant, info.agent,
                      backend.name)
        self._on_call_start(call)
        call.attach(backend.create(info, call))
        return call

    def _call_ended(self, call: Call) -> None:
        self.pacer.remove(call)
        if self.calls.pop(call.call_id, None) is not None:
            self.metrics.active_calls.labels(call.backend_name).dec()
        self._ended.add(call)
        if not self.calls:
            self._drained.set()
        self._on_call_end(call)
        asyncio.get_running_loop().create_task(self._reap(call))

    async def _reap(self, call: Call) -> None:
        await call.wait_closed()
        self._ended.discard(call)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let calls finish for ``grace`` seconds, hang up the rest."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.accepting = False
        if self._server is not None:
            self._server.close()
        if self.calls:
            log.info("shutdown: waiting up to %.1f s for %d calls", grace, len(self.calls))
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        for call in list(self.calls.values()):
            call.end("shutdown", outcome="shutdown")
        for conn in list(self.connections):
            conn._close(hangup=False)
        for call in list(self._ended):
            await call.wait_closed()
        await self.pacer.stop()
        if self._server is not None:
            await self._server.wait_closed()
        await self._close_sockets()

    async def _close_sockets(self) -> None:
        """Close every accepted socket before the shutdown returns.

        A connection accepted just before the listening socket closed is set up by a
        task of asyncio's that ``Server.close()`` does not wait for (Python 3.11), and
        a closed transport's socket is only closed on a later loop iteration: if the
        loop stops right after the shutdown, those sockets were left to the garbage
        collector. So: give them the iterations to be set up and turned away (the
        server no longer accepts), and a peer that is slow to read its bounded time
        (``write_stall_timeout``, as ``close_bounded`` gives it); then abort whatever
        is still open, and wait for that.
        """
        for _ in range(_SETTLE_ITERATIONS):
            await asyncio.sleep(0)
        if self._open_sockets:
            self._sockets_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sockets_closed.wait(),
                                       self.config.write_stall_timeout)
        for conn in list(self._open_sockets):
            if conn.transport is not None:
                conn.transport.abort()
        for _ in range(_SETTLE_ITERATIONS):
            if not self._open_sockets:
                break
            await asyncio.sleep(0)
