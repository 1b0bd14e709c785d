"""Real peers for the recording tests: moto's S3 server over loopback HTTP, a TCP proxy
that can cut connections or slow them down, and an OpenAI-compatible transcription fake."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

BUCKET = "aigw-test"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def bucket(moto_url: str, aws_env: None) -> str:
    """A fresh bucket per test (moto's state lives in its server)."""
    import boto3

    name = f"{BUCKET}-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3_client(url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


@dataclass
class FaultProxy:
    """Loopback TCP proxy to ``upstream``. The first ``cut_connections`` connections are
    aborted after ``cut_after`` request bytes; ``delay_s`` slows each forwarded chunk."""

    upstream: tuple[str, int]
    cut_connections: int = 0
    cut_after: int = 0
    delay_s: float = 0.0
    connections: int = 0
    cuts: int = 0
    server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.cuts < self.cut_connections
        if cut:
            self.cuts += 1
        ur, uw = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None):
            sent = 0
            try:
                while data := await src.read(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: limit - sent])
                        w.transport.abort()
                        uw.transport.abort()
                        return
                    sent += len(data)
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        tasks = [asyncio.ensure_future(pump(r, uw, self.cut_after if cut else None)),
                 asyncio.ensure_future(pump(ur, w, None))]
        for t in tasks:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def proxy_to(moto_url: str) -> AsyncIterator[Any]:
    proxies: list[FaultProxy] = []

    async def make(**kw: Any) -> FaultProxy:
        host, port = moto_url.removeprefix("http://").split(":")
        p = FaultProxy((host, int(port)), **kw)
        await p.start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        await p.stop()


@dataclass
class TranscriptionFake:
    """``POST /v1/audio/transcriptions`` as OpenAI serves it; fails the first ``fail`` requests."""

    fail: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form["file"]
        audio = f.file.read() if hasattr(f, "file") else b""
        self.requests.append({"model": form.get("model"), "filename": getattr(f, "filename", ""),
                              "auth": request.headers.get("Authorization"), "bytes": len(audio)})
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        import io

        import numpy as np
        import soundfile as sf

        data, rate = sf.read(io.BytesIO(audio), dtype="int16")
        level = float(np.abs(data.astype(np.int32)).mean()) if data.size else 0.0
        return web.json_response({"text": f"heard {len(data) / rate:.1f}s level {level:.0f}"})


@pytest.fixture
async def transcription_fake() -> AsyncIterator[TranscriptionFake]:
    fake = TranscriptionFake()
    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", fake.handle)
    fake.runner = web.AppRunner(app, access_log=None)
    await fake.runner.setup()
    site = web.TCPSite(fake.runner, "127.0.0.1", 0)
    await site.start()
    host, port = fake.runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1/audio/transcriptions"
    yield fake
    await fake.runner.cleanup()
