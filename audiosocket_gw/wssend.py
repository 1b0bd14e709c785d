"""Send a WebSocket text message at once from synchronous code (the audio path).

Why: websockets' ``send()`` is a coroutine. From the 20 ms audio path (caller audio to
the OpenAI and Twilio-streams backends) every message went through a queue to a writer
task: a future resolved, a task step scheduled and run, an async context manager
entered and left, then the frame built and written. Profiled at 100 calls that
bookkeeping cost more CPU than building the message itself (issue 16).

How: when the connection is open, its transport is not closing and flow control has not
paused writing, ``send()`` does nothing but frame the message with the connection's
sans-I/O protocol and write the bytes to the transport, without ever yielding.
:func:`send_now` does exactly that, synchronously, and returns True; otherwise it
returns False and the caller queues the message for its writer task, which awaits
``send()`` (back-pressure, closing handshake, errors). A caller must only use it while
its own queue is empty, so messages keep their order. The gateway never sends
fragmented messages on these connections, so no fragmented send can be in progress.
"""

from __future__ import annotations

from websockets.asyncio.connection import Connection
from websockets.protocol import State

__all__ = ["send_now"]


def send_now(ws: Connection, message: str) -> bool:
    """Write ``message`` as one text frame now; False when it must go the async way."""
    if ws.protocol.state is not State.OPEN or ws.paused or ws.transport.is_closing():
        return False
    ws.protocol.send_text(message.encode())
    ws.send_data()
    return True
