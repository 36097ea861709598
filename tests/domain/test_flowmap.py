"""The data-flow map's graph: built from the flow-map report's rows, counted as the docstring says."""

from __future__ import annotations

from typing import Any

import pytest

from flowaudit.domain.flowmap import (
    LAYERS,
    FlowGraph,
    FlowMapError,
    FlowRow,
    build_flow_graph,
    graph_as_dict,
    node_id,
    row_from_record,
)
from tests.conftest import read_data


def _known() -> tuple[FlowGraph, dict[str, Any]]:
    data = read_data("map/rows.yaml")
    rows = [row_from_record(record) for record in data["rows"]]
    return build_flow_graph(rows, data["since"], data["until"]), read_data("map/expected.yaml")


def test_the_known_rows_give_the_known_nodes_and_edges() -> None:
    graph, expected = _known()
    assert (graph.events, graph.blocked) == (expected["events"], expected["blocked"])
    assert [[n.layer, n.name, n.events, n.blocked, n.outside] for n in graph.nodes] == expected["nodes"]
    got = [[e.source, e.target, e.events, e.blocked, e.mechanism] for e in graph.edges]
    assert sorted(got, key=str) == sorted(expected["edges"], key=str)
    # the order is fixed: by layer, then most events first, then by name
    assert [e.source.partition(":")[0] for e in graph.edges] == sorted(
        (e.source.partition(":")[0] for e in graph.edges), key=LAYERS.index
    )
    assert all(e.outside == (e.mechanism is not None) for e in graph.edges)
    assert (graph.since, graph.until) == ("2025-11-01", "2025-12-01")


def test_every_event_is_counted_once_per_layer_after_the_categories() -> None:
    graph, _ = _known()
    for layer in ("purpose", "recipient", "country"):
        nodes = graph.layer(layer)
        assert sum(n.events for n in nodes) == graph.events, layer
        assert sum(n.blocked for n in nodes) == graph.blocked, layer
    for source_layer in ("purpose", "recipient"):
        edges = [e for e in graph.edges if e.source.startswith(source_layer + ":")]
        assert sum(e.events for e in edges) == graph.events
    # an event carries at least one category: the categories count it at least once
    assert sum(n.events for n in graph.layer("category")) > graph.events
    for node in graph.layer("category"):
        out = [e for e in graph.edges if e.source == node.id]
        assert (sum(e.events for e in out), sum(e.blocked for e in out)) == (node.events, node.blocked)


def test_a_country_reached_inside_and_outside_the_zone_has_an_edge_for_each() -> None:
    """GB was in the EEA until 2020-12-31: flows of 2020 and of 2021 to it are two edges."""
    rows = [
        FlowRow(("identity",), "backup", "GCS", "GB", False, None, 4, 0),
        FlowRow(("identity",), "backup", "GCS", "GB", True, "adequacy", 3, 1),
        FlowRow(("identity", "identity"), "backup", "GCS", "GB", True, "(not recorded)", 1, 0),
    ]
    graph = build_flow_graph(rows)
    country = graph.node("country", "GB")
    assert country is not None and country.outside and (country.events, country.blocked) == (8, 1)
    edges = {(e.mechanism, e.events, e.blocked) for e in graph.edges if e.target == "country:GB"}
    assert edges == {(None, 4, 0), ("adequacy", 3, 1), ("(not recorded)", 1, 0)}
    category = graph.node("category", "identity")
    assert category is not None and category.events == 8  # a repeated category counts once
    assert graph.policy_versions == () and graph.since is None


def test_a_purpose_and_a_category_of_one_name_are_two_nodes() -> None:
    graph = build_flow_graph([FlowRow(("backup",), "backup", "backup", "FR", False, None, 1, 0)])
    assert [n.id for n in graph.nodes] == [
        "category:backup",
        "purpose:backup",
        "recipient:backup",
        "country:FR",
    ]
    assert node_id("recipient", "a:b") == "recipient:a:b"


def test_no_rows_is_an_empty_map() -> None:
    graph = build_flow_graph([])
    assert graph.nodes == graph.edges == () and graph.events == graph.blocked == 0
    assert graph_as_dict(graph)["nodes"] == []


def test_the_policy_versions_of_the_rows_are_kept_once_and_sorted() -> None:
    rows = [
        FlowRow(("health",), "p", "r", "FR", False, None, 1, 0, ("sha256:b", "sha256:a")),
        FlowRow(("health",), "p", "r", "DE", False, None, 1, 0, ("sha256:a",)),
    ]
    assert build_flow_graph(rows).policy_versions == ("sha256:a", "sha256:b")


def test_a_row_with_no_category_is_drawn_under_none() -> None:
    record = dict(read_data("map/rows.yaml")["rows"][0], categories=[])
    assert row_from_record(record).categories == ("(none)",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"events": None}, "wrong type"),
        ({"blocked": 3, "events": 2}, "counts 3 blocked of 2 events"),
        ({"events": -1, "blocked": 0}, "counts 0 blocked of -1 events"),
    ],
)
def test_a_row_the_map_cannot_read_is_an_error(change: dict[str, Any], message: str) -> None:
    record = dict(read_data("map/rows.yaml")["rows"][0], **change)
    with pytest.raises(FlowMapError, match=message):
        row_from_record(record)


def test_a_row_missing_a_column_names_it() -> None:
    record = dict(read_data("map/rows.yaml")["rows"][0])
    del record["mechanism"]
    with pytest.raises(FlowMapError, match="lacks the column 'mechanism'"):
        row_from_record(record)


def test_the_graph_as_json_values() -> None:
    graph, expected = _known()
    plain = graph_as_dict(graph)
    assert plain["events"] == expected["events"] and len(plain["nodes"]) == len(expected["nodes"])
    assert plain["edges"][0] == {
        "source": "category:health",
        "target": "purpose:health_data_display",
        "events": 3,
        "blocked": 1,
        "outside": False,
        "mechanism": None,
    }


def test_flows_of_fewer_events_are_left_out_and_counted() -> None:
    data = read_data("map/rows.yaml")
    rows = [row_from_record(r) for r in data["rows"]]
    smallest = min(row.events for row in rows)
    whole = build_flow_graph(rows)
    trimmed = build_flow_graph(rows, min_events=smallest + 1)
    small = [row for row in rows if row.events <= smallest]
    assert (trimmed.left_out_flows, trimmed.left_out_events) == (len(small), sum(r.events for r in small))
    assert trimmed.events + trimmed.left_out_events == whole.events
    assert trimmed.min_events == smallest + 1 and whole.left_out_flows == 0
