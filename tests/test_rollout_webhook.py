"""The inbound rollout: Twilio's voice webhook at the gateway answers <Redirect> (stay on
Twilio) or <Dial><Sip> (move to Asterisk), signed requests only, steered by the real
``audiosocket-gw rollout`` CLI against the running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import pytest

pytest.importorskip("twilio")
from twilio.request_validator import RequestValidator  # noqa: E402

from audiosocket_gw.provider import bucket  # noqa: E402
from tests.provider.stack import APP_TOKEN, DIDS, ORIGINAL_URL, base_url, gateway  # noqa: E402

SIP_HOST = "sip.example.net:5061"
TOKEN = "s3cret-token-for-tests"


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    """Run the real CLI as a subprocess (the event loop keeps serving the gateway)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "audiosocket_gw", "rollout", "--url", url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AIGW_API_TOKEN": TOKEN})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Twilio:
    """Posts to the webhook the way Twilio does (form body, X-Twilio-Signature)."""

    def __init__(self, s: aiohttp.ClientSession, base: str, token: str = APP_TOKEN) -> None:
        self.s, self.base, self.validator = s, base, RequestValidator(token)

    async def post(self, params: dict[str, str], *, path: str = "/v1/rollout/voice",
                   signature: str | None = None, sign: bool = True) -> tuple[int, str]:
        url = self.base + path
        headers = {}
        if sign:
            headers["X-Twilio-Signature"] = signature or self.validator.compute_signature(
                url, params)
        async with self.s.post(url, data=params, headers=headers) as r:
            return r.status, await r.text()

    async def call(self, caller: str, did: str = DIDS[0]) -> str:
        status, body = await self.post({"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32,
                                        "From": caller, "To": did, "Direction": "inbound"})
        assert status == 200, body
        return body


def is_dial(body: str) -> bool:
    return "<Dial" in body and "<Sip>" in body


async def many(tw: Twilio, callers: list[str], dids: list[str] | None = None) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(i: int, c: str) -> str:
        async with sem:
            return await tw.call(c, (dids or DIDS)[i % len(dids or DIDS)])

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(callers))))


async def test_1000_signed_calls_at_25_percent_then_rollback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_ROLLOUT_SIP_HOST", SIP_HOST)
    async with gateway(monkeypatch, ami=False, api_token=TOKEN) as (gw, _), \
            aiohttp.ClientSession() as s:
        url = base_url(gw)
        tw = Twilio(s, url)
        rc, out, err = await cli(url, "set", "--percent", "25", "--note", "phase C step 1")
        assert rc == 0, err
        assert "global: 25 % on Asterisk" in out
        callers = [f"+1666{i:07d}" for i in range(1000)]
        bodies = await many(tw, callers)
        dialled = [c for c, b in zip(callers, bodies, strict=True) if is_dial(b)]
        share = len(dialled) / 1000
        assert 0.22 <= share <= 0.28, share
        assert set(dialled) == {c for c in callers if bucket(c) < 25}
        redirect = f'<Redirect method="POST">{escape(ORIGINAL_URL)}</Redirect>'
        assert all(redirect in b for b in bodies if not is_dial(b))
        first = callers.index(dialled[0])
        assert (f'<Dial action="/v1/rollout/voice/dial-status" method="POST">'
                f"<Sip>sip:{DIDS[first % 3]}@{SIP_HOST}</Sip></Dial>") in bodies[first]
        # sticky per caller
        sticky = [dialled[0], next(c for c in callers if c not in dialled)]
        for caller in sticky:
            again = await many(tw, [caller] * 10)
            assert len({is_dial(b) for b in again}) == 1
            assert is_dial(again[0]) == (caller in dialled)
        # the failed SIP leg comes back to the app on Twilio; a finished one hangs up
        status, body = await tw.post({"From": dialled[0], "To": DIDS[0],
                                      "DialCallStatus": "failed"},
                                     path="/v1/rollout/voice/dial-status")
        assert status == 200 and redirect in body
        status, body = await tw.post({"From": dialled[0], "To": DIDS[0],
                                      "DialCallStatus": "completed"},
                                     path="/v1/rollout/voice/dial-status")
        assert status == 200 and "<Hangup/>" in body
        # status over the CLI: last hour per tenant, DID and path
        rc, out, err = await cli(url, "--json", "status")
        assert rc == 0, err
        doc = json.loads(out)
        rows = {(r["did"], r["path"]): r for r in doc["stats"]["rows"]}
        assert sum(r["calls"] for (_, p), r in rows.items() if p == "asterisk") == \
            len(dialled) + 10
        assert rows[(DIDS[0], "asterisk")]["failures"] == 1
        assert doc["percent"] == 25 and doc["rules"][0]["note"] == "phase C step 1"
        # one command: everything back to Twilio; the next 100 calls are redirected
        rc, out, err = await cli(url, "rollback")
        assert rc == 0, err
        after = await many(tw, (dialled * 2)[:100])
        assert len(after) == 100 and not any(is_dial(b) for b in after)
        assert all(redirect in b for b in after)
        async with s.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            metrics = await r.text()
        assert 'aigw_rollout_changes_total{action="rollback",scope="global"} 1.0' in metrics
        assert 'aigw_rollout_decisions_total{path="asterisk",reason="rollout"}' in metrics


async def test_unsigned_or_wrongly_signed_requests_get_403(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_ROLLOUT_SIP_HOST", SIP_HOST)
    async with gateway(monkeypatch, ami=False, api_token=TOKEN) as (gw, _), \
            aiohttp.ClientSession() as s:
        url = base_url(gw)
        tw = Twilio(s, url)
        params = {"From": "+16660000001", "To": DIDS[1], "CallSid": "CA" + "3" * 32}
        assert (await tw.post(params))[0] == 200  # no bearer token needed: it is signed
        good = tw.validator.compute_signature(url + "/v1/rollout/voice", params)
        cases: list[dict[str, Any]] = [
            {"sign": False},
            {"signature": "AAAA" + good[4:]},
            {"signature": Twilio(s, url, "another-token").validator.compute_signature(
                url + "/v1/rollout/voice", params)},
            {"signature": "\u00e9t\u00e9"},
        ]
        for case in cases:
            status, body = await tw.post(params, **case)
            assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
        status, body = await tw.post({**params, "From": "+16660000002"}, signature=good)
        assert status == 403  # a signature over other parameters
        status, _ = await tw.post({"From": "x"}, path="/v1/rollout/voice/dial-status",
                                  sign=False)
        assert status == 403
        async with s.post(url + "/v1/rollout/voice", data=b"\xff\xfe",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 400
        # the control API is bearer-protected
        async with s.get(url + "/v1/rollout") as r:
            assert r.status == 401
        async with s.put(url + "/v1/rollout", json={"percent": 50}) as r:
            assert r.status == 401


async def test_tenant_and_number_rules_and_their_rollback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_ROLLOUT_SIP_HOST", SIP_HOST)
    async with gateway(monkeypatch, ami=False, api_token=TOKEN) as (gw, _), \
            aiohttp.ClientSession() as s:
        url = base_url(gw)
        tw = Twilio(s, url)
        callers = [f"+1777{i:07d}" for i in range(50)]
        rc, _, err = await cli(url, "set", "--percent", "100", "--did", DIDS[1])
        assert rc == 0, err
        assert all(is_dial(b) for b in await many(tw, callers, [DIDS[1]]))
        assert not any(is_dial(b) for b in await many(tw, callers, [DIDS[0]]))
        rc, _, err = await cli(url, "set", "--percent", "100", "--tenant", "acme")
        assert rc == 0, err
        assert all(is_dial(b) for b in await many(tw, callers, [DIDS[0]]))
        rc, out, err = await cli(url, "status")
        assert rc == 0 and "tenant acme: 100 %" in out and "tenant beta: 0 %" in out
        rc, _, err = await cli(url, "rollback", "--tenant", "acme")
        assert rc == 0, err
        assert not any(is_dial(b) for b in await many(tw, callers, [DIDS[0], DIDS[1]]))
        for args in (["set", "--percent", "50", "--tenant", "nobody"],
                     ["set", "--percent", "50", "--did", "+19999999999"],
                     ["set", "--percent", "101"]):
            rc, _, err = await cli(url, *args)
            assert rc in (1, 2) and err
        async with s.put(url + "/v1/rollout", json={"percent": True},
                         headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
        rc, _, err = await cli("http://127.0.0.1:9", "status")
        assert rc == 1 and "cannot reach" in err


async def test_without_a_sip_host_every_call_stays_on_twilio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIGW_ROLLOUT_SIP_HOST", raising=False)
    async with gateway(monkeypatch, ami=False) as (gw, _), aiohttp.ClientSession() as s:
        url = base_url(gw)
        async with s.put(url + "/v1/rollout", json={"percent": 100}) as r:
            assert r.status == 200
        bodies = await many(Twilio(s, url), [f"+1888{i:07d}" for i in range(20)])
        assert not any(is_dial(b) for b in bodies)
        status, body = await Twilio(s, url).post({"From": "+18880000000", "To": "+19990000000"},
                                                 sign=True)
        assert status == 403  # unknown number: no tenant token, the default one is unset


async def test_behind_a_proxy_the_public_url_is_signed_and_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    public = "https://gw.example.com/aigw/v1/rollout/voice"
    monkeypatch.setenv("AIGW_ROLLOUT_SIP_HOST", SIP_HOST)
    monkeypatch.setenv("AIGW_ROLLOUT_PUBLIC_URL", public)
    async with gateway(monkeypatch, ami=False) as (gw, _), aiohttp.ClientSession() as s:
        url = base_url(gw)
        async with s.put(url + "/v1/rollout", json={"percent": 100}) as r:
            assert r.status == 200
        tw = Twilio(s, url)
        params = {"From": "+16660000001", "To": DIDS[0]}
        signed_for_public = tw.validator.compute_signature(public, params)
        status, body = await tw.post(params, signature=signed_for_public)
        assert status == 200 and is_dial(body)
        assert 'action="https://gw.example.com/aigw/v1/rollout/voice/dial-status"' in body
        assert (await tw.post(params))[0] == 403  # signed for the internal URL: not ours
