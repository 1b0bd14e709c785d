"""Log output: ``text`` (one human line) or ``json`` (one JSON object per line).

``--log-format text|json`` (env ``AIGW_LOG_FORMAT``). A JSON line has ``time`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger``, ``message`` and, where they apply,
``call_id``, ``tenant``, ``agent`` (from the call's logger, ``CallLog``, or ``extra=``)
and ``node`` (``AIGW_NODE_ID``, default this host's name); a traceback goes in
``exc``. A call-related line
logged without the call's logger still names the call in its message (``call <id>:``
by convention, else any call UUID in it): its ``call_id`` is taken from there, so
every call-related line carries one (call ids are the only UUIDs the gateway logs).
Phone numbers are never logged at INFO, in either format.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
from datetime import UTC, datetime
from typing import Final

__all__ = ["LOG_FORMATS", "JsonFormatter", "TEXT_FORMAT", "setup_logging"]

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CALL_FIELDS: Final = ("call_id", "tenant", "agent")
_UUID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CALL_ID_RE: Final = re.compile(rf"\bcall[ =:]+({_UUID})\b")
_ANY_ID_RE: Final = re.compile(rf"\b({_UUID})\b")


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node if node is not None else socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for name in CALL_FIELDS:
            value = getattr(record, name, None)
            if value:
                out[name] = str(value)
        if "call_id" not in out:
            m = _CALL_ID_RE.search(message) or _ANY_ID_RE.search(message)
            if m is not None:
                out["call_id"] = m.group(1)
        if self.node:
            out["node"] = self.node
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def make_formatter(fmt: str, node: str | None = None) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(node or None)
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, fmt: str = "text", node: str | None = None) -> None:
    """The process's one log handler (stderr) in ``fmt`` at ``level``; ``node`` is
    this gateway's node id (``AIGW_NODE_ID``; default the host name)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt, node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
