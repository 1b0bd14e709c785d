"""Shared test helpers: a scalable time unit and raw AudioSocket peers."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.config import Config
from audiosocket_gw.gateway import Gateway

# One millisecond of test time; raise AIGW_TEST_TIME_FACTOR on a slow machine. Timing
# bounds in the tests are written with it, so the default (1) keeps them at their
# real-time values and a loaded machine can scale them instead of flaking.
MS = 0.001 * float(os.environ.get("AIGW_TEST_TIME_FACTOR", "1"))
GAP_MS = 40_000 * MS  # a frame arriving more than 40 ms after the previous one is a gap


async def until(pred: Callable[[], Any], within: float = 5.0, step: float = 5 * MS) -> None:
    """Poll ``pred`` (sync, or async like a store read) until it is true; TimeoutError
    after ``within`` seconds of test time. For state that has no event to await."""
    async with asyncio.timeout(within * MS * 1000):
        while True:
            res = pred()
            if inspect.isawaitable(res):
                res = await res
            if res:
                return
            await asyncio.sleep(step)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed: connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = dict(
        audiosocket="127.0.0.1:0",
        http="127.0.0.1:0",
        allow_unregistered=True,
        echo_delay_ms=0,
        shutdown_grace=0.0,
        data_dir=tempfile.mkdtemp(prefix="aigw-test-"),
    )
    base.update(overrides)
    return Config.from_env(env={}, **base)


@asynccontextmanager
async def running_gateway(**overrides: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(make_config(**overrides))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown(grace=0)


@asynccontextmanager
async def ami_gateway(monkeypatch: pytest.MonkeyPatch, ami: tuple[str, int], *,
                      ping_s: float = 0.5, **overrides: Any) -> AsyncIterator[Gateway]:
    """A started gateway logged in to the AMI server at ``ami`` (the PBX simulator's
    AMI), with reconnect backoff and Ping liveness in test time; config ``overrides``
    as for ``make_config``. The simulator's own lifetime stays with the caller."""
    from audiosocket_gw.ami.tracker import CallTracker
    from audiosocket_gw.settings import AmiSettings

    host, port = ami
    for k, v in {"AIGW_AMI_HOST": host, "AIGW_AMI_PORT": str(port), "AIGW_AMI_USER": "aigw",
                 "AIGW_AMI_SECRET": "secret"}.items():
        monkeypatch.setenv(k, v)
    gw = Gateway(make_config(**overrides))
    client = gw.component(CallTracker).client
    assert client is not None, "AIGW_AMI_HOST did not reach the gateway's settings"
    client.settings = AmiSettings(host=host, port=port, username="aigw", secret="secret",
                                  backoff_initial=0.02, backoff_max=0.1,
                                  ping_interval=ping_s, ping_timeout=ping_s)
    await gw.start()
    try:
        assert await client.wait_connected(5.0), "the gateway did not log in to AMI"
        yield gw
    finally:
        await gw.shutdown(grace=0)


class RawPeer:
    """A hand-driven AudioSocket client that records everything the gateway sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = asp.Decoder(require_uuid_first=False)

    @classmethod
    async def connect(cls, addr: tuple[str, int]) -> RawPeer:
        r, w = await asyncio.open_connection(*addr)
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_uuid(self, call_id: str | None = None) -> str:
        cid = call_id or str(uuid.uuid4())
        self.send(asp.encode_uuid(cid))
        return cid

    async def read_until_closed(self, within: float = 2.0) -> list[asp.Event]:
        """Every event until the gateway closes the connection."""
        events: list[asp.Event] = []
        async with asyncio.timeout(within):
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.decoder.feed(data)
                events.extend(self.decoder.events())
        await self.close()
        return events

    async def read_frames(self, n: int, within: float = 2.0) -> list[asp.Event]:
        events: list[asp.Event] = []
        async with asyncio.timeout(within):
            while len(events) < n:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.decoder.feed(data)
                events.extend(self.decoder.events())
        return events

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
