"""The gateway process: wires config, backend, pacer, servers and HTTP together.

Explicit lifecycle (uvicorn's pattern): ``start()`` binds everything, ``shutdown()``
stops accepting, drains calls for the grace period, hangs up the rest and closes.
``serve()`` runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .backends.base import Backend
from .config import Config, ConfigError, format_hostport
from .metrics import Metrics
from .pacer import Pacer
from .server import AudioSocketServer, CallRegistry

log = logging.getLogger("audiosocket_gw")


def make_backend(config: Config) -> Backend:
    if config.backend == "echo":
        from .backends.echo import EchoBackend

        return EchoBackend(delay_ms=config.echo_delay_ms)
    raise ConfigError(f"backend {config.backend!r} is not available in this build")


class Gateway:
    def __init__(self, config: Config, *, backend: Backend | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.backend = backend or make_backend(config)
        self.registry = CallRegistry(allow_unregistered=config.allow_unregistered)
        self.pacer = Pacer(on_tick_stats=self._tick_stats)
        self.audiosocket = AudioSocketServer(
            config, self.backend, self.metrics, self.registry, self.pacer
        )
        self.http_app = web.Application()
        self.http_app.router.add_get("/metrics", self._metrics)
        self.http_app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopping = asyncio.Event()

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
            "backend": self.backend.name,
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
        self.config.data_path.mkdir(parents=True, exist_ok=True)
        # Long-lived start-up objects never need collecting again; the 20 ms path then
        # only ever meets young-generation collections (milliseconds matter here).
        gc.collect()
        gc.freeze()
        await self.audiosocket.start()
        self._runner = web.AppRunner(self.http_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.config.http_addr
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        log.info(
            "audiosocket-gw %s: backend %s, AudioSocket %s, HTTP %s",
            __version__,
            self.backend.name,
            format_hostport(*self.audiosocket.address),
            format_hostport(*self.http_address),
        )

    async def shutdown(self, grace: float | None = None) -> None:
        await self.audiosocket.shutdown(grace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
