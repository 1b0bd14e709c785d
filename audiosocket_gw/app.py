"""The gateway process: wires config, tenants, backends, store, servers and HTTP.

Explicit lifecycle (uvicorn's pattern): ``start()`` opens the store, binds everything
and starts the components; ``shutdown()`` stops accepting, drains calls for the grace
period, hangs up the rest, stops the components and closes the store. ``serve()`` runs
until SIGTERM/SIGINT.

Features beyond the AudioSocket core (AMI, routing API, recordings, status
callbacks...) are *components*: objects with async ``start()``/``stop()`` that hook
into the gateway (``http_app`` routes, ``audiosocket.on_call_start/on_call_end``,
``store``) in their constructor. ``_install_components`` lists them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import signal
import time
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import __version__
from .backends.base import Backend, CallInfo
from .call import Call
from .config import Config, ConfigError, format_hostport
from .metrics import BackendCounters, Metrics
from .pacer import Pacer
from .server import AudioSocketServer, CallRegistry
from .store.base import StoreError
from .store.sqlite import SqliteCallStore
from .tenants import Agent, TenantsConfig, load_tenants

log = logging.getLogger("audiosocket_gw")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_backend(name: str, config: Config, registry: CollectorRegistry | None = None) -> Backend:
    """Build the backend called ``name`` (imported lazily: each pulls its own deps)."""
    if name == "echo":
        from .backends.echo import EchoBackend

        return EchoBackend(delay_ms=config.echo_delay_ms)
    if name == "openai":
        from .backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(config)
    if name == "twilio-stream":
        from .backends.twilio_stream import TwilioStreamBackend

        return TwilioStreamBackend.from_config(config, registry)
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


class Gateway:
    def __init__(self, config: Config, *, backend: Backend | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tenants = effective_tenants(config)
        self.backends: dict[str, Backend] = {}
        self.metrics.registry.register(BackendCounters(self.backends))
        self._forced_backend = backend
        self.store = SqliteCallStore(config.data_path / "aigw.sqlite")
        self.registry = CallRegistry(
            allow_unregistered=config.allow_unregistered, default=self.default_call_info
        )
        self.pacer = Pacer(on_tick_stats=self._tick_stats, spin=config.pacer_spin_ms / 1000.0)
        self.audiosocket = AudioSocketServer(
            config, self.backend_for, self.metrics, self.registry, self.pacer
        )
        self.http_app = web.Application()
        self.http_app.router.add_get("/metrics", self._metrics)
        self.http_app.router.add_get("/healthz", self._healthz)
        self.components: list[Component] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopping = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self._install_components()

    def _install_components(self) -> None:
        """Features beyond the AudioSocket core, each a component with start/stop."""
        # Imported here: each module imports Gateway for typing (no import cycle).
        from .api import CallsComponent
        from .quality.cost import CostMeter
        from .quality.mos import MosMonitor
        from .recordings import RecordingsComponent
        from .routing import RoutingComponent
        from .twilio.callbacks import StatusCallbacks

        self.calls_component = CallsComponent(self)  # AMI client, tracker, watchdogs, API
        self.mos = MosMonitor(self)
        self.calls_component.tracker.listeners.append(self.mos.on_ami_event)
        self.routing = RoutingComponent(self)
        self.recordings = RecordingsComponent(self)
        self.status_callbacks = StatusCallbacks(self)
        self.calls_component.tracker.status_listeners.append(self.status_callbacks.on_status)
        self.audiosocket.on_call_end.append(self._save_transcript)
        self.components += [
            self.routing,
            self.calls_component,
            self.mos,
            CostMeter(self),
            self.recordings,
            self.status_callbacks,
        ]

    # -- calls and backends --------------------------------------------------------

    def _save_transcript(self, call: Call) -> None:
        """Keep the live transcript (caller and bot lines) in the call's event log."""
        if not call.transcripts:
            return
        lines = [{"at": at, "role": role, "text": text} for at, role, text in call.transcripts]
        task = asyncio.get_running_loop().create_task(self._store_transcript(call, lines))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _store_transcript(self, call: Call, lines: list[dict[str, object]]) -> None:
        try:
            if await self.store.get_call(call.call_id) is None:
                return  # an unregistered call without a record
            await self.store.append_event(call.call_id, "transcript", time.time(),
                                          {"lines": lines})
        except StoreError as exc:
            call.log.warning("could not store the transcript: %s", exc)

    def agent_info(self, agent: Agent, call_id: str, **kw: str) -> CallInfo:
        return CallInfo(call_id=call_id, tenant=agent.tenant, agent=agent.name,
                        agent_cfg=agent, **kw)  # type: ignore[arg-type]

    def default_call_info(self, call_id: str) -> CallInfo:
        agent = self.tenants.agents[self.tenants.default_agent]
        return self.agent_info(agent, call_id)

    def backend_for(self, info: CallInfo) -> Backend:
        if self._forced_backend is not None:
            return self._forced_backend
        name = info.agent_cfg.backend if info.agent_cfg is not None else self.config.backend
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = make_backend(name, self.config,
                                                         self.metrics.registry)
        return backend

    def _tick_stats(self, lateness: float, frames: int) -> None:
        self.metrics.pacer_lateness.observe(lateness)
        sched = self.pacer.schedule
        if sched is not None:
            self.metrics.stats.missed_ticks = sched.missed

    # -- HTTP ----------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
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
        assert self._runner is not None
        addrs = self._runner.addresses
        host, port = addrs[0][0], addrs[0][1]
        return str(host), int(port)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.config.data_path.mkdir, parents=True, exist_ok=True)
        await self.store.open()
        # Build the default agent's backend now so a bad setting fails at start.
        self.backend_for(self.default_call_info("00000000-0000-0000-0000-000000000000"))
        for comp in self.components:
            await comp.start()
        await self.audiosocket.start()
        self._runner = web.AppRunner(self.http_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.config.http_addr
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
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

    async def shutdown(self, grace: float | None = None) -> None:
        await self.audiosocket.shutdown(grace)
        for backend in self.backends.values():
            await backend.aclose()
        if self._forced_backend is not None:
            await self._forced_backend.aclose()
        if self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        for comp in reversed(self.components):
            try:
                await comp.stop()
            except Exception:
                log.exception("component %r failed to stop", comp)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.store.close()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, ready_file: str | None = None) -> None:
        await self.start()
        if ready_file:
            info = json.dumps(
                {
                    "audiosocket": format_hostport(*self.audiosocket.address),
                    "http": format_hostport(*self.http_address),
                }
            )
            await asyncio.to_thread(Path(ready_file).write_text, info)
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
