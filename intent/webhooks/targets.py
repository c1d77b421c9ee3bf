"""Which webhook URLs may be called.

A subscriber chooses the URL, so an unchecked URL would let anyone with an API token make the
worker call its own network (server-side request forgery): cloud metadata services, admin ports on
localhost, private hosts. Only `https` URLs whose every resolved address is public are allowed,
checked when subscribing and again before each attempt (DNS answers change), and the attempt's
connection resolves through `PublicOnlyResolver`. Local development and the demo set
`INTENT_WEBHOOK_ALLOW_PRIVATE_URLS=true`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

# Cloud metadata endpoints that are not covered by the private and link-local ranges.
_METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


class TargetRejected(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForbiddenAddress(OSError):
    """Raised by `PublicOnlyResolver`; aiohttp reports it as a connection (DNS) error of the attempt."""


def check_url_syntax(url: str, allow_private: bool) -> tuple[str, int]:
    """(host, port) of an acceptable URL, or `TargetRejected` saying why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TargetRejected(f"not a valid URL: {error}") from None
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise TargetRejected(f"the URL must use {' or '.join(allowed)}, not {parts.scheme or 'nothing'}")
    if not parts.hostname:
        raise TargetRejected("the URL has no host")
    if parts.username or parts.password:
        raise TargetRejected("credentials in the URL are not allowed; authenticate with the signature")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def forbidden_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    for kind, flag in (
        # the most specific reason first: 0.0.0.0 and 127.0.0.1 are also in `is_private`'s ranges
        ("an unspecified address", ip.is_unspecified),
        ("a loopback address", ip.is_loopback),
        ("a link-local address", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
        ("a private address", ip.is_private),
        ("a reserved address", ip.is_reserved),
    ):
        if flag:
            return kind
    return None


async def check_target(url: str, allow_private: bool) -> None:
    """Raise `TargetRejected` unless `url` may be called now."""
    host, port = check_url_syntax(url, allow_private)
    if allow_private:
        return
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise TargetRejected(f"the host {host} does not resolve: {error.strerror}") from None
    for *_, sockaddr in answers:
        reason = forbidden_reason(str(sockaddr[0]))
        if reason:
            raise TargetRejected(f"the host {host} resolves to {sockaddr[0]}, {reason}")


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to a forbidden address.

    `check_target` runs before each attempt, but the connection resolves the host again: a DNS
    answer that changes in between (DNS rebinding) would slip through. Resolving through this
    class, the addresses aiohttp connects to are the addresses that were checked.
    """

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._resolver.resolve(host, port, family)
        for answer in answers:
            reason = forbidden_reason(answer["host"])
            if reason:
                raise ForbiddenAddress(f"target rejected: {host} resolves to {answer['host']}, {reason}")
        return answers

    async def close(self) -> None:
        await self._resolver.close()
