"""The composition root: the one module that knows every component.

``Gateway`` builds, in this order: the settings (one ``Settings``), the tenants
(loaded and validated once), the store, the metrics registry, the call registry, the
pacer, the typed call events, the status writer and the admission path; from those
one immutable ``GatewayContext``; then each component with the context and its own
settings group. Nothing else in the package imports this module (the CLI does, to
run it; a test enforces it).

Lifecycle (uvicorn's pattern): ``start()`` opens the store, starts the components,
binds the AudioSocket server and the HTTP listener; ``shutdown()`` stops accepting,
drains calls for the grace period, hangs up the rest, stops the components in
reverse order and closes the store; ``serve()`` runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .admission import Admission, call_metadata_of
from .ami.client import AmiClient
from .ami.tracker import CallTracker
from .ami_metrics import CallMetrics
from .api import CallsApi
from .backends.base import Backend, CallInfo
from .call import Call
from .callcontrol import CallController
from .cluster import NodeLease
from .config import Config, ConfigError, format_hostport
from .console.component import PUBLIC_PATHS as CONSOLE_PUBLIC_PATHS
from .console.component import ConsoleComponent, media_link_ok
from .context import Clock, Component, GatewayContext
from .dial import CONSULT_METADATA_KEY
from .events import CallEvents
from .httpapi import PUBLIC_PATHS, ConnectionGuard, auth_middleware, error_middleware
from .metrics import BackendCounters, Metrics
from .metrics_merge import WorkerMetrics
from .pacer import Pacer
from .priority import raise_priority
from .private import write_atomic
from .quality.cost import CostMeter
from .quality.mos import MosMonitor
from .recordings.component import RecordingsComponent
from .rollout import PUBLIC_PATHS as ROLLOUT_PUBLIC_PATHS
from .rollout import RolloutComponent
from .routing import RoutingComponent
from .server import AudioSocketServer, CallRegistry
from .settings import AmiSettings, Settings
from .status import StatusWriter
from .store.factory import build_store
from .telephony import AsteriskProvider
from .tenants import Agent, TenantsConfig, load_tenants
from .transcripts import TranscriptKeeper
from .twilio.callbacks import StatusCallbacks
from .twilio.rest import TwilioRestApi
from .watchdogs import Watchdogs

log = logging.getLogger("audiosocket_gw")

C = TypeVar("C")
_NIL_UUID = "00000000-0000-0000-0000-000000000000"


def make_backend(name: str, settings: Settings, metrics: Metrics,
                 tenants: TenantsConfig | None = None) -> Backend:
    """Build the backend called ``name`` (imported lazily: each pulls its own deps)."""
    config = settings.core
    if name == "echo":
        from .backends.echo import EchoBackend

        return EchoBackend(delay_ms=config.echo_delay_ms)
    if name == "openai":
        from .backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(config, secret=settings.secret)
    if name == "twilio-stream":
        from .backends.twilio_stream import TwilioStreamBackend

        return TwilioStreamBackend.from_config(config, metrics.registry, tenants=tenants,
                                               env=settings.environ, tts=settings.tts,
                                               recording=settings.recording,
                                               allow_private=settings.twilio.allow_private)
    raise ConfigError(f"unknown backend {name!r}")


def effective_tenants(config: Config) -> TenantsConfig:
    """The TOML file's tenants, or an embedded default built from the CLI settings."""
    tenants = load_tenants(config.config)
    if config.config is None:
        default = tenants.agents[tenants.default_agent]
        agent = dataclasses.replace(
            default,
            backend=config.backend,  # type: ignore[arg-type]
            echo_delay_ms=config.echo_delay_ms,
            stream_url=config.stream_url,
            debug_dump=config.debug_dump,
        )
        tenants = dataclasses.replace(tenants, agents={agent.name: agent})
    return tenants


def call_info(agent: Agent, call_id: str, **kw: str) -> CallInfo:
    """The ``CallInfo`` of a call served by ``agent``."""
    return CallInfo(call_id=call_id, tenant=agent.tenant, agent=agent.name,
                    agent_cfg=agent, **kw)  # type: ignore[arg-type]


class _AmiConnection:
    """The AMI client's lifecycle as a component (started after the tracker)."""

    def __init__(self, settings: AmiSettings, metrics: CallMetrics) -> None:
        self.client = AmiClient(settings, on_reconnect=self._lost)
        self.metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        self.client.on_connected.append(self._connected)
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def _lost(self) -> None:
        self.metrics.ami_reconnects.inc()
        self.metrics.ami_connected.set(0)

    async def _connected(self) -> None:
        self.metrics.ami_connected.set(1)


class Gateway:
    def __init__(self, settings: Settings | Config, *, backend: Backend | None = None,
                 clock: Clock | None = None) -> None:
        if isinstance(settings, Config):
            settings = Settings.load(core=settings)
        self.settings = settings
        self.config = config = settings.core
        self.clock = clock or Clock()
        self.metrics = Metrics()
        self.call_metrics = CallMetrics(self.metrics.registry)
        self.tenants = effective_tenants(config)
        self.backends: dict[str, Backend] = {}
        self.metrics.registry.register(BackendCounters(self.backends))
        self._forced_backend = backend
        self.store = build_store(settings.store.database_url, config.data_path,
                                 node_id=settings.store.node_id,
                                 pool_max=settings.store.pool_max)
        self.events = CallEvents()
        self.registry = CallRegistry(
            allow_unregistered=config.allow_unregistered, default=self.default_call_info,
            clock=self.clock.monotonic,
        )
        self._bg: set[asyncio.Task[int]] = set()
        if settings.store.is_postgres:
            self.registry.lookup = self.lookup_call

        self.pacer = Pacer(on_tick_stats=self._tick_stats, spin=config.pacer_spin_ms / 1000.0)
        self.audiosocket = AudioSocketServer(
            config, self.backend_for, self.metrics, self.registry, self.pacer,
            on_call_start=self._leg_started, on_call_end=self._leg_ended,
            clock=self.clock,
        )
        self.audiosocket.reuse_port = settings.store.workers > 1
        st = settings.store
        self.worker_metrics = (
            WorkerMetrics(self.metrics.registry, config.data_path / "metrics", st.worker,
                          st.workers) if st.worker is not None and st.workers > 1 else None)
        self.status = StatusWriter(self.store, self.call_metrics, self.events,
                                   self.clock.wall)
        self.admission = Admission(
            tenants=self.tenants, store=self.store, status=self.status,
            registry=self.registry, call_info=call_info, routing=settings.routing,
            metrics=self.call_metrics, clock=self.clock.wall,
            bound_audiosocket=lambda: self.audiosocket.address,
            node_id=settings.store.node_id,
        )
        self.context = GatewayContext(
            settings=settings, tenants=self.tenants, store=self.store,
            registry=self.registry, calls=self.audiosocket.calls, metrics=self.metrics,
            events=self.events, status=self.status, admission=self.admission,
            ticks=self.pacer, call_info=call_info, clock=self.clock,
        )
        self.components: list[Component] = self._build_components(self.context)
        self._runner: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self.http_guard = ConnectionGuard()
        self._stopping = asyncio.Event()

    def _build_components(self, ctx: GatewayContext) -> list[Component]:
        """Every feature beyond the AudioSocket core, in start order."""
        s = ctx.settings
        ami = _AmiConnection(s.ami, self.call_metrics) if s.ami is not None else None
        client = ami.client if ami is not None else None
        watchdogs = Watchdogs(ctx, self.call_metrics)
        tracker = CallTracker(ctx, client, self.call_metrics, watchdogs=watchdogs)
        provider = AsteriskProvider(ctx, client, tracker, self.call_metrics, s.outbound)
        comps: list[Component] = [
            RoutingComponent(ctx),
            tracker,
            NodeLease(ctx, tracker),
            watchdogs,
        ]
        if ami is not None:
            comps.append(ami)
        recordings = RecordingsComponent(ctx, s.recording)
        twilio_rest = TwilioRestApi(ctx, provider, recordings)
        comps += [
            CallsApi(ctx, provider, twilio_rest),
            CallController(ctx, client, tracker, s.outbound),
            MosMonitor(ctx),
            CostMeter(ctx, s.cost),
            recordings,
            twilio_rest,
            StatusCallbacks(ctx),
            TranscriptKeeper(ctx),
            RolloutComponent(ctx, s.rollout, healthy=lambda: self.audiosocket.accepting),
            ConsoleComponent(ctx),
        ]
        return comps

    def component(self, kind: type[C]) -> C:
        """The one component of type ``kind`` (tests and embedding)."""
        for comp in self.components:
            if isinstance(comp, kind):
                return comp
        raise LookupError(f"no {kind.__name__} component")

    # -- calls and backends --------------------------------------------------------

    async def lookup_call(self, call_id: str) -> CallInfo | None:
        """A live call admitted by another worker or node, from the shared store; or
        a call's resume leg (after a Dial) registered by another node."""
        rec = await self.store.get_call(call_id)
        leg_metadata: dict[str, str] | None = None
        if rec is None:
            leg = await self.store.get_leg(call_id, self.clock.wall())
            if leg is None:
                return None
            parent_id, leg_metadata = leg
            rec = await self.store.get_call(parent_id)
        if rec is None or rec.is_terminal:
            return None
        agent = self.tenants.agents.get(rec.agent)
        if agent is None:
            return None
        # Alive here: the node that routed it must not sweep it as never connected.
        task = asyncio.get_running_loop().create_task(
            self.store.touch_alive([rec.id], self.clock.wall()))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        info = call_info(agent, call_id, direction=rec.direction, from_=rec.from_, to=rec.to)
        # The routing extras (Asterisk ids, Twilio custom parameters, REST call options);
        # a resume leg's own (its parent_call_id, the Dial's outcome once known).
        return dataclasses.replace(info, metadata=(
            call_metadata_of(rec.metadata) if leg_metadata is None else leg_metadata))

    # An attended transfer's consult leg (the person hearing the summary) is not a call:
    # no record, no status callbacks, watchdogs, MOS, recording or console row. Its
    # backend (attended.ConsultBackend) and the transfer flow follow it themselves.
    def _leg_started(self, call: Call) -> None:
        if CONSULT_METADATA_KEY not in call.info.metadata:
            self.events.started.emit(call)

    def _leg_ended(self, call: Call) -> None:
        if CONSULT_METADATA_KEY not in call.info.metadata:
            self.events.ended.emit(call)

    def default_call_info(self, call_id: str) -> CallInfo:
        agent = self.tenants.agents[self.tenants.default_agent]
        return call_info(agent, call_id)

    def backend_for(self, info: CallInfo) -> Backend:
        if CONSULT_METADATA_KEY in info.metadata:  # an attended transfer's person
            return self.component(CallController).consult
        if self._forced_backend is not None:
            return self._forced_backend
        name = info.agent_cfg.backend if info.agent_cfg is not None else self.config.backend
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = make_backend(name, self.settings, self.metrics,
                                                         self.tenants)
        return backend

    def check_agents(self) -> None:
        """Build every agent's backend and validate its options: a bad setting stops
        the gateway here, naming the file, the agent and the key."""
        source = self.config.config or "the built-in default agent"
        for agent in self.tenants.agents.values():
            try:
                backend = self.backend_for(call_info(agent, _NIL_UUID))
                if self._forced_backend is None:
                    backend.check_agent(agent)
            except ConfigError as exc:
                raise ConfigError(f"{source}: agent {agent.name!r}: {exc}") from None
        attended = sorted(a.name for a in self.tenants.agents.values()
                          if any(d.mode == "attended"
                                 for d in a.transfer_destinations.values()))
        if attended and self.settings.store.workers > 1 and not self.settings.store.worker:
            # docs/DEPLOY.md §7: the consult leg must reach the worker that started the
            # transfer; SO_REUSEPORT spreads it over all of them.
            log.warning("agents %s have attended transfer destinations, which need one "
                        "worker per AudioSocket address (with %d workers most consult "
                        "legs reach another worker and the transfer times out)",
                        ", ".join(attended), self.settings.store.workers)

    def _tick_stats(self, lateness: float, frames: int, writes: float) -> None:
        self.metrics.pacer_lateness.observe(lateness)
        self.metrics.pacer_writes.observe(writes)
        stats = self.metrics.stats
        sched = self.pacer.schedule
        if sched is not None:
            stats.missed_ticks = sched.missed
        stats.pacer_wait_seconds = self.pacer.spin_seconds
        stats.pacer_cpu_stalls = self.pacer.cpu_stalls.count
        stats.pacer_cpu_stall_seconds = self.pacer.cpu_stalls.seconds

    # -- HTTP ----------------------------------------------------------------------

    def _http_app(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware, auth_middleware(
                self.config.api_token,
                public=PUBLIC_PATHS | ROLLOUT_PUBLIC_PATHS | CONSOLE_PUBLIC_PATHS
                | ({"/metrics"} if self.config.metrics_public else set()),
                signed=lambda token, request: media_link_ok(token, request,
                                                            self.clock.wall()))],
            client_max_size=1024 * 1024,
        )
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        for comp in self.components:
            app.router.add_routes(comp.routes())
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.worker_metrics is not None:
            body = await self.worker_metrics.exposition()
        else:
            body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = self.audiosocket.accepting
        body = {
            "status": "ok" if ok else "draining",
            "version": __version__,
            "backend": self.config.backend,
            "active_calls": len(self.audiosocket.calls),
        }
        return web.json_response(body, status=200 if ok else 503)

    @property
    def http_address(self) -> tuple[str, int]:
        assert self._http_server is not None
        sockname = self._http_server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.config.data_path.mkdir, mode=0o700, parents=True,
                                exist_ok=True)
        await self.store.open()
        self.check_agents()
        started: list[Component] = []
        try:
            for comp in self.components:
                await comp.start()
                started.append(comp)
            await self.audiosocket.start()
            if self.worker_metrics is not None:
                await self.worker_metrics.start()
            self._runner = web.AppRunner(self._http_app(), access_log=None,
                                         handle_signals=False, keepalive_timeout=15.0)
            await self._runner.setup()
            host, port = self.config.http_addr
            server, guard = self._runner.server, self.http_guard
            assert server is not None
            self._http_server = await asyncio.get_running_loop().create_server(
                lambda: guard.wrap(server()), host, port, reuse_address=True, backlog=512,
                reuse_port=self.audiosocket.reuse_port or None)
        except BaseException:
            await self.audiosocket.shutdown(0)
            for comp in reversed(started):
                await self._stop_component(comp)
            await self._stop_http()
            await self.store.close()
            raise
        # Long-lived start-up objects never need collecting again; the 20 ms path then
        # only meets young-generation collections.
        gc.collect()
        gc.freeze()
        log.info(
            "audiosocket-gw %s: backend %s, AudioSocket %s, HTTP %s",
            __version__,
            self.config.backend,
            format_hostport(*self.audiosocket.address),
            format_hostport(*self.http_address),
        )

    @staticmethod
    async def _stop_component(comp: Component) -> None:
        try:
            await comp.stop()
        except Exception:
            log.exception("component %r failed to stop", comp)

    async def shutdown(self, grace: float | None = None) -> None:
        await self.audiosocket.shutdown(grace)
        if self.worker_metrics is not None:
            await self.worker_metrics.stop()
        for backend in self.backends.values():
            await backend.aclose()
        if self._forced_backend is not None:
            await self._forced_backend.aclose()
        for comp in reversed(self.components):
            await self._stop_component(comp)
        await self._stop_http()
        await self.store.close()

    async def _stop_http(self) -> None:
        if self._http_server is not None:
            self._http_server.close()  # no new connections
        if self._runner is not None:
            await self._runner.cleanup()  # ends the open ones (within aiohttp's timeout)
            self._runner = None
        if self._http_server is not None:
            await self._http_server.wait_closed()
            self._http_server = None

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, ready_file: str | None = None,
                    on_ready: Callable[[], None] | None = None) -> None:
        await self.start()
        # Only now: setting up ran at normal priority, and so do the threads started
        # so far (the realtime policy is not inherited by what the loop starts later).
        self.metrics.realtime_priority.set(raise_priority(self.config.realtime_priority))
        if ready_file:
            info = json.dumps(
                {
                    "audiosocket": format_hostport(*self.audiosocket.address),
                    "http": format_hostport(*self.http_address),
                }
            )
            await asyncio.to_thread(write_atomic, Path(ready_file), info)
        if on_ready is not None:
            on_ready()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stopping.wait()
            log.info("signal received: stopping (grace %.1f s)", self.config.shutdown_grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()
