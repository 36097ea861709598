"""The map drawn by Graphviz, and the flow-map report's SQL over a real store."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.flowmap import FlowGraph, FlowRow, build_flow_graph, row_from_record
from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import qualify
from flowaudit.sinks.flowmap import (
    MapRenderError,
    flow_map_dot,
    policy_text,
    render_html,
    render_svg,
    svg_element,
    title_text,
)
from flowaudit.sinks.reports import as_records, load_reports, report_parameters
from tests.conftest import DATA_DIR, read_data

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz's dot is not installed (scripts/install-system-tools.sh installs graphviz as root)",
)
SVG = "{http://www.w3.org/2000/svg}"
VERSION = "sha256:" + "0123456789abcdef" * 4


def known_graph() -> FlowGraph:
    data = read_data("map/rows.yaml")
    rows = [row_from_record(dict(r, policy_versions=[VERSION])) for r in data["rows"]]
    return build_flow_graph(rows, data["since"], data["until"])


def drawn(svg: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The SVG's nodes and edges by element id: their text lines (labels)."""
    root = ET.fromstring(svg)
    found: dict[str, dict[str, list[str]]] = {"node": {}, "edge": {}}
    for group in root.iter(f"{SVG}g"):
        kind = group.get("class", "").split(" ")[0]
        if kind in found:
            found[kind][group.get("id", "")] = [t.text or "" for t in group.iter(f"{SVG}text")]
    return found["node"], found["edge"]


@needs_dot
def test_every_node_and_edge_part_is_drawn_with_its_counts_and_marks() -> None:
    graph = known_graph()
    nodes, edges = drawn(render_svg(graph))
    for node in graph.nodes:
        blocked = f", {node.blocked} blocked" if node.blocked else ""
        noun = "event" if node.events == 1 else "events"
        where = " · outside the EEA" if node.outside else ""
        assert nodes[node.id] == [node.name, f"{node.events} {noun}{blocked}{where}"], node.id
    expected_edges = {}
    for edge in graph.edges:
        zone = edge.mechanism if edge.outside else "inside"
        prefix = f"{edge.mechanism}: " if edge.outside else ""
        if edge.allowed:
            expected_edges[f"{edge.source}->{edge.target}|{zone}|allowed"] = (
                [f"{prefix}{edge.allowed}"] if edge.outside else []
            )
        if edge.blocked:  # labelled only into a country
            labelled = edge.target.startswith("country:")
            expected_edges[f"{edge.source}->{edge.target}|{zone}|blocked"] = (
                [f"{prefix}{edge.blocked} blocked"] if labelled else []
            )
    assert edges == expected_edges
    assert edges["category:health->purpose:ecg_review|inside|blocked"] == []
    assert edges["recipient:Cardiology practice Lyon->country:FR|inside|blocked"] == ["1 blocked"]
    assert edges["recipient:Strava->country:US|consent_derogation|blocked"] == [
        "consent_derogation: 1 blocked"
    ]
    # four headed columns, the legend, a title with the period and the policy
    assert {"heading:category", "heading:country", "legend"} <= set(nodes)
    title = next(ET.fromstring(render_svg(graph)).iter(f"{SVG}text")).text or ""
    assert title == (
        "Data-flow map: 2025-11-01 to 2025-12-01 (UTC, end excluded) · 10 events, 5 blocked · "
        "policy sha256:0123456789ab"
    )


@needs_dot
def test_names_are_drawn_literally_whatever_they_hold() -> None:
    """A recipient is whatever a sharing named: markup, DOT escapes and quotes are its text."""
    names = ['<script>alert("x")</script>', "back\\slash \\N \\G", 'quo"te; a -> b', "a:b:c", "<b>"]
    rows = [FlowRow(("identity",), "marketing", name, "DE", False, None, 1, 0) for name in names]
    nodes, edges = drawn(render_svg(build_flow_graph(rows)))
    assert {f"recipient:{name}": nodes[f"recipient:{name}"][0] for name in names} == {
        f"recipient:{name}": name for name in names
    }
    assert f"recipient:{names[0]}->country:DE|inside|allowed" in edges


def test_widths_grow_with_events_and_blocked_parts_are_dashed_red() -> None:
    parts = [
        line for line in flow_map_dot(known_graph()).source.splitlines() if "->" in line and "tooltip" in line
    ]
    widths: dict[int, set[float]] = {}
    for line in parts:
        count = int(re.search(r": (\d+) (allowed|blocked) of", line)[1])  # type: ignore[index]
        widths.setdefault(count, set()).add(float(re.search(r"penwidth=\"?([\d.]+)", line)[1]))  # type: ignore[index]
        assert ("blocked of" in line) == ("style=dashed" in line and "#c62828" in line), line
    # one width per count, wider for more events, the widest part at the maximum
    assert all(len(w) == 1 for w in widths.values())
    ordered = [widths[count].pop() for count in sorted(widths)]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered) > 1
    assert ordered[0] >= 1 and ordered[-1] == pytest.approx(9.0)


def test_without_dot_the_error_names_graphviz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MapRenderError, match=r"Graphviz is not installed: .*`dot`.*apt-get install graphviz"):
        render_svg(known_graph())


def test_a_failing_dot_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho 'Error: something broke' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MapRenderError, match=r"^Graphviz's dot failed \(exit 3\): Error: something broke$"):
        render_svg(known_graph())


def test_titles_name_the_period_and_the_policies() -> None:
    assert policy_text(()) == "no policy"
    assert policy_text((), VERSION) == "policy sha256:0123456789ab (loaded; no decision in the period)"
    assert policy_text(("sha256:aa", "sha256:bb")) == "policies sha256:aa, sha256:bb"
    assert policy_text(tuple(f"v{i}" for i in range(5))).endswith("v0, v1, v2 and 2 more")
    empty = build_flow_graph([], None, "2025-12-01")
    assert title_text(empty, VERSION) == (
        "Data-flow map: the first event to 2025-12-01 (UTC, end excluded) · 0 events, 0 blocked · "
        "policy sha256:0123456789ab (loaded; no decision in the period)"
    )
    assert title_text(build_flow_graph([])).startswith("Data-flow map: all events ·")
    trimmed = dataclasses.replace(empty, min_events=5, left_out_flows=3, left_out_events=7)
    expected = "0 blocked · left out: 3 flows of fewer than 5 events (7 events) · no policy"
    assert expected in title_text(trimmed)


@needs_dot
def test_the_html_page_holds_the_svg_and_no_script() -> None:
    page = render_html(known_graph())
    assert page.startswith("<!doctype html>") and "<script" not in page
    svg = svg_element(render_svg(known_graph()))
    assert svg.startswith("<svg") and svg in page
    assert "<title>Data-flow map: 2025-11-01 to 2025-12-01" in page


def _store_of_map_events(store_factory: Any, policy: Policy) -> Any:
    decider = Decider(policy)
    records = []
    lines = (DATA_DIR / "map" / "events.jsonl").read_text().splitlines()
    for offset, line in enumerate(lines):
        event = event_from_mapping(json.loads(line), policy)
        records.append(AuditRecord(event, decider.decide(event), "map", 0, offset, 1_762_300_000_000))
    store = store_factory()
    store.write(records)
    return store


@pytest.mark.integration
def test_the_report_gives_the_known_rows_over_the_known_events(store_factory: Any, policy: Policy) -> None:
    store = _store_of_map_events(store_factory, policy)
    data = read_data("map/rows.yaml")
    report = load_reports()["flow-map"]
    columns, rows = store.query(
        qualify(report.sql, store.table), report_parameters(report, data["since"], data["until"], None)
    )
    records = as_records(columns, rows)
    assert all(r.pop("policy_versions") == [policy.version] for r in records)
    assert sorted(records, key=str) == sorted(data["rows"], key=str)
    # without a period: every event, the December one too
    columns, rows = store.query(qualify(report.sql, store.table), report_parameters(report, None, None, None))
    assert sum(r["events"] for r in as_records(columns, rows)) == len(
        (DATA_DIR / "map" / "events.jsonl").read_text().splitlines()
    )
