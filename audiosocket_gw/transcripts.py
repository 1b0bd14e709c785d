"""Keeps each call's live transcript (caller and bot lines) in its event log.

A component: when a call ends, the lines its backend reported (``Call.transcripts``)
are appended to the call's events as one ``transcript`` event, which
``GET /v1/calls/{id}/transcript`` reads back, and each barge-in (the caller speaking
over the bot, ``Call.barge_in_log``) as a ``barge_in`` event at its time with its
source (the console's timeline shows them). Calls without a record (unregistered
test calls) are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .store.base import StoreError

if TYPE_CHECKING:
    from .call import Call
    from .context import GatewayContext

__all__ = ["TranscriptKeeper"]

log = logging.getLogger("audiosocket_gw.transcripts")


class TranscriptKeeper:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        self._unsubscribe = self.ctx.events.ended.connect(self._call_ended)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _call_ended(self, call: Call) -> None:
        if not call.transcripts and not call.barge_in_log:
            return
        lines = [{"at": at, "role": role, "text": text} for at, role, text in call.transcripts]
        task = asyncio.get_running_loop().create_task(
            self._store(call, lines, list(call.barge_in_log)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, call: Call, lines: list[dict[str, object]],
                     barge_ins: list[tuple[float, str]]) -> None:
        store = self.ctx.store
        # A leg resumed after Dial() belongs to its parent call's record.
        record_id = call.info.metadata.get("parent_call_id") or call.call_id
        try:
            if await store.get_call(record_id) is None:
                return
            for at, source in barge_ins:
                await store.append_event(record_id, "barge_in", at, {"source": source})
            if lines:
                await store.append_event(record_id, "transcript", self.ctx.clock.wall(),
                                         {"lines": lines})
        except StoreError as exc:
            call.log.warning("could not store the transcript: %s", exc)
