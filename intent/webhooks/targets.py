"""Which webhook URLs may be called.

A subscriber chooses the URL, so an unchecked URL would let anyone with an API token make the
worker call its own network (server-side request forgery): cloud metadata services, admin ports on
localhost, private hosts. Only `https` URLs whose every resolved address is globally routable are
allowed, checked when subscribing and again before each attempt (DNS answers change), and the
attempt's connection resolves through `PublicOnlyResolver`. An IPv6 address that carries an IPv4
address (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it reaches. Local development and
the demo set `INTENT_WEBHOOK_ALLOW_PRIVATE_URLS=true`.

A URL may carry a token in its query string (some endpoints authenticate that way): `redacted_url`
is the form that logs and dead letters show. The API shows the whole URL: every API token may
create, read and delete every subscription, so whoever can read it could have written it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

# Cloud metadata endpoints, named as such in the reason (both are also not globally routable).
_METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
# NAT64 (RFC 6052): the well-known prefix carries an IPv4 address in its last 32 bits; the
# local-use prefix (RFC 8215) translates into the operator's own network.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")


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
    if parts.username or parts.password:
        raise TargetRejected("credentials in the URL are not allowed; authenticate with the signature")
    try:
        # The host as aiohttp connects to it (IDNA 2008, via yarl), so that the name resolved here is
        # the name connected to; the `idna` codec then checks the labels as the resolver will.
        host = URL(url).raw_host
        if host:
            host.encode("idna")
    except ValueError as error:  # UnicodeError is a ValueError
        raise TargetRejected(f"the host is not a valid domain name: {error}") from None
    if not host:
        raise TargetRejected("the URL has no host")
    return host, port or (443 if parts.scheme == "https" else 80)


def forbidden_reason(address: str) -> str | None:
    """Why `address` may not be called, or None if it is globally routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the same host, written as IPv6
            return forbidden_reason(str(ip.ipv4_mapped))
        if ip in _NAT64_LOCAL_USE:
            return "a local-use NAT64 address"
        for kind, embedded in (
            ("6to4", ip.sixtofour),
            ("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None),
        ):
            if embedded is not None:
                reason = forbidden_reason(str(embedded))
                return f"a {kind} address embedding {embedded}, {reason}" if reason else None
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
        # what remains: shared address space (100.64.0.0/10), benchmarking, documentation, Teredo...
        ("an address that is not globally routable", not ip.is_global),
    ):
        if flag:
            return kind
    return None


def redacted_url(url: str) -> str:
    """`url` without what may be secret in it (credentials, query, fragment), for logs and dead letters."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unreadable URL>"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{'<redacted>@' if parts.username or parts.password else ''}{host}"
    shown += f":{port}" if port is not None else ""
    shown += parts.path
    shown += "?<redacted>" if parts.query else ""
    shown += "#<redacted>" if parts.fragment else ""
    return shown


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
