"""``TwilioProvider``: the official ``twilio`` SDK over real HTTP (see ``twilio_rest``)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("twilio")

from audiosocket_gw.provider import (  # noqa: E402
    AsyncProvider,
    ProviderUnavailable,
    RequestRejected,
    TwilioProvider,
    get_telephony_provider,
    is_twilio_call_sid,
)

from .twilio_rest import add_recording, twilio_rest_server  # noqa: E402


async def test_the_sdk_places_steers_and_ends_a_call() -> None:
    async with twilio_rest_server() as api:
        provider = AsyncProvider(get_telephony_provider({
            "TELEPHONY_PROVIDER": "twilio", "TWILIO_ACCOUNT_SID": api.account_sid,
            "TWILIO_AUTH_TOKEN": api.auth_token, "TELEPHONY_TWILIO_API_URL": api.base_url,
            "TELEPHONY_TWILIO_VOICE_URL": "https://app.example.com/voice"}))
        assert provider.name == "twilio"
        sid = await provider.start_outbound_call("acme", "+15550001111", "+15559990000",
                                                 {"status_callback": "https://app/cb"})
        assert is_twilio_call_sid(sid)
        assert api.calls[sid]["url"] == "https://app.example.com/voice"
        call = await provider.get_call(sid)
        assert call is not None and (call.status, call.to, call.from_) == \
            ("queued", "+15550001111", "+15559990000")
        await provider.update_call(sid, twiml="<Response><Say>hi</Say></Response>")
        assert api.calls[sid]["twiml"] == "<Response><Say>hi</Say></Response>"
        await provider.update_call(sid, url="https://app.example.com/next")
        assert api.calls[sid]["url"] == "https://app.example.com/next"
        assert await provider.get_recording(sid) is None
        rec_sid = add_recording(api, sid, duration=7)
        rec = await provider.get_recording(sid)
        assert rec is not None and rec.duration_s == 7.0 and rec.url is not None
        assert rec.url.endswith(f"/Recordings/{rec_sid}.wav")
        await provider.hangup(sid)
        assert api.calls[sid]["status"] == "completed"
        assert await provider.get_call("CA" + "0" * 32) is None
        with pytest.raises(ValueError):
            await provider.update_call(sid)


async def test_errors_map_to_the_provider_errors() -> None:
    async with twilio_rest_server() as api:
        good = TwilioProvider(api.account_sid, api.auth_token, api_base_url=api.base_url)
        with pytest.raises(RequestRejected):  # neither url nor twiml
            await asyncio.to_thread(good.start_outbound_call, "acme", "+15550001111",
                                    "+15559990000", {})
        bad = TwilioProvider(api.account_sid, "wrong-token", api_base_url=api.base_url)
        with pytest.raises(RequestRejected) as exc:
            await asyncio.to_thread(bad.start_outbound_call, "acme", "+15550001111",
                                    "+15559990000", {"url": "https://app/voice"})
        assert exc.value.status == 401
        assert api.calls == {}
    gone = TwilioProvider(api.account_sid, api.auth_token, api_base_url=api.base_url)
    with pytest.raises(ProviderUnavailable) as down:  # the server is gone
        await asyncio.to_thread(gone.start_outbound_call, "acme", "+15550001111",
                                "+15559990000", {"url": "https://app/voice"})
    assert down.value.reason == "twilio_unreachable"


def test_factory_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
        get_telephony_provider({"TELEPHONY_PROVIDER": "twilio"})
    with pytest.raises(ValueError, match="TELEPHONY_PROVIDER"):
        get_telephony_provider({"TELEPHONY_PROVIDER": "sip"})
    base = {"TELEPHONY_PROVIDER": "rollout", "TWILIO_ACCOUNT_SID": "AC1",
            "TWILIO_AUTH_TOKEN": "t"}
    with pytest.raises(ValueError, match="TELEPHONY_ROLLOUT_PERCENT"):
        get_telephony_provider({**base, "TELEPHONY_ROLLOUT_PERCENT": "101"})
    with pytest.raises(ValueError, match="TELEPHONY_ROLLOUT_TENANTS"):
        get_telephony_provider({**base, "TELEPHONY_ROLLOUT_TENANTS": "acme"})
    p = get_telephony_provider({**base, "TELEPHONY_ROLLOUT_TENANTS": "acme=50, beta=0"})
    assert getattr(p, "overrides") == {"acme": 50, "beta": 0}  # noqa: B009
