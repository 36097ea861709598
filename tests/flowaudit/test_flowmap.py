"""`flowaudit map` and the worker's /flowaudit/map/ page, on the known input (tests/data/map/).

One run of a real `flowaudit worker` (embedded broker) over tests/data/map/events.jsonl: the CLI asks
the running worker for the map, headless Chromium loads the worker's page (the token in the URL's
fragment), the test reads the drawn nodes and edges from the page's DOM and takes a screenshot
(under the test's tmp dir; also copied to $FLOWAUDIT_MAP_SCREENSHOT when set, which is how
docs/map.png is made from the demo's store: see the README); then, the worker stopped, the CLI
reads the store itself. Chromium and Graphviz are Debian packages that
scripts/install-system-tools.sh installs as root; without them the test is skipped, saying which.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flowaudit.broker import EmbeddedBroker
from flowaudit.common.settings import Settings
from flowaudit.runtime import all_topics
from tests.conftest import DATA_DIR, read_data
from tests.helpers import CHROMIUM, WorkerProcess, chromium, run_cli, wait_for, worker_env

pytestmark = pytest.mark.integration
EVENTS = DATA_DIR / "map" / "events.jsonl"
PERIOD = ("--since", "2025-11-01", "--until", "2025-12-01")


class DrawnMap(HTMLParser):
    """The nodes and edges of the SVG in a page's DOM: element id -> its text lines."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, list[str]] = {}
        self.edges: dict[str, list[str]] = {}
        self.state = ""
        self._open: list[list[str] | None] = []  # per open <g>: the lines of a node or edge, or None
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "main" and values.get("id") == "map":
            self.state = values.get("data-state", "")
        if tag == "g":
            kind = values.get("class", "").split(" ")[0]
            found = {"node": self.nodes, "edge": self.edges}.get(kind)
            lines: list[str] | None = None
            if found is not None:
                lines = found.setdefault(values.get("id", ""), [])
            self._open.append(lines)
        self._in_text = tag == "text"

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._open:
            self._open.pop()
        self._in_text = False

    def handle_data(self, data: str) -> None:
        lines = next((lines for lines in reversed(self._open) if lines is not None), None)
        if self._in_text and lines is not None:
            lines.append(data)


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as started:
        started.create_topics(all_topics(Settings()), 2)
        yield started


def _expected_graph(graph: dict[str, Any]) -> None:
    expected = read_data("map/expected.yaml")
    assert [[n["layer"], n["name"], n["events"], n["blocked"], n["outside"]] for n in graph["nodes"]] == (
        expected["nodes"]
    )
    got = [[e["source"], e["target"], e["events"], e["blocked"], e["mechanism"]] for e in graph["edges"]]
    assert sorted(got, key=str) == sorted(expected["edges"], key=str)


def _expected_drawing(drawn: DrawnMap) -> None:
    """What the browser shows: every node of the known map with its counts, every edge part."""
    expected = read_data("map/expected.yaml")
    for layer, name, events, blocked, outside in expected["nodes"]:
        counts = f"{events} event{'s' if events != 1 else ''}" + (f", {blocked} blocked" if blocked else "")
        assert drawn.nodes[f"{layer}:{name}"] == [name, counts + (" · outside the EEA" if outside else "")]
    parts = set()
    for source, target, events, blocked, mechanism in expected["edges"]:
        zone = mechanism or "inside"
        parts |= {f"{source}->{target}|{zone}|allowed"} if events > blocked else set()
        parts |= {f"{source}->{target}|{zone}|blocked"} if blocked else set()
    assert set(drawn.edges) == parts
    assert drawn.edges["recipient:Twilio->country:US|scc|blocked"] == ["scc: 1 blocked"]
    assert drawn.edges["recipient:Strava->country:US|consent_derogation|allowed"] == ["consent_derogation: 1"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-tools.sh)")
@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_the_map_through_the_worker_in_a_browser_and_from_the_store(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    env = worker_env(broker.url, tmp_path / "data")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()
        produced = run_cli(env, "produce", str(EVENTS))
        assert produced.returncode == 0, produced.stderr
        events = len(EVENTS.read_text().splitlines())
        wait_for(lambda: worker.metric("flowaudit_audit_rows_total") >= events, 30, "the map's audit rows")

        asked = run_cli(env, "map", *PERIOD, "--out", str(tmp_path / "map.json"))
        assert asked.returncode == 0, asked.stderr
        assert b"held by the running worker" in asked.stderr
        assert asked.stderr.decode().splitlines()[-1] == (
            "flowaudit: map of 10 events (5 blocked): 5 categories, 6 purposes, 7 recipients, "
            f"4 countries -> {tmp_path / 'map.json'}"
        )
        _expected_graph(json.loads((tmp_path / "map.json").read_text()))

        token = json.loads((tmp_path / "data" / "worker.json").read_text())["web_token"]
        page = (
            f"http://127.0.0.1:{env['FLOWAUDIT_WEB_PORT']}/flowaudit/map/"
            f"?since=2025-11-01&until=2025-12-01#token={token}"
        )
        dom = chromium(tmp_path / "profile", "--dump-dom", page)
        drawn = DrawnMap()
        drawn.feed(dom.stdout)
        assert drawn.state == "drawn", dom.stdout[-2000:] + dom.stderr[-2000:]
        _expected_drawing(drawn)
        screenshot = tmp_path / "map.png"
        shot = chromium(tmp_path / "profile", f"--screenshot={screenshot}", page)
        assert screenshot.exists() and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
        if os.environ.get("FLOWAUDIT_MAP_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["FLOWAUDIT_MAP_SCREENSHOT"])
        # a wrong token: the worker refuses, the page says so and asks for one
        refused = chromium(tmp_path / "profile", "--dump-dom", page.replace(token, "w" * len(token)))
        denied = DrawnMap()
        denied.feed(refused.stdout)
        assert denied.state == "error" and denied.nodes == {}, refused.stdout[-2000:]
        assert "The worker answered 401" in refused.stdout and '<label id="token-field">' in refused.stdout
        assert token not in worker.log_path.read_text()  # the fragment never reaches the server
    finally:
        worker.ensure_stopped()
    _from_the_store(env, tmp_path, events)


def _from_the_store(env: dict[str, str], tmp_path: Path, events: int) -> None:
    """The worker gone, `flowaudit map` opens the store itself; without dot it says so in a line."""
    drawn = run_cli(env, "map", "--out", str(tmp_path / "all.json"))
    assert drawn.returncode == 0 and b"held by" not in drawn.stderr, drawn.stderr
    assert json.loads((tmp_path / "all.json").read_text())["events"] == events  # December's too
    svg = run_cli(env, "map", *PERIOD)
    assert svg.returncode == 0 and svg.stdout.startswith(b"<?xml") and b"</svg>" in svg.stdout
    page = run_cli(env, "map", *PERIOD, "--out", str(tmp_path / "map.html"))
    assert page.returncode == 0 and "<svg" in (tmp_path / "map.html").read_text()
    no_dot = run_cli({**env, "PATH": str(tmp_path / "nothing")}, "map", *PERIOD)
    assert no_dot.returncode == 2 and no_dot.stdout == b""
    assert no_dot.stderr.decode().splitlines() == [
        "flowaudit: Graphviz is not installed: the map needs its `dot` program "
        "(Debian: apt-get install graphviz)"
    ]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--out", "map.png"], "flowaudit: --out map.png: name a .svg, .html, .dot, .json file"),
        (["--since", "yesterday"], "flowaudit: not an ISO-8601 date or time: 'yesterday'"),
        (
            ["--since", "2025-12-01", "--until", "2025-11-01"],
            "flowaudit: --since 2025-12-01 is after --until",
        ),
        ([], "flowaudit: no chain key"),  # no store in that data directory
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, arguments: list[str], error: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    done = run_cli({**env, "FLOWAUDIT_DATA_DIR": str(tmp_path)}, "map", *arguments)
    assert done.returncode == 2 and done.stdout == b""
    assert len(done.stderr.decode().splitlines()) == 1 and done.stderr.decode().startswith(error)
    assert list(tmp_path.iterdir()) == []  # nothing created
