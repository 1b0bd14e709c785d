"""OpenAI Realtime API support: GA wire format (:mod:`.protocol`) and a local test bot.

:mod:`audiosocket_gw.realtime.localbot` is imported lazily by its users (it pulls in the
websockets server); the protocol names are re-exported here.
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
