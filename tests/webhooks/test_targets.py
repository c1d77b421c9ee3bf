"""Which webhook URLs may be called: no loopback, private, link-local or metadata targets."""

from __future__ import annotations

import pytest

from intent.webhooks.targets import ForbiddenAddress, PublicOnlyResolver, TargetRejected, check_target, forbidden_reason


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
    ],
)
async def test_requests_to_internal_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(TargetRejected, match=reason):
        await check_target(url, allow_private=False)


async def test_public_https_targets_are_allowed() -> None:
    await check_target("https://93.184.215.14/hook", allow_private=False)
    await check_target("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook", allow_private=False)


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


def test_ipv4_mapped_ipv6_addresses_are_judged_by_their_ipv4_address() -> None:
    assert forbidden_reason("::ffff:10.0.0.1") == "a private address"
    assert forbidden_reason("::ffff:93.184.215.14") is None
