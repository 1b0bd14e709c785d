"""Call store: calls, their event log and the per-tenant concurrent-call limiter.

``CallStore`` (``base``) is the one interface; ``SqliteCallStore`` (``sqlite``) the
embedded default. See ``base`` for the guarantees every implementation gives.
"""

from .base import (
    UPDATABLE_FIELDS,
    CallEvent,
    CallRecord,
    CallStore,
    Direction,
    DuplicateCall,
    StoreError,
    UnknownCall,
)
from .sqlite import SqliteCallStore

__all__ = [
    "UPDATABLE_FIELDS",
    "CallEvent",
    "CallRecord",
    "CallStore",
    "Direction",
    "DuplicateCall",
    "SqliteCallStore",
    "StoreError",
    "UnknownCall",
]
