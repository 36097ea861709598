"""The data-flow map as a graph: data categories -> purposes -> recipients -> countries.

Pure: the rows of the `flow-map` report (schemas/reports/flow-map.sql) in, a `FlowGraph` out; no
layout, no I/O (drawing is `sinks/flowmap.py`). Each row is one group of events with the same set
of data categories, purpose, recipient, destination country, zone and transfer mechanism.

What the graph guarantees:
- four layers of nodes (`LAYERS`), each node named `<layer>:<name>` so that a purpose and a
  category of the same name stay two nodes;
- a category -> purpose edge counts an event once per category it carries (an event of health and
  identity data for `ecg_review` is on both edges); every other edge and every node but a
  category's counts each event once, so the events into a layer add up to the events of the map;
- a recipient -> country edge per zone and mechanism: the part of the flows that left the protected
  zone is an edge of its own with its transfer mechanism (a country can be reached both ways, GB
  before and after 2020); a country node is `outside` when any of its flows was;
- every node and edge carries its events and, of them, the blocked ones; nodes and edges are
  sorted by layer, then by events (most first), then by name, so the same rows give the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LAYERS = ("category", "purpose", "recipient", "country")
# the name of the category of an event that carried none (no field was sent)
NO_CATEGORY = "(none)"


class FlowMapError(ValueError):
    """A report row the map cannot read (a missing column, a count that is not a count)."""


@dataclass(frozen=True)
class FlowRow:
    """One row of the flow-map report."""

    categories: tuple[str, ...]
    purpose: str
    recipient: str
    country: str
    outside: bool
    mechanism: str | None
    events: int
    blocked: int
    policy_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    id: str
    layer: str
    name: str
    events: int
    blocked: int
    outside: bool = False  # a country any flow of which left the protected zone


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    events: int
    blocked: int
    outside: bool = False  # a recipient -> country edge of flows that left the protected zone
    mechanism: str | None = None  # their transfer mechanism (adequacy, scc, bcr, dpf, ..., none)

    @property
    def allowed(self) -> int:
        return self.events - self.blocked


@dataclass(frozen=True)
class FlowGraph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    events: int
    blocked: int
    since: str | None = None  # the period, as asked (None: from the beginning, to the end)
    until: str | None = None
    policy_versions: tuple[str, ...] = ()  # the versions that decided the map's events
    min_events: int = 0  # flows (rows) of fewer events were left out of the drawing
    left_out_events: int = 0  # their events (not in `events`)
    left_out_flows: int = 0

    def layer(self, name: str) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.layer == name)

    def node(self, layer: str, name: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id(layer, name)), None)


def node_id(layer: str, name: str) -> str:
    return f"{layer}:{name}"


@dataclass
class _Tally:
    events: int = 0
    blocked: int = 0
    outside: bool = False

    def add(self, row: FlowRow) -> None:
        self.events += row.events
        self.blocked += row.blocked
        self.outside = self.outside or row.outside


def row_from_record(record: Mapping[str, Any]) -> FlowRow:
    """A report row (column name -> value, as `sinks.reports.as_records` or the web API give it)."""
    try:
        events, blocked = int(record["events"]), int(record["blocked"])
        row = FlowRow(
            categories=tuple(str(c) for c in record["categories"]) or (NO_CATEGORY,),
            purpose=str(record["purpose"]),
            recipient=str(record["recipient"]),
            country=str(record["destination_country"]),
            outside=bool(record["outside_protected_zone"]),
            mechanism=None if record["mechanism"] in (None, "") else str(record["mechanism"]),
            events=events,
            blocked=blocked,
            policy_versions=tuple(str(v) for v in record.get("policy_versions") or ()),
        )
    except KeyError as exc:
        raise FlowMapError(f"a flow-map row lacks the column {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise FlowMapError(f"a flow-map row has a value of the wrong type: {exc}") from None
    if events < 0 or not 0 <= blocked <= events:
        raise FlowMapError(f"a flow-map row counts {blocked} blocked of {events} events")
    return row


def build_flow_graph(
    rows: Iterable[FlowRow], since: str | None = None, until: str | None = None, min_events: int = 0
) -> FlowGraph:
    """The map of these rows (see the module's docstring for what it counts), without the rows of
    fewer than `min_events` events (counted as left out, so the map says what it does not show)."""
    nodes: dict[str, _Tally] = {}
    edges: dict[tuple[str, str, bool, str | None], _Tally] = {}
    versions: set[str] = set()
    events = blocked = left_out_events = left_out_flows = 0
    for row in rows:
        if row.events < min_events:
            left_out_events += row.events
            left_out_flows += 1
            continue
        events += row.events
        blocked += row.blocked
        versions.update(row.policy_versions)
        purpose = node_id("purpose", row.purpose)
        recipient = node_id("recipient", row.recipient)
        country = node_id("country", row.country)
        for category in dict.fromkeys(row.categories):
            nodes.setdefault(node_id("category", category), _Tally()).add(row)
            edges.setdefault((node_id("category", category), purpose, False, None), _Tally()).add(row)
        for name in (purpose, recipient, country):
            nodes.setdefault(name, _Tally()).add(row)
        edges.setdefault((purpose, recipient, False, None), _Tally()).add(row)
        mechanism = row.mechanism if row.outside else None
        edges.setdefault((recipient, country, row.outside, mechanism), _Tally()).add(row)
    return FlowGraph(
        nodes=tuple(sorted((_node(name, tally) for name, tally in nodes.items()), key=_node_order)),
        edges=tuple(sorted((_edge(key, tally) for key, tally in edges.items()), key=_edge_order)),
        events=events,
        blocked=blocked,
        since=since,
        until=until,
        policy_versions=tuple(sorted(versions)),
        min_events=min_events,
        left_out_events=left_out_events,
        left_out_flows=left_out_flows,
    )


def _node(name: str, tally: _Tally) -> Node:
    layer, _, label = name.partition(":")
    outside = tally.outside and layer == "country"
    return Node(name, layer, label, tally.events, tally.blocked, outside)


def _edge(key: tuple[str, str, bool, str | None], tally: _Tally) -> Edge:
    source, target, outside, mechanism = key
    return Edge(source, target, tally.events, tally.blocked, outside, mechanism)


def _node_order(node: Node) -> tuple[int, int, str]:
    return LAYERS.index(node.layer), -node.events, node.name


def _edge_order(edge: Edge) -> tuple[int, int, str, str, bool, str]:
    layer = LAYERS.index(edge.source.partition(":")[0])
    return layer, -edge.events, edge.source, edge.target, edge.outside, edge.mechanism or ""


def graph_as_dict(graph: FlowGraph) -> dict[str, Any]:
    """The graph as plain JSON values (`flowaudit map --out FILE.json`)."""
    return {
        "since": graph.since,
        "until": graph.until,
        "events": graph.events,
        "blocked": graph.blocked,
        "policy_versions": list(graph.policy_versions),
        "nodes": [vars(node) for node in graph.nodes],
        "edges": [vars(edge) for edge in graph.edges],
    }
