"""The SSRF guard of ``callback_url``: the URL's form, and the addresses its host stands for."""

from __future__ import annotations

import re

import pytest

from shared.submission.callback_urls import CALLBACK_URL_PATTERN, callback_url_error, is_public


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "240.0.0.1", "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::"],
)  # fmt: skip
def test_inner_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_routable_addresses_are_public(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hook", "http://localhost:8080/hook", "https://169.254.169.254/latest/meta-data",
     "http://10.0.0.7/", "http://192.168.0.1:65535/x?y=1"],
)  # fmt: skip
def test_a_url_into_the_network_is_refused_naming_the_field_and_the_setting(url: str) -> None:
    problem = callback_url_error(url, "/callback_url", allow_private=False)
    assert problem is not None and problem.path == "/callback_url"
    assert "CALLBACK_ALLOW_PRIVATE=on" in problem.message


def test_the_setting_lets_such_urls_through() -> None:
    assert callback_url_error("http://127.0.0.1:9999/hook", "/callback_url", allow_private=True) is None


def test_a_public_address_is_taken() -> None:
    assert callback_url_error("https://93.184.215.14/hooks/jobs?x=1#f", "/callback_url", allow_private=False) is None


def test_a_host_that_does_not_resolve_is_refused() -> None:
    problem = callback_url_error("https://no-such-host.invalid/hook", "/callback_url", allow_private=False)
    assert problem is not None and "does not resolve" in problem.message


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "http://", "http:///path", "http://user:pw@example.com/", "http://[::1]/",
     "http://example.com:65536/", "http://exa mple.com/", "http://example.com/a b", "example.com", "",
     "http://example.com/" + "a" * 2048, 42, None],
)  # fmt: skip
def test_what_is_not_an_http_url_with_a_host_is_refused_whatever_the_setting(url: object) -> None:
    problem = callback_url_error(url, "/steps/0/callback_url", allow_private=True)
    assert problem is not None and problem.path == "/steps/0/callback_url"


def test_the_documented_pattern_is_the_one_checked() -> None:
    # Given the pattern as the OpenAPI document states it (an ECMA regular expression Python reads alike)
    pattern = re.compile(CALLBACK_URL_PATTERN)
    # Then every URL it admits is taken, and what it refuses is refused
    for url in ("http://a", "https://a.b:1/c?d#e", "http://127.0.0.1:65535"):
        assert pattern.fullmatch(url) and callback_url_error(url, "/u", allow_private=True) is None
    for url in ("http://a:65536", "http://a b", "https://[::1]/", "http://a/\n"):
        assert not pattern.fullmatch(url) and callback_url_error(url, "/u", allow_private=True) is not None
