"""`flowaudit map`: the data-flow map of the audit store, to a file or standard output.

The rows are the `flow-map` report's (schemas/reports/flow-map.sql), read from the store, or from
the running worker's web API when that worker holds the embedded store (the same report view
`flowaudit report` uses); the graph is `domain/flowmap.py`'s, the drawing `sinks/flowmap.py`'s.
The output's format follows the file's suffix: `.svg` (Graphviz's SVG), `.html` (a standalone
page with the SVG inline), `.dot` (the Graphviz source, drawable elsewhere) or `.json` (the graph:
nodes, edges, counts); without `--out`, the SVG goes to standard output. A missing `dot`, a bad
period or an unwritable file is one line on standard error and exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowaudit.domain.flowmap import (
    LAYERS,
    FlowGraph,
    FlowMapError,
    build_flow_graph,
    graph_as_dict,
    row_from_record,
)
from flowaudit.sinks.flowmap import MapRenderError, flow_map_dot, render_html, render_svg
from flowaudit.sinks.reports import Report, ReportError, as_records, load_reports, report_parameters

REPORT = "flow-map"
FORMATS = (".svg", ".html", ".dot", ".json")


def draw(graph: FlowGraph, suffix: str, loaded_policy: str) -> str:
    if suffix == ".json":
        return json.dumps(graph_as_dict(graph), indent=2, ensure_ascii=False) + "\n"
    if suffix == ".dot":
        return str(flow_map_dot(graph, loaded_policy).source)
    if suffix == ".html":
        return render_html(graph, loaded_policy)
    return render_svg(graph, loaded_policy)


def run_map(
    since: str | None,
    until: str | None,
    out: Path | None,
    query: Callable[[Report, dict[str, Any]], tuple[list[str], list[tuple[Any, ...]]]],
    loaded_policy: str,
    min_events: int = 0,
) -> int:
    """Draw the map of [since, until) to `out` (by its suffix) or standard output (SVG); `query`
    answers the report from the store or from the worker that holds it (the CLI's, as for `report`)."""
    from flowaudit.sinks.clickhouse import StoreError

    suffix = out.suffix.lower() if out is not None else ".svg"
    if suffix not in FORMATS:
        print(f"flowaudit: --out {out}: name a {', '.join(FORMATS)} file", file=sys.stderr)
        return 2
    report = load_reports()[REPORT]
    try:
        parameters = report_parameters(report, since, until, None)
        records = as_records(*query(report, parameters))
        rows = (row_from_record(r) for r in records)
        graph = build_flow_graph(rows, since or None, until or None, min_events)
        text = draw(graph, suffix, loaded_policy)
    except (ReportError, StoreError, FlowMapError, MapRenderError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text)
        except OSError as exc:
            print(f"flowaudit: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    layers = ("categories", "purposes", "recipients", "countries")
    sizes = ", ".join(f"{len(graph.layer(layer))} {name}" for layer, name in zip(LAYERS, layers, strict=True))
    target = f" -> {out}" if out is not None else ""
    summary = f"map of {graph.events:,} events ({graph.blocked:,} blocked): {sizes}{target}"
    if graph.left_out_flows:
        summary += f"; left out {graph.left_out_flows:,} flows of fewer than {min_events:,} events"
    print(f"flowaudit: {summary}", file=sys.stderr)
    return 0
