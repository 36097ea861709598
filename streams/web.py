"""The worker's web API, fit to expose: reports and verify over HTTP for `flowaudit report|verify`.

chDB lets one process open a store, so while a worker runs on the embedded store the CLI asks it.
Every view but `/flowaudit/health/` requires `Authorization: Bearer <token>` (FLOWAUDIT_WEB_TOKEN,
or a token the worker makes at start-up and keeps in its owner-only `worker.json`), compared in
constant time. The `Host` header must name this server (an address it binds or an allowed host
name): a page elsewhere cannot reach the API through DNS rebinding. Verify runs in windows on the
store's thread, so inserts keep going while it runs (`ClickHouseSink.verify`).

The data-flow map for the DPO's browser: `/flowaudit/map/` is a static page (Host-checked, no token,
no data) whose script reads the token from the URL's fragment (`#token=…`, never sent to a server,
so never in a log) or a form, and fetches `/flowaudit/map/svg/?since=…&until=…` with the bearer
header: the `flow-map` report drawn by Graphviz (domain/flowmap.py, sinks/flowmap.py). The page
allows only its own script (Content-Security-Policy), so nothing in the drawing can run.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flowaudit.domain.flowmap import FlowMapError, build_flow_graph, row_from_record
from flowaudit.domain.merkle import NodeId, consistency_ranges, proof_nodes, range_hash
from flowaudit.domain.policy import Policy
from flowaudit.sinks.flowmap import MapRenderError, render_svg
from flowaudit.sinks.merkle_store import MerkleStore
from flowaudit.sinks.merkle_verify import VerifyOptions
from flowaudit.sinks.receipts import EARLIEST_MS, LATEST_MS, ReceiptBuildError, build_receipt, parse_moment
from flowaudit.sinks.reports import Report, ReportError, as_records, load_reports, report_parameters
from flowaudit.sinks.verify import VerifyReport
from flowaudit.sinks.witness_state import WitnessError, witnessed_notes

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# the map's page: its own script and style only; the SVG is inserted as data
MAP_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
MAP_ASSETS = {  # path under /flowaudit/map/ -> (file in static/, content type)
    "": ("flowmap.html", "text/html"),
    "flowmap.js": ("flowmap.js", "text/javascript"),
    "flowmap.css": ("flowmap.css", "text/css"),
}


class WebApp(Protocol):
    """The part of a Faust app the views need (`faust.App.page`)."""

    def page(self, path: str) -> Callable[[Any], Any]: ...


class StoreViews(Protocol):
    """What answers the views: the audit writer (`ClickHouseSink`) or the pipeline process."""

    async def query(
        self, sql: str, parameters: dict[str, Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport: ...


class NoReaderViews:
    """What a worker on a ClickHouse server serves without FLOWAUDIT_CLICKHOUSE_READER_URL: nothing,
    rather than reports read with the writer's credentials."""

    REASON = (
        "this worker has no reader role to serve reports with: query ClickHouse as the reader "
        "(schemas/sql/roles.sql), or set FLOWAUDIT_CLICKHOUSE_READER_URL"
    )

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise ViewsUnavailable(self.REASON)

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport:
        raise ViewsUnavailable(self.REASON)


def verify_options(public_key: str | None, witnessed: str | None) -> VerifyOptions:
    """`?public_key=<vkey>&witnessed=<JSON [[chain, size, base64 root], ...]>`; ValueError when malformed."""
    heads: list[tuple[str, int, bytes]] = []
    if witnessed:
        try:
            heads = [
                (str(c), int(n), base64.b64decode(r, validate=True)) for c, n, r in json.loads(witnessed)
            ]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"witnessed: want [[chain, size, base64 root], ...] ({exc})") from None
    return VerifyOptions(public_key or None, tuple(heads))


class ViewsUnavailable(Exception):
    """The web API has nothing to answer this with (HTTP 503)."""


@dataclass(frozen=True)
class WebGuard:
    """Who may call the API: a bearer token, and the Host names this server answers to."""

    token: str
    allowed_hosts: frozenset[str]

    @classmethod
    def for_server(cls, token: str, bind: str, port: int, extra_hosts: Iterable[str] = ()) -> WebGuard:
        names = {*LOOPBACK_NAMES, f"[{bind}]" if ":" in bind else bind, *extra_hosts}
        return cls(token, frozenset({*names, *(f"{name}:{port}" for name in names)}))

    def refusal(self, headers: Mapping[str, str], *, needs_token: bool = True) -> tuple[int, str] | None:
        """(HTTP status, reason) when the request must be refused, else None."""
        host = headers.get("Host", "").strip().lower()
        if host not in self.allowed_hosts:
            return 421, f"this server does not answer to Host {host!r}"
        if not needs_token:
            return None
        scheme, _, presented = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        ):
            return 401, "a valid bearer token is required (Authorization: Bearer <FLOWAUDIT_WEB_TOKEN>)"
        return None


def add_web_views(
    app: WebApp,
    store: StoreViews,
    guard: WebGuard,
    policy: Policy | None = None,
    witness_state: Path | None = None,
) -> None:
    """Reports and verify over HTTP, guarded; health for probes (Host-checked, no token). Reports
    that ask for facts of the policy (retention) get them from `policy`, the worker's. Receipts
    prove against the trees of the witness whose state is `witness_state`, if any."""
    reports = load_reports()

    def refused(web: Any, request: Any, *, needs_token: bool = True) -> Any:
        refusal = guard.refusal(request.headers, needs_token=needs_token)
        if refusal is None:
            return None
        status, reason = refusal
        headers = {"WWW-Authenticate": 'Bearer realm="flowaudit"'} if status == 401 else None
        return web.json({"error": reason}, status=status, headers=headers)

    @app.page("/flowaudit/report/{name}/")
    async def report_view(web: Any, request: Any, name: str) -> Any:
        denied = refused(web, request)
        if denied is not None:
            return denied
        report = reports.get(name)
        if report is None:
            return web.json({"error": f"unknown report {name!r}"}, status=404)
        query = request.query
        try:
            parameters = report_parameters(
                report,
                query.get("since"),
                query.get("until"),
                query.get("user"),
                query.get("recipient"),
                policy,
            )
        except ReportError as exc:
            return web.json({"error": str(exc)}, status=400)
        try:
            columns, rows = await store.query(report.sql, parameters)
        except ViewsUnavailable as exc:
            return web.json({"error": str(exc)}, status=503)
        records = as_records(columns, rows)
        return web.json({"columns": columns, "rows": [list(r.values()) for r in records]})

    @app.page("/flowaudit/verify/")
    async def verify_view(web: Any, request: Any) -> Any:
        denied = refused(web, request)
        if denied is not None:
            return denied
        try:
            options = verify_options(request.query.get("public_key"), request.query.get("witnessed"))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        try:
            report = await store.verify(options)
        except ViewsUnavailable as exc:
            return web.json({"error": str(exc)}, status=503)
        return web.json(report.as_dict())

    @app.page("/flowaudit/health/")
    async def health_view(web: Any, request: Any) -> Any:
        denied = refused(web, request, needs_token=False)
        return denied if denied is not None else web.json({"ok": True})

    add_map_views(app, store, reports["flow-map"], refused)
    add_merkle_views(app, store, refused)
    add_receipt_view(app, store, refused, witness_state)


def add_receipt_view(
    app: WebApp, store: StoreViews, refused: Callable[..., Any], witness_state: Path | None
) -> None:
    """`/flowaudit/receipt/?user=U[&since=&until=][&witnessed=]`: the subject's receipt
    (sinks/receipts.py) for an authenticated caller (the bearer token: the DPO's tooling answering
    an Art. 15 request), proved against the caller's witnessed trees, else FLOWAUDIT_WITNESS_STATE's."""

    @app.page("/flowaudit/receipt/")
    async def receipt_view(web: Any, request: Any) -> Any:
        denied = refused(web, request)
        if denied is not None:
            return denied
        query = request.query
        user = str(query.get("user") or "").strip()
        try:
            if not user:
                raise ValueError("user: a data subject's user id is required")
            since = parse_moment(query.get("since"), EARLIEST_MS, "since")
            until = parse_moment(query.get("until"), LATEST_MS, "until")
            given = query.get("witnessed")  # the caller's witness: [[chain, size, cosigned note], ...]
            witnessed = (
                {str(c): (int(n), str(note)) for c, n, note in json.loads(given)}
                if given
                else witnessed_notes(witness_state)
            )
        except (ValueError, TypeError, WitnessError) as exc:
            return web.json({"error": str(exc)}, status=400)
        loop = asyncio.get_running_loop()

        def blocking_query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
            return asyncio.run_coroutine_threadsafe(store.query(sql, parameters), loop).result()

        try:
            receipt = await asyncio.to_thread(build_receipt, blocking_query, user, since, until, witnessed)
        except ViewsUnavailable as exc:
            return web.json({"error": str(exc)}, status=503)
        except ReceiptBuildError as exc:
            return web.json({"error": str(exc)}, status=409)
        return web.json(receipt, headers={"Cache-Control": "no-store"})


def add_merkle_views(app: WebApp, store: StoreViews, refused: Callable[..., Any]) -> None:
    """`/flowaudit/merkle/consistency/?chain=&old=&new=`: a consistency proof from the Merkle tables,
    for a witness while this worker holds the embedded store (token required; the witness checks it
    against two signed roots, so it trusts nothing here)."""

    @app.page("/flowaudit/merkle/consistency/")
    async def consistency_view(web: Any, request: Any) -> Any:
        denied = refused(web, request)
        if denied is not None:
            return denied
        query = request.query
        try:
            chain, old, new = str(query["chain"]), int(query["old"]), int(query["new"])
            ranges = consistency_ranges(old, new)
        except (KeyError, ValueError) as exc:
            return web.json({"error": f"want chain, old and new (0 <= old <= new): {exc}"}, status=400)
        sql, parameters = MerkleStore(None).nodes_query(chain, proof_nodes(ranges))
        try:
            _, rows = await store.query(sql, parameters) if ranges else ([], [])
        except ViewsUnavailable as exc:
            return web.json({"error": str(exc)}, status=503)
        found = {NodeId(int(level), int(position)): _raw(digest) for level, position, digest in rows}
        try:
            proof = [range_hash(start, end, found) for start, end in ranges]
        except KeyError as exc:
            return web.json({"error": f"chain {chain}: Merkle node {exc} missing"}, status=404)
        return web.json({"proof": [base64.b64encode(element).decode() for element in proof]})


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def add_map_views(app: WebApp, store: StoreViews, report: Report, refused: Callable[..., Any]) -> None:
    """The map's page and assets (Host-checked, no token) and its SVG (token required)."""
    for asset, (filename, content_type) in MAP_ASSETS.items():
        _add_map_asset(app, asset, (STATIC_DIR / filename).read_text(), content_type, refused)

    @app.page("/flowaudit/map/svg/")
    async def map_svg_view(web: Any, request: Any) -> Any:
        denied = refused(web, request)
        if denied is not None:
            return denied
        since, until = request.query.get("since"), request.query.get("until")
        try:
            parameters = report_parameters(report, since, until, None)
            columns, rows = await store.query(report.sql, parameters)
            graph = build_flow_graph(
                (row_from_record(r) for r in as_records(columns, rows)), since or None, until or None
            )
            svg = await asyncio.to_thread(render_svg, graph)
        except ReportError as exc:
            return web.json({"error": str(exc)}, status=400)
        except (ViewsUnavailable, MapRenderError) as exc:
            return web.json({"error": str(exc)}, status=503)
        except FlowMapError as exc:
            return web.json({"error": str(exc)}, status=500)
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"}
        return web.bytes(svg.encode(), content_type="image/svg+xml", headers=headers)


def _add_map_asset(
    app: WebApp, asset: str, text: str, content_type: str, refused: Callable[..., Any]
) -> None:
    headers = {
        "Content-Security-Policy": MAP_PAGE_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    @app.page(f"/flowaudit/map/{asset}")
    async def map_asset_view(web: Any, request: Any) -> Any:
        denied = refused(web, request, needs_token=False)
        if denied is not None:
            return denied
        return web.text(text, content_type=content_type, headers=headers)  # aiohttp adds the charset
