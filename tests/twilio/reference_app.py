"""A reference Twilio Media Streams voice app, shaped like Twilio's and OpenAI's samples.

Why: the gateway's promise is that an existing Media Streams app runs *unchanged*. This
module is such an app, written the way the official samples
(twilio-samples/speech-assistant-openai-realtime-api-python, openai-realtime-twilio-demo)
are, and knows nothing about the gateway: only the Twilio wire protocol. The tests run
it behind the real gateway and check that what the app believes (marks echoed, audio
played, interruptions) matches what the simulated caller actually heard.

Structure, as in the samples:

* one WebSocket handler per call (:meth:`ReferenceApp.handle_media_stream`) holding the
  sample's state: ``stream_sid``, ``latest_media_timestamp``, ``last_assistant_item``,
  ``mark_queue``, ``response_start_timestamp_twilio``;
* ``receive_from_twilio``: ``start`` keeps the ``streamSid`` and resets the state;
  ``media`` updates ``latest_media_timestamp`` and feeds the caller's audio to speech
  detection; ``mark`` pops the ``mark_queue``;
* the response (here a local "TTS": a tone, since there is no OpenAI) is sent like the
  sample forwards ``response.output_audio.delta``: one ``media`` message per delta, each
  followed by a ``mark`` (:func:`send_mark`); the first delta sets
  ``response_start_timestamp_twilio = latest_media_timestamp``;
* speech detection stands in for OpenAI's ``input_audio_buffer.speech_started``: an
  energy detector on the decoded inbound mu-law (``speech_frames`` loud 20 ms frames in a
  row). On speech start while marks are pending, ``handle_speech_started_event`` does what
  the sample does: elapsed = ``latest_media_timestamp - response_start_timestamp_twilio``
  (the sample's ``audio_end_ms`` for ``conversation.item.truncate``), send ``clear``, empty
  the ``mark_queue``, forget the item. It also records how much the mark echoes say was
  played (echoed deltas x delta length), the other way the samples track playback;
* after the caller stops speaking (``silence_frames`` quiet frames), the app answers with
  ``reply_ms`` of audio (turn-taking), again as deltas and marks.

Everything the app sent and received is kept with :func:`time.monotonic` times in a
:class:`CallLog` per connection, for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from audiosocket_gw.dsp.g711 import ulaw_decode, ulaw_encode

RATE = 8000


def tts(ms: int, freq_hz: float, amplitude: float = 0.3) -> bytes:
    """The app's stand-in for TTS: ``ms`` of a tone as 8 kHz mu-law (8 bytes per ms)."""
    n = np.arange(ms * RATE // 1000, dtype=np.float64)
    pcm = np.round(amplitude * 32767.0 * np.sin(2.0 * math.pi * freq_hz * n / RATE))
    return ulaw_encode(pcm.astype("<i2").tobytes())


def mulaw_level(payload: bytes) -> float:
    """Mean absolute sample value of mu-law audio (the energy detector's measure)."""
    pcm = np.frombuffer(ulaw_decode(payload), dtype="<i2")
    return float(np.abs(pcm.astype(np.int32)).mean()) if len(pcm) else 0.0


@dataclass(frozen=True)
class Interruption:
    """One barge-in, as the app computed it when it sent ``clear``."""

    at: float
    """Monotonic time the ``clear`` was sent."""
    item: str
    elapsed_ms: int
    """``latest_media_timestamp - response_start_timestamp_twilio`` (the sample's value)."""
    played_ms_by_marks: int
    """Deltas whose mark had come back before the interruption, times the delta length."""
    pending_marks: tuple[str, ...]
    """The ``mark_queue`` at that moment (audio the app believes was not played)."""


@dataclass(eq=False)
class CallLog:
    """What one Media Stream connection did, with monotonic times."""

    stream_sid: str | None = None
    call_sid: str | None = None
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    inbound_levels: list[tuple[float, int, float]] = field(default_factory=list)
    """(arrival, media timestamp, level) of every inbound media frame."""
    mark_echoes: list[tuple[float, str]] = field(default_factory=list)
    speech_starts: list[tuple[float, int]] = field(default_factory=list)
    """(arrival, media timestamp) of each detected speech start."""
    interruptions: list[Interruption] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    """Item ids of the responses started, in order."""
    mark_queue_at_end: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def sent_marks(self) -> list[tuple[float, str]]:
        """(send time, name) of every mark the app sent."""
        return [(t, m["mark"]["name"]) for t, m in self.sent if m["event"] == "mark"]


class ReferenceApp:
    """A Media Streams server: greets, listens, barges in with ``clear``, answers."""

    def __init__(self, *, greeting_ms: int = 1000, delta_ms: int = 100,
                 reply_ms: int = 0, speech_level: float = 1000.0, speech_frames: int = 2,
                 silence_frames: int = 15, path: str = "/media-stream") -> None:
        self.greeting_ms = greeting_ms
        self.delta_ms = delta_ms
        self.reply_ms = reply_ms
        self.speech_level = speech_level
        self.speech_frames = speech_frames
        self.silence_frames = silence_frames
        self.path = path
        self.calls: list[CallLog] = []
        self._server: Server | None = None
        self._port = 0

    async def __aenter__(self) -> ReferenceApp:
        self._server = await serve(self.handle_media_stream, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        """What the app's TwiML would put in ``<Stream url>``."""
        return f"ws://127.0.0.1:{self._port}{self.path}"

    async def handle_media_stream(self, websocket: ServerConnection) -> None:
        """Handle one call's WebSocket, as the samples' ``/media-stream`` route does."""
        log = CallLog()
        self.calls.append(log)

        stream_sid: str | None = None
        latest_media_timestamp = 0
        last_assistant_item: str | None = None
        mark_queue: list[str] = []
        response_start_timestamp_twilio: int | None = None
        marks_played: dict[str, int] = {}
        loud_run = quiet_run = 0
        speaking = False
        tasks: set[asyncio.Task[None]] = set()

        async def send_json(msg: dict[str, Any]) -> None:
            log.sent.append((time.monotonic(), msg))
            await websocket.send(json.dumps(msg))

        async def send_mark(item: str, n: int) -> None:
            if stream_sid:
                name = f"{item}:{n}"
                await send_json({"event": "mark", "streamSid": stream_sid,
                                 "mark": {"name": name}})
                mark_queue.append(name)

        async def send_to_twilio(item: str, ms: int, freq_hz: float) -> None:
            """Forward a response's audio deltas, each followed by a mark (the sample's
            ``response.output_audio.delta`` branch)."""
            nonlocal last_assistant_item, response_start_timestamp_twilio
            audio = tts(ms, freq_hz)
            step = self.delta_ms * 8
            log.responses.append(item)
            for n, i in enumerate(range(0, len(audio), step)):
                payload = base64.b64encode(audio[i:i + step]).decode("ascii")
                await send_json({"event": "media", "streamSid": stream_sid,
                                 "media": {"payload": payload}})
                if response_start_timestamp_twilio is None:
                    response_start_timestamp_twilio = latest_media_timestamp
                last_assistant_item = item
                await send_mark(item, n)

        def respond(item: str, ms: int, freq_hz: float) -> None:
            task = asyncio.create_task(send_to_twilio(item, ms, freq_hz))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def handle_speech_started_event() -> None:
            """The caller spoke over the response: cut it (the sample's logic)."""
            nonlocal response_start_timestamp_twilio, last_assistant_item
            if mark_queue and response_start_timestamp_twilio is not None:
                elapsed_time = latest_media_timestamp - response_start_timestamp_twilio
                item = last_assistant_item or ""
                # The truncate an OpenAI app would send here:
                # {"type": "conversation.item.truncate", "item_id": item,
                #  "content_index": 0, "audio_end_ms": elapsed_time}
                await send_json({"event": "clear", "streamSid": stream_sid})
                log.interruptions.append(Interruption(
                    at=log.sent[-1][0], item=item, elapsed_ms=elapsed_time,
                    played_ms_by_marks=marks_played.get(item, 0) * self.delta_ms,
                    pending_marks=tuple(mark_queue)))
                mark_queue.clear()
                last_assistant_item = None
                response_start_timestamp_twilio = None

        async def receive_from_twilio() -> None:
            nonlocal stream_sid, latest_media_timestamp, last_assistant_item
            nonlocal response_start_timestamp_twilio, loud_run, quiet_run, speaking
            async for message in websocket:
                now = time.monotonic()
                data = json.loads(message)
                log.received.append((now, data))
                if data["event"] == "start":
                    stream_sid = data["start"]["streamSid"]
                    log.stream_sid, log.call_sid = stream_sid, data["start"]["callSid"]
                    response_start_timestamp_twilio = None
                    latest_media_timestamp = 0
                    last_assistant_item = None
                    if self.greeting_ms > 0:
                        respond("greeting", self.greeting_ms, 440.0)
                elif data["event"] == "media":
                    latest_media_timestamp = int(data["media"]["timestamp"])
                    level = mulaw_level(base64.b64decode(data["media"]["payload"]))
                    log.inbound_levels.append((now, latest_media_timestamp, level))
                    if level >= self.speech_level:
                        loud_run, quiet_run = loud_run + 1, 0
                    else:
                        loud_run, quiet_run = 0, quiet_run + 1
                    if not speaking and loud_run >= self.speech_frames:
                        speaking = True
                        log.speech_starts.append((now, latest_media_timestamp))
                        if last_assistant_item:
                            await handle_speech_started_event()
                    elif speaking and quiet_run >= self.silence_frames:
                        speaking = False
                        if self.reply_ms > 0:
                            respond(f"reply-{len(log.responses)}", self.reply_ms, 660.0)
                elif data["event"] == "mark":
                    name = data["mark"]["name"]
                    log.mark_echoes.append((now, name))
                    if mark_queue:
                        mark_queue.pop(0)
                        item = name.rsplit(":", 1)[0]
                        marks_played[item] = marks_played.get(item, 0) + 1
                elif data["event"] == "stop":
                    break

        try:
            await receive_from_twilio()
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.mark_queue_at_end = list(mark_queue)
            log.closed.set()
