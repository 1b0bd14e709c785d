"""``<Start><Stream>``: a one-way copy of the caller's audio to a Media Streams app.

Why: apps use a unidirectional stream for live transcription or analytics while the
TwiML goes on (``<Say>``, ``<Gather>``, ``<Dial>``...). Twilio sends the app the same
``connected``/``start``/``media``/``stop`` messages as for a bidirectional stream but
ignores anything the app sends back; so does :class:`MediaFork`.

How: a websockets client; caller audio (any frame size) is mu-law encoded, cut into
160-byte (20 ms) chunks and queued (bounded: when the app does not read, media is dropped
before a sequence number is spent, and counted); one writer task sends. ``track``
``inbound_track`` is the caller; ``outbound_track``/``both_tracks`` are accepted but only
the caller's audio is sent (see docs/TWIML.md). ``close()`` sends ``stop`` then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..dsp.g711 import ulaw_encode
from .streams import TwilioStreamEncoder
from .urlpolicy import check_ws_url

__all__ = ["MediaFork"]

CHUNK: Final = 160


class MediaFork:
    """One ``<Start><Stream>`` fork; ``name`` is the TwiML name (or the stream sid)."""

    def __init__(self, url: str, encoder: TwilioStreamEncoder, *, name: str,
                 connect_timeout: float = 5.0, close_timeout: float = 2.0,
                 max_queue: int = 500, allow_private: bool = True,
                 call_log: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None
                 ) -> None:
        self.url = url
        self.encoder = encoder
        self.name = name
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_queue = max_queue
        self.allow_private = allow_private
        self.log = call_log or logging.getLogger("audiosocket_gw.twilio.fork")
        self.dropped = 0
        self.ws: ClientConnection | None = None
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._pending = bytearray()
        self._tasks: list[asyncio.Task[None]] = []
        self.open_ = False
        self.on_close: Callable[[], None] | None = None
        """Called once after :meth:`close` (the ``stream-stopped`` status callback)."""

    async def open(self) -> None:
        """Connect and send ``connected`` + ``start``. Raises OSError, TimeoutError or
        a websockets error when the app cannot be reached, ``UrlRefused`` when the URL
        leads where the gateway never connects (twilio/urlpolicy.py)."""
        await check_ws_url(self.url, allow_private=self.allow_private)
        ws = await asyncio.wait_for(
            connect(self.url, open_timeout=None, compression=None,
                    close_timeout=self.close_timeout),
            self.connect_timeout)
        self.ws = ws
        await ws.send(self.encoder.connected())
        await ws.send(self.encoder.start())
        self.open_ = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(ws), name="fork-writer"),
                       loop.create_task(self._drain(ws), name="fork-reader")]

    def feed(self, pcm: bytes) -> None:
        """Caller audio (8 kHz slin, any length)."""
        if not self.open_:
            return
        buf = self._pending
        buf += ulaw_encode(pcm)
        while len(buf) >= CHUNK:
            if self._queue.qsize() < self.max_queue:
                self._queue.put_nowait(self.encoder.media(bytes(buf[:CHUNK])))
            else:
                self.dropped += 1
            del buf[:CHUNK]

    async def _writer(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await self._queue.get()
                if text is None:
                    return
                await ws.send(text)

    async def _drain(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:  # one-way: whatever the app sends is ignored
                pass
        if self.open_:
            self.log.info("fork %s: the app closed the stream", self.name)
            self.open_ = False

    async def close(self) -> None:
        """Send ``stop`` (after the queued media) and close. Never raises."""
        was_open, self.open_ = self.open_, False
        ws = self.ws
        if ws is None:
            return
        if was_open and not self.encoder.stopped:
            self._queue.put_nowait(self.encoder.stop())
        self._queue.put_nowait(None)
        writer = self._tasks[0] if self._tasks else None
        if writer is not None:
            await asyncio.wait([writer], timeout=self.close_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.close_timeout)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dropped:
            self.log.info("fork %s: %d media chunks dropped (app not reading)",
                          self.name, self.dropped)
        if self.on_close is not None:
            self.on_close()
