"""The asyncio variants: any sync provider's methods run in a worker thread.

``AsyncProvider(provider)`` exposes the ``AsyncTelephonyProvider`` interface over a
sync ``TelephonyProvider`` with ``asyncio.to_thread``: the Twilio SDK, the gateway
client (``urllib``) and the rollout logic exist once, and the async variant needs no
extra dependency (no ``aiohttp``). Calls are placed at human rates, so a thread per
request is cheap; the event loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .base import ProviderCall, ProviderRecording, TelephonyProvider

__all__ = ["AsyncProvider"]


class AsyncProvider:
    """``AsyncTelephonyProvider`` over a sync provider (``.sync`` is the wrapped one)."""

    def __init__(self, sync: TelephonyProvider) -> None:
        self.sync = sync
        self.name = sync.name

    async def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                                  metadata: Mapping[str, Any] | None = None) -> str:
        return await asyncio.to_thread(self.sync.start_outbound_call, tenant_id, to, from_,
                                       metadata)

    async def hangup(self, call_id: str) -> None:
        await asyncio.to_thread(self.sync.hangup, call_id)

    async def get_call(self, call_id: str) -> ProviderCall | None:
        return await asyncio.to_thread(self.sync.get_call, call_id)

    async def update_call(self, call_id: str, *, twiml: str | None = None,
                          url: str | None = None) -> None:
        await asyncio.to_thread(lambda: self.sync.update_call(call_id, twiml=twiml, url=url))

    async def get_recording(self, call_id: str) -> ProviderRecording | None:
        return await asyncio.to_thread(self.sync.get_recording, call_id)

    def __getattr__(self, name: str) -> Any:
        """``counters``, ``last_decision``... of the wrapped provider."""
        return getattr(self.sync, name)
