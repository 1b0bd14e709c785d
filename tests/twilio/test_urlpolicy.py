"""TwiML URLs never lead to metadata/link-local addresses (SSRF guard), over real sockets."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from audiosocket_gw.twilio.urlpolicy import (
    PolicyResolver,
    UrlRefused,
    address_allowed,
    check_ws_url,
)


@pytest.mark.parametrize(("ip", "private_ok", "public_only"), [
    ("169.254.169.254", False, False),  # the cloud metadata service
    ("fe80::1", False, False),
    ("::ffff:169.254.169.254", False, False),
    ("224.0.0.1", False, False),
    ("0.0.0.0", False, False),
    ("240.0.0.1", False, False),
    ("127.0.0.1", True, False),
    ("10.1.2.3", True, False),
    ("::1", True, False),
    ("8.8.8.8", True, True),
])
def test_address_policy(ip: str, private_ok: bool, public_only: bool) -> None:
    assert address_allowed(ip, allow_private=True) is private_ok
    assert address_allowed(ip, allow_private=False) is public_only


async def test_the_http_client_refuses_forbidden_addresses_after_resolution() -> None:
    app = web.Application()
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for allow, ok in ((True, True), (False, False)):
            conn = aiohttp.TCPConnector(resolver=PolicyResolver(allow_private=allow))
            async with aiohttp.ClientSession(connector=conn) as http:
                if ok:
                    async with http.get(f"http://localhost:{port}/") as resp:
                        assert await resp.text() == "ok"
                else:
                    with pytest.raises(aiohttp.ClientError):
                        await http.get(f"http://localhost:{port}/")
    finally:
        await runner.cleanup()


async def test_stream_urls_are_checked() -> None:
    await check_ws_url("ws://127.0.0.1:9/media", allow_private=True)
    with pytest.raises(UrlRefused):
        await check_ws_url("ws://169.254.169.254/latest", allow_private=True)
    with pytest.raises(UrlRefused):
        await check_ws_url("ws://localhost:9/media", allow_private=False)
    with pytest.raises(UrlRefused):
        await check_ws_url("http://example.com/", allow_private=True)
