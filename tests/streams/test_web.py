"""The web API: its guard (a bearer token, the Host names it answers to) and its views, with fakes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape, unescape
from typing import Any

import pytest

from flowaudit.sinks.verify import VerifyReport
from flowaudit.streams.web import ViewsUnavailable, WebGuard, add_web_views
from tests.conftest import read_data

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


# --- the views, with fakes for the Faust app, its `web` helpers, the request and the store ---


@dataclass
class Answer:
    status: int
    body: Any
    content_type: str | None
    headers: dict[str, str]


class FakeWeb:
    """Faust's `web` helpers as the views use them: each gives back what it was asked to send."""

    def json(self, value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
        return Answer(status, value, "application/json", headers or {})

    def text(self, value: str, *, content_type: str, headers: dict[str, str]) -> Answer:
        return Answer(200, value, content_type, headers)

    def bytes(self, value: bytes, *, content_type: str, headers: dict[str, str]) -> Answer:
        return Answer(200, value, content_type, headers)


@dataclass
class FakeRequest:
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


class FakeApp:
    def __init__(self) -> None:
        self.pages: dict[str, Callable[..., Any]] = {}

    def page(self, path: str) -> Callable[[Any], Any]:
        def register(view: Callable[..., Any]) -> Callable[..., Any]:
            self.pages[path] = view
            return view

        return register


class FakeStore:
    """Answers the flow-map report with the known rows; another query, or any with `unavailable`, fails."""

    def __init__(self, unavailable: bool = False) -> None:
        self.unavailable = unavailable
        self.asked: list[dict[str, Any]] = []

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self.unavailable:
            raise ViewsUnavailable("no reader role")
        assert "-- name: flow-map" in sql
        self.asked.append(parameters)
        rows = read_data("map/rows.yaml")["rows"]
        columns = [*rows[0], "policy_versions"]
        return columns, [(*row.values(), ["sha256:" + "ab" * 32]) for row in rows]

    async def verify(self) -> VerifyReport:
        raise AssertionError("not asked here")


def _views(store: FakeStore | None = None) -> dict[str, Callable[..., Any]]:
    app = FakeApp()
    add_web_views(app, store or FakeStore(), GUARD)
    return app.pages


def _call(path: str, headers: dict[str, str], store: FakeStore | None = None, **query: str) -> Answer:
    answer: Answer = asyncio.run(_views(store)[path](FakeWeb(), FakeRequest(headers, query)))
    return answer


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/flowaudit/map/", "text/html"),
        ("/flowaudit/map/flowmap.js", "text/javascript"),
        ("/flowaudit/map/flowmap.css", "text/css"),
    ],
)
def test_the_map_page_needs_no_token_but_this_servers_host(path: str, content_type: str) -> None:
    page = _call(path, {"Host": "localhost:6066"})
    assert (page.status, page.content_type) == (200, content_type)
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self';")
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "sha256" not in page.body and "Strava" not in page.body  # the page holds no data
    assert _call(path, {"Host": "evil.example"}).status == 421


def test_the_page_takes_the_token_from_the_fragment_and_sends_it_as_a_header() -> None:
    page = _call("/flowaudit/map/", {"Host": "localhost"}).body
    script = _call("/flowaudit/map/flowmap.js", {"Host": "localhost"}).body
    assert '<script src="flowmap.js"' in page and "<script>" not in page  # no inline script
    assert "location.hash" in script and 'Authorization: "Bearer " + token' in script
    assert 'fetch("svg/?" + params' in script  # the query holds the period only


def test_the_map_svg_needs_the_token_and_draws_the_known_rows() -> None:
    assert _call("/flowaudit/map/svg/", {"Host": "localhost:6066"}).status == 401
    assert _call("/flowaudit/map/svg/", {**GOOD, "Host": "evil.example"}).status == 421
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (scripts/install-system-tools.sh installs graphviz)")
    store = FakeStore()
    answer = _call("/flowaudit/map/svg/", GOOD, store, since="2025-11-01", until="2025-12-01")
    assert (answer.status, answer.content_type) == (200, "image/svg+xml")
    assert answer.headers == {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"}
    svg = answer.body.decode()
    expected = read_data("map/expected.yaml")
    for layer, name, *_ in expected["nodes"]:
        assert f'id="{layer}:{escape(name)}"' in svg, name
    assert "map: 2025-11-01 to 2025-12-01" in unescape(svg) and "sha256:abababababab" in svg
    assert store.asked == [{"since": "2025-11-01 00:00:00.000", "until": "2025-12-01 00:00:00.000"}]


def test_the_map_svg_refuses_a_bad_period_and_says_why_it_cannot_draw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = _call("/flowaudit/map/svg/", GOOD, since="last tuesday")
    assert (bad.status, bad.body) == (400, {"error": "not an ISO-8601 date or time: 'last tuesday'"})
    reversed_period = _call("/flowaudit/map/svg/", GOOD, since="2025-12-01", until="2025-11-01")
    assert reversed_period.status == 400
    assert _call("/flowaudit/map/svg/", GOOD, FakeStore(unavailable=True)).body == {"error": "no reader role"}
    monkeypatch.setenv("PATH", "/nonexistent")
    no_dot = _call("/flowaudit/map/svg/", GOOD)
    assert no_dot.status == 503 and "Graphviz is not installed" in no_dot.body["error"]
