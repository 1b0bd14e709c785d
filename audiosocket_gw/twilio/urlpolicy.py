"""Where URLs taken from TwiML may lead (SSRF guard).

TwiML is the app's: ``<Play>``, ``<Redirect>``, ``<Gather action>``, ``<Stream url>``
and callbacks make the gateway fetch or connect to URLs it did not choose. A
compromised or careless app must not turn the gateway into a proxy toward addresses
that are never a phone app: the cloud metadata service (169.254.169.254), link-local,
multicast, unspecified or reserved addresses. Those are refused always, after DNS
resolution (a name resolving to one is refused too).

Loopback and private (RFC 1918, ULA) addresses are where apps often live next to the
gateway, so they are allowed unless ``AIGW_TWIML_ALLOW_PRIVATE=0`` (for deployments
whose TwiML comes from apps they do not run).

HTTP requests go through :class:`PolicyResolver` (an aiohttp resolver that drops
forbidden addresses); WebSocket streams are checked with :func:`check_ws_url` before
connecting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = ["PolicyResolver", "UrlRefused", "address_allowed", "check_ws_url"]


class UrlRefused(ValueError):
    """A TwiML URL points where the gateway never connects (the message says why)."""


def address_allowed(ip: str, *, allow_private: bool) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:  # before is_reserved: ::1 is in IPv6's reserved block
        return allow_private
    if addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return False
    if addr.is_private:
        return allow_private
    return True


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that keeps only the addresses :func:`address_allowed` accepts."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if address_allowed(r["host"], allow_private=self.allow_private)]
        if not kept:
            raise OSError(f"{host}: every address is one the gateway never connects to "
                          "(link-local/metadata, multicast, reserved"
                          f"{'' if self.allow_private else ', private or loopback'})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


async def check_ws_url(url: str, *, allow_private: bool) -> None:
    """Refuse a ``ws(s)://`` URL whose host resolves to a forbidden address."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UrlRefused(f"not a ws:// or wss:// URL: {url[:80]!r}")
    infos: list[Any] = await asyncio.get_running_loop().getaddrinfo(
        parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80),
        type=socket.SOCK_STREAM)
    bad = [i[4][0] for i in infos if not address_allowed(i[4][0], allow_private=allow_private)]
    if bad or not infos:
        raise UrlRefused(f"{parts.hostname}: resolves to an address the gateway never "
                         "connects to")
