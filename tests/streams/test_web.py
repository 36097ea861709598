"""The web API's guard: a bearer token, and Host names this server answers to."""

from __future__ import annotations

import pytest

from flowaudit.streams.web import WebGuard

GUARD = WebGuard.for_server("t" * 32, "127.0.0.1", 6066, extra_hosts=["flowaudit.internal"])
GOOD = {"Host": "127.0.0.1:6066", "Authorization": "Bearer " + "t" * 32}


@pytest.mark.parametrize(
    "host", ["127.0.0.1:6066", "localhost:6066", "[::1]:6066", "localhost", "flowaudit.internal:6066"]
)
def test_this_servers_names_with_the_token_pass(host: str) -> None:
    assert GUARD.refusal({**GOOD, "Host": host}) is None


@pytest.mark.parametrize("host", ["evil.example:6066", "127.0.0.1.nip.io:6066", "", "127.0.0.1:6067"])
def test_another_host_is_refused_even_with_the_token(host: str) -> None:
    refusal = GUARD.refusal({**GOOD, "Host": host})
    assert refusal is not None and refusal[0] == 421


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer wrong", "Basic " + "t" * 32, "Bearer " + "t" * 31, "t" * 32]
)
def test_a_missing_or_wrong_token_is_refused(authorization: str) -> None:
    refusal = GUARD.refusal({**GOOD, "Authorization": authorization})
    assert refusal is not None and refusal[0] == 401


def test_health_needs_the_right_host_but_no_token() -> None:
    assert GUARD.refusal({"Host": "localhost:6066"}, needs_token=False) is None
    assert GUARD.refusal({"Host": "evil.example"}, needs_token=False) == (
        421,
        "this server does not answer to Host 'evil.example'",
    )


def test_a_bind_on_an_ipv6_address_is_bracketed() -> None:
    guard = WebGuard.for_server("t" * 32, "::1", 7000)
    assert "[::1]:7000" in guard.allowed_hosts
