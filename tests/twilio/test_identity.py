"""One call, one identity: every request a Twilio app receives names the same call.

Over real sockets: a gateway, AudioSocket callers, an aiohttp app playing the customer's
Twilio app (voice webhook answering ``<Connect><Stream>``, call status callbacks, recording
status callbacks) and the strict fake Media Streams app. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from audiosocket_gw.testing.fakeapp import FakeTwilioApp
from audiosocket_gw.twilio.ids import is_sid
from audiosocket_gw.twilio.signature import SIGNATURE_HEADER, validate_signature
from tests.backends.test_twilio_stream import Caller, speech
from tests.helpers import MS, running_gateway, until


@dataclass
class TwilioApp:
    """The customer's HTTP side: every form POSTed to it, by path, with its signature."""

    stream_url: str
    token: str | None = None
    forms: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signed = self.token is not None and validate_signature(
            self.token, str(request.url), form, request.headers.get(SIGNATURE_HEADER, ""))
        self.forms.append((request.path, form, signed))
        if request.path == "/voice":
            return web.Response(
                text='<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                     f'<Stream url="{self.stream_url}"/></Connect></Response>',
                content_type="text/xml")
        return web.Response(status=204)

    def of(self, path: str) -> list[dict[str, str]]:
        return [f for p, f, _ in self.forms if p == path]


@asynccontextmanager
async def serve(app: TwilioApp) -> AsyncIterator[TwilioApp]:
    web_app = web.Application()
    web_app.router.add_post("/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    app.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield app
    finally:
        await runner.cleanup()


def tenants_toml(tmp_path: Path, base: str, tenant_keys: str = "") -> str:
    path = tmp_path / "tenants.toml"
    path.write_text(f"""default_agent = "bot"
[tenants.acme]
{tenant_keys}
[agents.bot]
tenant = "acme"
backend = "twilio-stream"
voice_url = "{base}/voice"
status_callback = "{base}/status"
status_events = ["answered", "completed"]
record = true
recording_source = "gateway"
[agents.bot.extra]
recording_status_callback = "{base}/recording"
""")
    return str(path)


async def one_call(gw_addr: tuple[str, int], stream_app: FakeTwilioApp, app: TwilioApp,
                   index: int) -> tuple[set[str], set[str]]:
    """Place call ``index``; return the CallSids and AccountSids its requests carried."""
    async with Caller(gw_addr, audio=speech(1.0)):
        session = await stream_app.wait_for_session(index, 5000 * MS)
        await stream_app.wait_for(lambda: len(session.of_kind("media")) >= 5, 3000 * MS)
    # Hung up: wait for the stream's stop, completed and the recording callback.
    await stream_app.wait_for(lambda: "stop" in session.kinds(), 3000 * MS)
    await until(lambda: len(app.of("/status")) >= 2 * (index + 1)
                     and len(app.of("/recording")) >= index + 1, 10.0)
    await asyncio.sleep(50 * MS)  # nothing else is on its way
    assert session.violations == []
    (start,) = session.of_kind("start")
    (stop,) = session.of_kind("stop")
    forms = (app.of("/voice")[index:index + 1] + app.of("/status")[2 * index:]
                         + app.of("/recording")[index:])
    assert [f.get("CallStatus", f.get("RecordingStatus")) for f in forms] == [
        "ringing", "in-progress", "completed", "completed"]
    call_sids = {start["start"]["callSid"], stop["stop"]["callSid"]} | {
        f["CallSid"] for f in forms}
    account_sids = {start["start"]["accountSid"], stop["stop"]["accountSid"]} | {
        f["AccountSid"] for f in forms}
    return call_sids, account_sids


async def test_every_request_of_a_call_names_the_same_call_and_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stream start/stop, voice webhook, status callbacks and the recording callback of one
    call carry one CallSid and one AccountSid; the next call gets another CallSid and the
    same AccountSid (same tenant)."""
    monkeypatch.setenv("AIGW_RECORDING_PUBLIC_BASE", "https://recordings.example.com")
    monkeypatch.delenv("AIGW_TWILIO_ACCOUNT_SID", raising=False)
    async with FakeTwilioApp() as stream_app, serve(TwilioApp(stream_app.url)) as app:
        cfg = tenants_toml(tmp_path, app.base)
        async with running_gateway(config=cfg) as gw:
            first = await one_call(gw.audiosocket.address, stream_app, app, 0)
            second = await one_call(gw.audiosocket.address, stream_app, app, 1)
    for call_sids, account_sids in (first, second):
        assert len(call_sids) == 1, call_sids
        assert len(account_sids) == 1, account_sids
        assert is_sid("CA", *call_sids) and is_sid("AC", *account_sids)
    assert first[0] != second[0]
    assert first[1] == second[1]


async def test_tenant_account_sid_and_auth_token_reach_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant's ``twilio_account_sid`` is the AccountSid of the stream, the webhook and
    every callback, and the token in its ``twilio_auth_token_env`` signs every request
    (not the gateway-wide ``AIGW_TWILIO_AUTH_TOKEN``)."""
    sid = "AC" + "0123456789abcdef" * 2
    monkeypatch.setenv("AIGW_RECORDING_PUBLIC_BASE", "https://recordings.example.com")
    monkeypatch.setenv("AIGW_TWILIO_AUTH_TOKEN", "the-gateway-wide-token")
    monkeypatch.setenv("ACME_TWILIO_TOKEN", "acme-token")
    async with FakeTwilioApp() as stream_app, \
            serve(TwilioApp(stream_app.url, token="acme-token")) as app:
        cfg = tenants_toml(tmp_path, app.base, f'twilio_account_sid = "{sid}"\n'
                           'twilio_auth_token_env = "ACME_TWILIO_TOKEN"')
        async with running_gateway(config=cfg) as gw:
            call_sids, account_sids = await one_call(gw.audiosocket.address, stream_app, app, 0)
    assert account_sids == {sid}
    assert len(call_sids) == 1
    assert sorted(p for p, _, _ in app.forms) == ["/recording", "/status", "/status", "/voice"]
    assert all(signed for _, _, signed in app.forms), app.forms
