"""The worker's web API, fit to expose: reports and verify over HTTP for `flowaudit report|verify`.

chDB lets one process open a store, so while a worker runs on the embedded store the CLI asks it.
Every view but `/flowaudit/health/` requires `Authorization: Bearer <token>` (FLOWAUDIT_WEB_TOKEN,
or a token the worker makes at start-up and keeps in its owner-only `worker.json`), compared in
constant time. The `Host` header must name this server (an address it binds or an allowed host
name): a page elsewhere cannot reach the API through DNS rebinding. Verify runs in windows on the
store's thread, so inserts keep going while it runs (`ClickHouseSink.verify`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flowaudit.sinks.reports import ReportError, as_records, load_reports, report_parameters
from flowaudit.sinks.verify import VerifyReport

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class WebApp(Protocol):
    """The part of a Faust app the views need (`faust.App.page`)."""

    def page(self, path: str) -> Callable[[Any], Any]: ...


class StoreViews(Protocol):
    """What answers the views: the audit writer (`ClickHouseSink`) or the pipeline process."""

    async def query(
        self, sql: str, parameters: dict[str, Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    async def verify(self) -> VerifyReport: ...


class NoReaderViews:
    """What a worker on a ClickHouse server serves without FLOWAUDIT_CLICKHOUSE_READER_URL: nothing,
    rather than reports read with the writer's credentials."""

    REASON = (
        "this worker has no reader role to serve reports with: query ClickHouse as the reader "
        "(schemas/sql/roles.sql), or set FLOWAUDIT_CLICKHOUSE_READER_URL"
    )

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise ViewsUnavailable(self.REASON)

    async def verify(self) -> VerifyReport:
        raise ViewsUnavailable(self.REASON)


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


def add_web_views(app: WebApp, store: StoreViews, guard: WebGuard) -> None:
    """Reports and verify over HTTP, guarded; health for probes (Host-checked, no token)."""
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
                report, query.get("since"), query.get("until"), query.get("user"), query.get("recipient")
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
            report = await store.verify()
        except ViewsUnavailable as exc:
            return web.json({"error": str(exc)}, status=503)
        return web.json(report.as_dict())

    @app.page("/flowaudit/health/")
    async def health_view(web: Any, request: Any) -> Any:
        denied = refused(web, request, needs_token=False)
        return denied if denied is not None else web.json({"ok": True})
