"""A gateway on a shared PostgreSQL store touches only its own node's calls at startup,
and takes over a dead node's calls when that node's lease has expired."""

from __future__ import annotations

from audiosocket_gw.callstate import CallInput, CallStatus
from audiosocket_gw.cluster import NodeLease
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.settings import Settings
from audiosocket_gw.store import CallRecord
from audiosocket_gw.store.postgres import PostgresCallStore
from tests.helpers import make_config
from tests.pgtest import temp_database

T0 = 1_700_000_000.0


def rec(call_id: str, node: str) -> CallRecord:
    return CallRecord(id=call_id, tenant="default", agent="default", direction="inbound",
                      from_="+15550001111", to="+15551230000", created_at=T0, node_id=node)


async def test_startup_and_takeover_touch_only_the_right_node() -> None:
    async with temp_database() as url:
        async with PostgresCallStore(url, node_id="other") as other:
            for cid, node in (("own-1", "me"), ("oth-1", "other")):
                await other.create_call(rec(cid, node))
                assert await other.try_acquire_slot("default", cid, 10)
                await other.apply_input(cid, CallInput.ROUTED_INBOUND, T0 + 1)
                await other.apply_input(cid, CallInput.ANSWERED, T0 + 2)
            await other.touch_alive(["oth-1"], T0 + 30)
            await other.node_heartbeat("other", 60)  # alive
        settings = Settings.load({"AIGW_DATABASE_URL": url, "AIGW_NODE_ID": "me"},
                                 core=make_config())
        gw = Gateway(settings)
        await gw.start()
        try:
            own = await gw.store.get_call("own-1")
            assert own is not None and own.status is CallStatus.COMPLETED
            assert own.hangup_reason == "gateway-restart"
            oth = await gw.store.get_call("oth-1")
            assert oth is not None and oth.status is CallStatus.IN_PROGRESS  # not ours
            assert await gw.store.active_slots("default") == 1
            lease = gw.component(NodeLease)
            assert await lease.take_over_expired() == 0  # "other" is alive
            assert isinstance(gw.store, PostgresCallStore)
            await gw.store._with(lambda c: c.execute(
                "UPDATE nodes SET heartbeat_at = heartbeat_at - 120 WHERE node_id = 'other'"))
            assert await lease.take_over_expired() == 1
            oth = await gw.store.get_call("oth-1")
            assert oth is not None and oth.status is CallStatus.COMPLETED
            assert oth.hangup_reason == "node-lost"
            assert oth.ended_at == T0 + 30 and oth.duration_s == 30.0  # last alive
            assert await gw.store.active_slots("default") == 0
            assert lease.taken_over == ["other"]
        finally:
            await gw.shutdown(grace=0)
