"""The data-flow map drawn: a `FlowGraph` (domain/flowmap.py) laid out by Graphviz, as SVG or HTML.

Why Graphviz: `dot` lays out layered graphs (here four columns, left to right) with edge crossings
minimised, and writes SVG itself, so `flowaudit map --out map.svg` needs no browser, and the
worker serves the very same SVG to the DPO's browser (streams/web.py). The `graphviz` package is a
thin binding that builds the DOT source with correct quoting; `render_svg` runs the `dot` program
(Debian package `graphviz`) itself, to bound it with a timeout. A JavaScript library (d3-sankey,
elkjs) would give an interactive page but no SVG file without a browser.

What the drawing shows, from the graph alone:
- columns: data categories, purposes, recipients, destination countries, each headed;
- node height and edge width grow with the square root of their events (areas stay comparable);
  every node says its events and blocked events, every node and edge has them in its tooltip;
- an edge's allowed events and its blocked ones are drawn as two edges: allowed grey (orange when
  the flow left the protected zone), blocked red and dashed;
- an edge into a country is labelled: outside the protected zone (the EEA as it stood when each flow
  happened) with its transfer mechanism and count, and with its blocked count; a country reached
  outside the zone is drawn orange. Edges before it carry their counts in their tooltips only;
- a legend, and a title with the period, the totals and the policy versions that decided the events.

SVG element ids are the graph's own: `<layer>:<name>` for a node, `<source>-><target>|<zone or
mechanism>|allowed|blocked` for an edge part (the DOT names are `n<i>`: the binding reads a colon in
an edge's end as a port). `dot` missing or failing is a `MapRenderError` saying so in one line.
"""

from __future__ import annotations

import html
import itertools
import math
import subprocess

import graphviz

from flowaudit.domain.flowmap import LAYERS, Edge, FlowGraph, Node

LAYER_HEADINGS = {
    "category": "DATA CATEGORIES",
    "purpose": "PURPOSES",
    "recipient": "RECIPIENTS",
    "country": "COUNTRIES",
}
LAYER_FILL = {"category": "#dbe8f6", "purpose": "#e2f1dc", "recipient": "#ece3f4", "country": "#eeeeee"}
OUTSIDE_FILL = "#fbd9b0"
ALLOWED_COLOUR = "#8d99a6"
OUTSIDE_COLOUR = "#e07b16"
BLOCKED_COLOUR = "#c62828"
MAX_PEN_WIDTH = 9.0
DOT_TIMEOUT_SECONDS = 60


class MapRenderError(RuntimeError):
    """Graphviz could not draw the map (not installed, or `dot` failed)."""


def period_text(since: str | None, until: str | None) -> str:
    if not since and not until:
        return "all events"
    return f"{since or 'the first event'} to {until or 'the last'} (UTC, end excluded)"


def policy_text(versions: tuple[str, ...], loaded: str | None = None) -> str:
    """The policy versions of the decisions, shortened (sha256:0123456789ab)."""
    if not versions:
        return f"policy {_short(loaded)} (loaded; no decision in the period)" if loaded else "no policy"
    shown = ", ".join(_short(v) for v in versions[:3])
    more = f" and {len(versions) - 3} more" if len(versions) > 3 else ""
    return f"policy {shown}{more}" if len(versions) == 1 else f"policies {shown}{more}"


def _short(version: str) -> str:
    kind, _, digest = version.partition(":")
    return f"{kind}:{digest[:12]}" if digest else version[:19]


def title_text(graph: FlowGraph, loaded_policy: str | None = None) -> str:
    left_out = (
        f" · left out: {graph.left_out_flows:,} flows of fewer than {graph.min_events:,} events "
        f"({graph.left_out_events:,} events)"
        if graph.left_out_flows
        else ""
    )
    return (
        f"Data-flow map: {period_text(graph.since, graph.until)} · {graph.events:,} events, "
        f"{graph.blocked:,} blocked{left_out} · {policy_text(graph.policy_versions, loaded_policy)}"
    )


def _label(*lines: str) -> str:
    """A plain DOT label: each line's backslashes and <...> taken literally, lines joined by \\n."""
    text: str = graphviz.nohtml("\\n".join(graphviz.escape(line) for line in lines))
    return text


def _events(count: int) -> str:
    return f"{count:,} event" if count == 1 else f"{count:,} events"


def _counts(events: int, blocked: int) -> str:
    return f"{_events(events)}, {blocked:,} blocked" if blocked else _events(events)


def _size(events: int, largest: int, span: float) -> float:
    return span * math.sqrt(events / largest) if largest else 0.0


def flow_map_dot(graph: FlowGraph, loaded_policy: str | None = None) -> graphviz.Digraph:
    """The DOT graph of the map (`render_svg` lays it out)."""
    dot = graphviz.Digraph("flowmap", encoding="utf-8")
    dot.attr(
        rankdir="LR",
        ranksep="2.2",
        nodesep="0.12",
        forcelabels="true",
        fontname="DejaVu Sans",
        labelloc="t",
        fontsize="16",
    )
    dot.attr(label=_label(title_text(graph, loaded_policy)))
    dot.attr("node", shape="box", style="rounded,filled", fontname="DejaVu Sans", fontsize="11")
    dot.attr("edge", fontname="DejaVu Sans", fontsize="9", arrowsize="0.6")
    names = {node.id: f"n{index}" for index, node in enumerate(graph.nodes)}
    largest_node = max((node.events for node in graph.nodes), default=0)
    for layer in LAYERS:
        with dot.subgraph(name=f"layer_{layer}") as column:
            column.attr(rank="same")
            for node in graph.layer(layer):
                _draw_node(column, names[node.id], node, largest_node)
            column.node(
                f"heading_{layer}",
                _label(LAYER_HEADINGS[layer]),
                shape="plaintext",
                style="",
                fontsize="12",
                id=f"heading:{layer}",
            )
    for left, right in itertools.pairwise(LAYERS):
        dot.edge(f"heading_{left}", f"heading_{right}", style="invis")
    largest_edge = max((max(edge.allowed, edge.blocked) for edge in graph.edges), default=0)
    for edge in graph.edges:
        _draw_edge(dot, names[edge.source], names[edge.target], edge, largest_edge)
    dot.node("legend", _legend(), shape="plaintext", style="", id="legend")
    return dot


def _draw_node(dot: graphviz.Digraph, name: str, node: Node, largest: int) -> None:
    where = " · outside the EEA" if node.outside else ""
    counts = _counts(node.events, node.blocked)
    classes = (
        f"flow-node layer-{node.layer}"
        + (" blocked" if node.blocked else "")
        + (" outside" if node.outside else "")
    )
    dot.node(
        name,
        _label(node.name, counts + where),
        id=graphviz.escape(node.id),
        tooltip=graphviz.escape(f"{node.name}: {counts}{where}"),
        fillcolor=OUTSIDE_FILL if node.outside else LAYER_FILL[node.layer],
        color=BLOCKED_COLOUR if node.blocked else "#555555",
        height=f"{0.36 + _size(node.events, largest, 0.8):.2f}",
        **{"class": classes},
    )


def _draw_edge(dot: graphviz.Digraph, tail: str, head: str, edge: Edge, largest: int) -> None:
    zone = (edge.mechanism or "outside") if edge.outside else "inside"
    where = f" · outside the EEA ({edge.mechanism})" if edge.outside else ""
    for part, count in (("allowed", edge.allowed), ("blocked", edge.blocked)):
        if count == 0:
            continue
        blocked = part == "blocked"
        label = _edge_label(edge, count, blocked)
        colour = BLOCKED_COLOUR if blocked else OUTSIDE_COLOUR if edge.outside else ALLOWED_COLOUR
        attributes = {
            "id": graphviz.escape(f"{edge.source}->{edge.target}|{zone}|{part}"),
            "class": f"flow-edge {part}" + (" outside" if edge.outside else ""),
            "tooltip": graphviz.escape(
                f"{edge.source} → {edge.target}: {count:,} {part} of {_events(edge.events)}{where}"
            ),
            "penwidth": f"{1 + _size(count, largest, MAX_PEN_WIDTH - 1):.2f}",
            "color": colour,
            "fontcolor": colour,
            "style": "dashed" if blocked else "solid",
        }
        if label:
            attributes["xlabel"] = _label(label)
        dot.edge(tail, head, **attributes)


def _edge_label(edge: Edge, count: int, blocked: bool) -> str:
    """Only an edge into a country is labelled (its mechanism outside the EEA, its blocked count):
    labels on every edge made the demo's map three times as tall and unreadable; the nodes say
    their blocked counts and every edge has its counts in its tooltip."""
    if not edge.target.startswith("country:"):
        return ""
    mechanism = f"{edge.mechanism}: " if edge.outside else ""
    if blocked:
        return f"{mechanism}{count:,} blocked"
    return f"{mechanism}{count:,}" if edge.outside else ""


def _legend() -> str:
    """An HTML-like label (static text only: no data goes into it)."""
    rows = [
        (ALLOWED_COLOUR, "━━", "allowed flow (width: events)"),
        (OUTSIDE_COLOUR, "━━", "allowed flow outside the EEA, labelled with its transfer mechanism"),
        (BLOCKED_COLOUR, "╍╍", "blocked flow (stopped by the gate); into a country, labelled with its count"),
        (OUTSIDE_FILL, "██", "country reached outside the EEA"),
    ]
    cells = "".join(
        f'<TR><TD><FONT COLOR="{colour}">{mark}</FONT></TD><TD ALIGN="LEFT">{html.escape(text)}</TD></TR>'
        for colour, mark, text in rows
    )
    note = "category → purpose edges count an event once per category it carries"
    return (
        f'<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="2" COLOR="#999999">'
        f'<TR><TD COLSPAN="2"><B>Legend</B></TD></TR>{cells}'
        f'<TR><TD COLSPAN="2"><FONT POINT-SIZE="9">{html.escape(note)}</FONT></TD></TR></TABLE>>'
    )


def render_svg(graph: FlowGraph, loaded_policy: str | None = None) -> str:
    """The map as an SVG document, laid out by `dot`. Raises MapRenderError."""
    source = flow_map_dot(graph, loaded_policy).source
    try:
        done = subprocess.run(
            ["dot", "-Tsvg"],
            input=source.encode(),
            capture_output=True,
            timeout=DOT_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        raise MapRenderError(
            "Graphviz is not installed: the map needs its `dot` program (Debian: apt-get install graphviz)"
        ) from None
    except subprocess.TimeoutExpired:
        raise MapRenderError(f"Graphviz's dot did not lay the map out in {DOT_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise MapRenderError(f"Graphviz's dot failed (exit {done.returncode}): {reason}")
    svg: bytes = done.stdout
    return svg.decode()


def svg_element(svg: str) -> str:
    """The `<svg>` element alone, without the XML prolog and doctype `dot` writes before it."""
    return svg[svg.index("<svg") :]


def render_html(graph: FlowGraph, loaded_policy: str | None = None) -> str:
    """A standalone page: the SVG inline, no script (for a file to mail or archive)."""
    title = html.escape(title_text(graph, loaded_policy))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        "<style>body{font-family:'DejaVu Sans',sans-serif;margin:1em}svg{max-width:100%;height:auto}</style>"
        f"</head><body>\n{svg_element(render_svg(graph, loaded_policy))}</body></html>\n"
    )
