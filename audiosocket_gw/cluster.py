"""Node leases: several gateway nodes (and workers) on one PostgreSQL store.

Each node (``AIGW_NODE_ID``, default ``hostname:pid``) holds a lease in the store's
``nodes`` table, renewed every ``lease_s / 3`` by the database's clock. A node whose
lease has run out (``AIGW_NODE_LEASE_S``, default 15 s: killed, frozen, cut off from
the database) is claimed by exactly one survivor (an atomic ``UPDATE ... RETURNING``),
which closes the dead node's open calls with VANISHED, reason ``node-lost``, at the
time each was last known alive (``last_alive_at``, the tracker's heartbeat batch), so
the downtime is neither duration nor billed, then frees the slots the dead node still
held. With AMI, it first asks Asterisk (``CoreShowChannels``): a call whose channel is
still there (handed to ``Dial()``, which goes on without our AudioSocket) is adopted
by the survivor instead (its ``node_id`` changes; its Hangup ends it there). The
transitions go through the status writer on the survivor: status callbacks and
metrics happen there, once. The dead node's AudioSockets died with it, so its
calls cannot be live; Asterisk ends those channels (or its dialplan fails over).

With the embedded SQLite store (one process) the component does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from .callstate import CallInput
from .store.base import NodeLeases

if TYPE_CHECKING:
    from .ami.tracker import CallTracker
    from .context import GatewayContext

__all__ = ["NodeLease"]

log = logging.getLogger("audiosocket_gw.cluster")


class NodeLease:
    """The component (see the module docstring)."""

    def __init__(self, ctx: GatewayContext, tracker: CallTracker | None = None) -> None:
        self.ctx = ctx
        self.tracker = tracker
        st = ctx.settings.store
        self.node_id = st.node_id
        self.lease_s = st.lease_s
        store = ctx.store
        self.leases: NodeLeases | None = (
            store if st.is_postgres and isinstance(store, NodeLeases) else None)
        self._task: asyncio.Task[None] | None = None
        self.taken_over: list[str] = []
        """Nodes this one has taken over (diagnostics, tests)."""

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        if self.leases is None:
            return
        await self.leases.node_heartbeat(self.node_id, self.lease_s)
        await self.take_over_expired()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="node-lease")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.leases is not None:
            try:
                await self.leases.node_stopped(self.node_id)
            except Exception:  # noqa: BLE001 - the lease then simply expires
                log.warning("could not end this node's lease; it will expire")

    async def _run(self) -> None:
        assert self.leases is not None
        interval = max(0.5, self.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.leases.node_heartbeat(self.node_id, self.lease_s)
                await self.take_over_expired()
            except Exception:
                log.exception("node lease renewal / takeover failed")

    async def take_over_expired(self) -> int:
        """Close the calls of every node whose lease expired (claimed by this node
        alone); returns how many calls were closed."""
        if self.leases is None:
            return 0
        closed = 0
        for dead in await self.leases.claim_expired_nodes(self.node_id):
            n = 0
            calls = await self.ctx.store.active_calls(dead)
            live: set[str] = set()
            if calls and self.tracker is not None:
                live = await self.tracker.live_in_asterisk({r.id for r in calls}) or set()
            for rec in calls:
                if rec.id in live:
                    # Still a channel in Asterisk (handed to Dial()): this node adopts it;
                    # its AMI Hangup ends it here.
                    await self.ctx.store.update_call(rec.id, node_id=self.node_id)
                    log.warning("call %s of node %s is still live in Asterisk: adopted",
                                rec.id, dead)
                    continue
                last = rec.last_known_alive
                await self.ctx.status.apply(
                    rec.id, CallInput.VANISHED,
                    {"reason": "node-lost", "node": dead, "last_alive_at": last},
                    at=min(last, self.ctx.clock.wall()))
                n += 1
            released = await self.leases.release_node_slots(dead)
            self.taken_over.append(dead)
            log.warning("node %s lost its lease: closed %d of its calls, released %d "
                        "more slots", dead, n, released)
            closed += n
        return closed
