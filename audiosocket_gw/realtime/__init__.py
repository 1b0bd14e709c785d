"""OpenAI Realtime API support: the GA wire format (:mod:`.protocol`).

The protocol names are re-exported here. The local test bot that speaks the other side
lives with the tooling, in :mod:`audiosocket_gw.testing.localbot`.
"""

from audiosocket_gw.realtime.protocol import (
    RealtimeError,
    RealtimeProtocolError,
    ServerEvent,
    SessionConfig,
    parse_server_event,
    session_update,
)

__all__ = [
    "RealtimeError",
    "RealtimeProtocolError",
    "ServerEvent",
    "SessionConfig",
    "parse_server_event",
    "session_update",
]
