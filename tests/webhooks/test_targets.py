"""Which webhook URLs may be called: only globally routable addresses, whatever the disguise."""

from __future__ import annotations

import socket

import pytest

from intent.webhooks.targets import (
    ForbiddenAddress,
    PublicOnlyResolver,
    TargetRejected,
    check_target,
    forbidden_reason,
    redacted_url,
)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),  # a name: its resolved addresses are checked
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.7/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://100.100.100.200/latest/meta-data", "metadata"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://[::ffff:169.254.169.254]/hook", "link-local"),
        ("https://[::]/hook", "unspecified"),
        ("https://[ff02::1]/hook", "multicast"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("http://93.184.215.14/hook", "https"),
        ("ftp://93.184.215.14/hook", "https"),
        ("https://user:pw@93.184.215.14/", "credentials"),
        ("https:///hook", "no host"),
        ("https://100.64.0.1/hook", "not globally routable"),  # shared address space (carrier-grade NAT)
        ("https://[2002:a00:1::1]/hook", "6to4 address embedding 10.0.0.1, a private address"),
        ("https://[2002:7f00:1::1]/hook", "6to4 address embedding 127.0.0.1, a loopback address"),
        ("https://[64:ff9b::a00:1]/hook", "NAT64 address embedding 10.0.0.1, a private address"),
        ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 address embedding 169.254.169.254, a link-local address"),
        ("https://[64:ff9b:1::a00:1]/hook", "local-use NAT64"),
        ("https://[::ffff:100.64.0.1]/hook", "not globally routable"),
    ],
)
async def test_requests_to_internal_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(TargetRejected, match=reason):
        await check_target(url, allow_private=False)


async def test_public_https_targets_are_allowed() -> None:
    await check_target("https://93.184.215.14/hook", allow_private=False)
    await check_target("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook", allow_private=False)
    # 6to4 and NAT64 addresses of a public IPv4 host are how IPv6-only networks reach it
    await check_target("https://[2002:5db8:d70e::1]/hook", allow_private=False)
    await check_target("https://[64:ff9b::5db8:d70e]/hook", allow_private=False)


@pytest.mark.parametrize(
    "url",
    ["https://exa..mple.com/hook", f"https://{'a' * 64}.com/hook", "https://.com/hook", "https://a\u200d.com/hook"],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_host_name_that_is_not_a_valid_domain_name_is_refused_with_the_reason(
    url: str, allow_private: bool
) -> None:
    with pytest.raises(TargetRejected, match="not a valid domain name"):
        await check_target(url, allow_private=allow_private)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "https://10.1.2.3/hook", "http://localhost/hook"])
async def test_private_targets_and_http_are_allowed_with_the_setting(url: str) -> None:
    await check_target(url, allow_private=True)


async def test_the_connection_resolver_refuses_a_name_that_resolves_to_a_forbidden_address() -> None:
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(ForbiddenAddress, match="loopback"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


@pytest.mark.parametrize("host", ["100.64.0.1", "2002:a00:1::1", "64:ff9b::7f00:1"])
async def test_the_connection_resolver_refuses_every_address_that_is_not_globally_routable(host: str) -> None:
    resolver = PublicOnlyResolver()  # what the connection uses: a DNS answer that changed since the check
    try:
        with pytest.raises(ForbiddenAddress, match="target rejected"):
            await resolver.resolve(host, 443, socket.AF_UNSPEC)
    finally:
        await resolver.close()


def test_ipv4_mapped_ipv6_addresses_are_judged_by_their_ipv4_address() -> None:
    assert forbidden_reason("::ffff:10.0.0.1") == "a private address"
    assert forbidden_reason("::ffff:93.184.215.14") is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://shop.example.com/hooks?token=s3cret&x=1", "https://shop.example.com/hooks?<redacted>"),
        ("https://shop.example.com:8443/hooks#s3cret", "https://shop.example.com:8443/hooks#<redacted>"),
        ("https://user:s3cret@shop.example.com/hooks", "https://<redacted>@shop.example.com/hooks"),
        ("https://shop.example.com/hooks", "https://shop.example.com/hooks"),
        ("https://[not-an-address/hooks?token=s3cret", "<an unreadable URL>"),
    ],
)
def test_logs_show_a_url_without_its_query_fragment_and_credentials(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
