"""The AMI simulator speaks AMI as docs/PROTOCOLS.md §2 says (raw sockets, our parser)."""

from __future__ import annotations

import asyncio

from audiosocket_gw.ami.protocol import AmiMessage, AmiParser, encode_action
from audiosocket_gw.testing.simulator.ami import AmiSimulator
from tests.helpers import MS


async def read_until(reader: asyncio.StreamReader, parser: AmiParser, pred: object,
                     out: list[AmiMessage]) -> None:
    async with asyncio.timeout(2):
        while not any(pred(m) for m in out):  # type: ignore[operator]
            data = await reader.read(4096)
            if not data:
                return
            out.extend(parser.feed(data))


async def test_banner_login_failure_closes() -> None:
    async with AmiSimulator() as sim:
        r, w = await asyncio.open_connection(*sim.address)
        assert await r.readline() == b"Asterisk Call Manager/11.0.0\r\n"
        w.write(encode_action("Login", {"Username": "aigw", "Secret": "bad"}, "1"))
        rest = await asyncio.wait_for(r.read(), 2)
        assert b"Authentication failed" in rest
        w.close()


async def test_originate_async_sequence_and_core_show_channels() -> None:
    async with AmiSimulator(ring_s=10 * MS, talk_s=0.5) as sim:
        r, w = await asyncio.open_connection(*sim.address)
        p = AmiParser()
        msgs: list[AmiMessage] = []
        w.write(encode_action("Login", {"Username": "aigw", "Secret": "secret"}, "1"))
        await read_until(r, p, lambda m: m.event == "FullyBooted", msgs)
        w.write(encode_action("Originate", {"Channel": "PJSIP/+15551234567@trunk",
                                            "Context": "aigw-outbound", "Exten": "s",
                                            "Async": "true", "ChannelId": "cid-1",
                                            "Variable": ["AIGW_CALL_ID=cid-1"]}, "2"))
        await read_until(r, p, lambda m: m.event == "OriginateResponse", msgs)
        queued = [m for m in msgs if m.action_id == "2" and m.is_response]
        assert queued[0].get("Message") == "Originate successfully queued"
        orig = [m for m in msgs if m.event == "OriginateResponse"][0]
        assert (orig.get("Response"), orig.get("Reason"), orig.get("Uniqueid")) == (
            "Success", "4", "cid-1")
        kinds = [m.event for m in msgs if m.get("Uniqueid") == "cid-1"]
        assert kinds.index("Newchannel") < kinds.index("Newstate") < kinds.index(
            "OriginateResponse")
        w.write(encode_action("CoreShowChannels", {}, "3"))
        await read_until(r, p, lambda m: m.event == "CoreShowChannelsComplete", msgs)
        chans = [m for m in msgs if m.event == "CoreShowChannel"]
        assert chans and chans[0].get("Uniqueid") == "cid-1"
        assert chans[0].get("Application") == "AudioSocket"
        w.write(encode_action("Hangup", {"Channel": chans[0].get("Channel", "")}, "4"))
        await read_until(r, p, lambda m: m.event == "Hangup", msgs)
        assert sim.channels == {}
        w.close()


async def test_busy_originate_response_uses_dial_string() -> None:
    async with AmiSimulator(ring_s=10 * MS, outcomes={"+15550000002": "busy"}) as sim:
        r, w = await asyncio.open_connection(*sim.address)
        p = AmiParser()
        msgs: list[AmiMessage] = []
        w.write(encode_action("Login", {"Username": "aigw", "Secret": "secret"}, "1"))
        w.write(encode_action("Originate", {"Channel": "PJSIP/+15550000002@trunk",
                                            "Context": "aigw-outbound", "Exten": "s",
                                            "Async": "true", "ChannelId": "b-1"}, "2"))
        await read_until(r, p, lambda m: m.event == "OriginateResponse", msgs)
        orig = [m for m in msgs if m.event == "OriginateResponse"][0]
        assert (orig.get("Response"), orig.get("Reason"), orig.get("Channel")) == (
            "Failure", "5", "PJSIP/+15550000002@trunk")
        hang = [m for m in msgs if m.event == "Hangup"][0]
        assert hang.get("Cause") == "17"
        w.close()


async def test_amd_runs_with_the_voicemail_budget_like_the_dialplan() -> None:
    async with AmiSimulator(ring_s=10 * MS, talk_s=50 * MS,
                            outcomes={"+15550001": "machine", "+15550002": "human"}) as sim:
        r, w = await asyncio.open_connection(*sim.address)
        p = AmiParser()
        msgs: list[AmiMessage] = []
        w.write(encode_action("Login", {"Username": "aigw", "Secret": "secret"}, "1"))
        await read_until(r, p, lambda m: m.event == "FullyBooted", msgs)
        for n, (number, amd) in enumerate((("+15550001", "1"), ("+15550002", "1"),
                                            ("+15550002", "0"))):
            cid = f"cid-{n}"
            variables = [f"AIGW_CALL_ID={cid}", f"AIGW_AMD={amd}", "AIGW_AMD_MS=15000",
                         "AIGW_VOICEMAIL_ACTION=hangup"]
            w.write(encode_action("Originate", {"Channel": f"PJSIP/{number}@trunk",
                                                "Context": "aigw-outbound", "Exten": "s",
                                                "Async": "true", "ChannelId": cid,
                                                "Variable": variables}, str(n + 2)))
            await read_until(r, p, lambda m, c=cid: m.event == "Hangup"
                             and m.get("Uniqueid") == c, msgs)
        apps = {m.get("Uniqueid"): [(x.get("Application"), x.get("AppData")) for x in msgs
                                     if x.event == "Newexten" and x.get("Uniqueid")
                                     == m.get("Uniqueid")]
                for m in msgs if m.event == "Hangup"}
        # Machine + hangup action: AMD with the budget, then Hangup(16), no bridge.
        assert apps["cid-0"] == [("AMD", "2500,1500,800,15000"), ("Hangup", "16")]
        assert apps["cid-1"][0] == ("AMD", "2500,1500,800,15000")
        assert apps["cid-1"][1][0] == "AudioSocket"
        assert [a for a, _ in apps["cid-2"]] == ["AudioSocket"]  # AIGW_AMD=0: no AMD
        w.close()
