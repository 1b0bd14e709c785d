"""Asterisk Manager Interface: the sans-I/O codec (:mod:`.protocol`)."""

from audiosocket_gw.ami.protocol import (
    AmiError,
    AmiMessage,
    AmiParser,
    AmiProtocolError,
    AmiUsageError,
    c_unescape,
    encode_action,
)

__all__ = [
    "AmiError",
    "AmiMessage",
    "AmiParser",
    "AmiProtocolError",
    "AmiUsageError",
    "c_unescape",
    "encode_action",
]
