"""Builds the Grafana dashboards of deploy/grafana from code (run after a change).

    python deploy/grafana/build_dashboards.py

The compliance dashboard's panels are the report SQL files themselves, with the report parameters
mapped to Grafana's time range (`$__fromTime`, `$__toTime`) and the `user` and `recipient`
variables, always interpolated as SQL string literals (`${user:sqlstring}`: Grafana quotes and
escapes them); the facts of the policy a report asks for (`-- policy: retention`) are written into
its panel's SQL as literals, from the shipped policy (policy/): rebuild after a policy change. The
`destinations` report is also drawn as a map and a bar chart. A test checks the
committed JSON is what this script builds, that every panel lies in the 24-column grid, that every
PromQL names a metric the worker exports and that every SQL panel runs against the audit table's DDL.

Alerts have one source: Prometheus's rules (deploy/prometheus/alerts.yml), routed by Alertmanager.
Grafana provisions none (it used to provision copies of the critical ones, with no contact point).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from flowaudit.domain.policy import load_policy  # noqa: E402
from flowaudit.sinks.reports import POLICY_INPUTS, load_reports, policy_parameters  # noqa: E402

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}

LIVE_PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    (
        "Events/s by kind and decision",
        "timeseries",
        [("sum by (kind, decision) (rate(flowaudit_events_total[1m]))", "{{kind}} {{decision}}")],
        "ops",
    ),
    (
        "Blocked events/s by rule",
        "timeseries",
        [("sum by (rule) (rate(flowaudit_blocked_events_total[5m]))", "{{rule}}")],
        "ops",
    ),
    (
        "Flagged events/s by flag",
        "timeseries",
        [("sum by (flag) (rate(flowaudit_flagged_events_total[5m]))", "{{flag}}")],
        "ops",
    ),
    (
        "Consent ledger: consents recorded/s and consents held (flows it blocks: by rule, above)",
        "timeseries",
        [
            ("sum by (action) (rate(flowaudit_consents_total[5m]))", "{{action}}/s"),
            ("sum(flowaudit_consent_ledger_consents)", "consents in the ledger"),
        ],
        "short",
    ),
    (
        "Events/s by data category",
        "timeseries",
        [("sum by (category) (rate(flowaudit_events_by_category_total[5m]))", "{{category}}")],
        "ops",
    ),
    (
        "Events/s by legal basis",
        "timeseries",
        [("sum by (legal_basis) (rate(flowaudit_events_by_legal_basis_total[5m]))", "{{legal_basis}}")],
        "ops",
    ),
    (
        "Health data by destination (last hour)",
        "bargauge",
        [
            (
                "topk(10, sum by (destination_country, decision) "
                "(increase(flowaudit_health_data_events_total[1h])))",
                "{{destination_country}} {{decision}}",
            )
        ],
        "short",
    ),
    (
        "Transfers outside the EEA/s by mechanism",
        "timeseries",
        [
            (
                "sum by (mechanism, decision) (rate(flowaudit_transfers_by_mechanism_total[5m]))",
                "{{mechanism}} {{decision}}",
            )
        ],
        "ops",
    ),
    (
        "Dead letters/s by reason",
        "timeseries",
        [("sum by (reason) (rate(flowaudit_dead_letters_total[5m]))", "{{reason}}")],
        "ops",
    ),
    (
        "Audit rows written/s",
        "timeseries",
        [
            ("sum by (decision) (rate(flowaudit_audit_rows_total[1m]))", "{{decision}}"),
            ("sum(rate(flowaudit_audit_rows_replayed_total[5m]))", "replayed (already stored)"),
        ],
        "ops",
    ),
    (
        "Audit insert latency",
        "timeseries",
        [
            ("histogram_quantile(0.5, sum by (le) (rate(flowaudit_audit_insert_seconds_bucket[5m])))", "p50"),
            (
                "histogram_quantile(0.99, sum by (le) (rate(flowaudit_audit_insert_seconds_bucket[5m])))",
                "p99",
            ),
        ],
        "s",
    ),
    (
        "Audit sink health",
        "timeseries",
        [
            ("max(flowaudit_backpressure)", "back-pressure (1 = paused)"),
            ("sum(rate(flowaudit_audit_insert_failures_total[5m]))", "insert failures/s"),
            ("time() - max(flowaudit_last_audit_write_timestamp_seconds)", "seconds since last write"),
        ],
        "short",
    ),
    (
        "Consumer lag by topic",
        "timeseries",
        [("sum by (topic) (flowaudit_consumer_lag)", "{{topic}}")],
        "short",
    ),
    (
        "Decision latency",
        "timeseries",
        [
            (
                "histogram_quantile(0.5, sum by (le) (rate(flowaudit_decision_latency_seconds_bucket[5m])))",
                "p50",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(flowaudit_decision_latency_seconds_bucket[5m])))",
                "p99",
            ),
        ],
        "s",
    ),
    ("Policy version", "table", [("flowaudit_policy_info", "{{version}}")], "short"),
]


GRID_COLUMNS = 24  # Grafana's dashboard grid


def _grid(index: int, width: int = 12, height: int = 8, top: int = 0) -> dict[str, int]:
    """The place of the index-th panel of equal size, filling rows of the 24-column grid from `top`."""
    per_row = GRID_COLUMNS // width
    return {"x": (index % per_row) * width, "y": top + (index // per_row) * height, "w": width, "h": height}


def live_dashboard() -> dict[str, Any]:
    panels = []
    for index, (title, kind, queries, unit) in enumerate(LIVE_PANELS):
        panels.append(
            {
                "id": index + 1,
                "title": title,
                "type": kind,
                "datasource": PROMETHEUS,
                "gridPos": _grid(index),
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + n),
                        "datasource": PROMETHEUS,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for n, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return _dashboard("flowaudit-live", "flowaudit: live flow", panels, [])


def grafana_sql(sql: str) -> str:
    """A report's SQL with its parameters mapped to the dashboard's time range and variables."""
    lines = [line for line in sql.splitlines() if not line.startswith("--")]
    text = "\n".join(lines).strip()
    text = re.sub(r"\{since:[^}]*\}", "$__fromTime", text)
    text = re.sub(r"\{until:[^}]*\}", "$__toTime", text)
    for name, values in _policy_literals().items():
        text = text.replace(f"{{{name}:Array(String)}}", values)
    # Grafana's sqlstring format quotes the value and escapes its quotes: never raw text in the SQL
    return text.replace("{user:String}", "${user:sqlstring}").replace(
        "{recipient:String}", "${recipient:sqlstring}"
    )


@functools.cache
def _policy_literals() -> dict[str, str]:
    """The shipped policy's facts the reports may ask for, as ClickHouse array literals."""
    policy = load_policy(ROOT / "policy")
    asks_all = dataclasses.replace(load_reports()["user-disclosures"], policy_inputs=tuple(POLICY_INPUTS))
    return {
        name: "[" + ", ".join(_quoted(value) for value in values) + "]"
        for name, values in policy_parameters(asks_all, policy).items()
    }


def _quoted(value: str) -> str:
    """A ClickHouse string literal: backslashes and quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_target(sql: str) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": CLICKHOUSE,
        "editorType": "sql",
        "format": 1,
        "queryType": "table",
        "rawSql": grafana_sql(sql),
    }


# the report drawn as a map and a bar chart above the tables (one row per destination country)
MAP_REPORT = "destinations"


def destination_panels(sql: str) -> list[dict[str, Any]]:
    """A world map of the destination countries (size: events; red where any flow was blocked) and a
    bar chart of allowed and blocked events per country, both from the `destinations` report."""
    return [_destination_map(sql), _destination_bars(sql)]


def _destination_map(sql: str) -> dict[str, Any]:
    return {
        "id": 1,
        "title": "Destinations of personal data (size: events; red: some flows blocked)",
        "description": "schemas/reports/destinations.sql; countries placed by ISO 3166 code.",
        "type": "geomap",
        "datasource": CLICKHOUSE,
        "gridPos": {"x": 0, "y": 0, "w": 14, "h": 12},
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                },
            },
            "overrides": [],
        },
        "options": {
            "view": {"id": "zero", "lat": 25, "lon": 10, "zoom": 1},
            "controls": {"showZoom": True, "mouseWheelZoom": False, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [
                {
                    "type": "markers",
                    "name": "destinations",
                    "tooltip": True,
                    "location": {
                        "mode": "lookup",
                        "lookup": "destination_country",
                        "gazetteer": "public/gazetteer/countries.json",
                    },
                    "config": {
                        "showLegend": True,
                        "style": {
                            "size": {"field": "events", "min": 4, "max": 30, "fixed": 5},
                            "color": {"field": "blocked", "fixed": "green"},
                            "opacity": 0.6,
                            "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                        },
                    },
                }
            ],
            "tooltip": {"mode": "details"},
        },
        "targets": [_sql_target(sql)],
    }


def _destination_bars(sql: str) -> dict[str, Any]:
    return _bars(
        2,
        "Events by destination country: allowed and blocked",
        "destinations",
        sql,
        "destination_country",
        ("outside_protected_zone", "events", "data_subjects", "health_events"),
        {"x": 14, "y": 0, "w": 10, "h": 12},
    )


# reports drawn as bar charts below the map (report, title, the bars' category, columns left out)
BAR_REPORTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "transfer-mechanisms",
        "Transfers outside the EEA by mechanism: allowed and blocked",
        "mechanism",
        ("events", "data_subjects"),
    ),
    ("blocked-by-rule", "Blocked events by rule", "rule", ("data_subjects", "health_events")),
)


def bar_panels(reports: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """A bar chart of each of BAR_REPORTS, side by side in one row from `top`."""
    width = 24 // len(BAR_REPORTS)
    return [
        _bars(
            3 + n,
            title,
            name,
            reports[name].sql,
            x_field,
            left_out,
            {"x": n * width, "y": top, "w": width, "h": 10},
        )
        for n, (name, title, x_field, left_out) in enumerate(BAR_REPORTS)
    ]


def _bars(
    panel_id: int,
    title: str,
    report: str,
    sql: str,
    x_field: str,
    left_out: tuple[str, ...],
    grid: dict[str, int],
) -> dict[str, Any]:
    """A horizontal, stacked bar chart of a report: a bar per `x_field`, its other columns but
    `left_out` stacked."""
    return {
        "id": panel_id,
        "title": title,
        "description": f"schemas/reports/{report}.sql",
        "type": "barchart",
        "datasource": CLICKHOUSE,
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "options": {
            "orientation": "horizontal",
            "stacking": "normal",
            "xField": x_field,
            "showValue": "never",
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        },
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {column: True for column in left_out}}}
        ],
        "targets": [_sql_target(sql)],
    }


def compliance_dashboard() -> dict[str, Any]:
    reports = load_reports()
    panels = destination_panels(reports[MAP_REPORT].sql)
    panels += bar_panels(reports, top=max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels))
    top = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)  # the tables below
    for index, report in enumerate(reports.values()):
        panels.append(
            {
                "id": len(panels) + 1,
                "title": report.name,
                "description": report.description + f" (schemas/reports/{report.path.name})",
                "type": "table",
                "datasource": CLICKHOUSE,
                "gridPos": _grid(index, width=24, height=10, top=top),
                "targets": [_sql_target(report.sql)],
            }
        )
    variables = [
        {
            "name": "user",
            "label": "data subject (user id)",
            "type": "textbox",
            "query": "",
            "current": {"text": "", "value": ""},
        },
        {
            "name": "recipient",
            "label": "recipient (canonical name, for subject-exposure)",
            "type": "textbox",
            "query": "",
            "current": {"text": "", "value": ""},
        },
    ]
    return _dashboard("flowaudit-compliance", "flowaudit: compliance", panels, variables)


def _dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["flowaudit"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def outputs() -> dict[Path, str]:
    return {
        HERE / "dashboards" / "flowaudit-live.json": json.dumps(live_dashboard(), indent=2) + "\n",
        HERE / "dashboards" / "flowaudit-compliance.json": json.dumps(compliance_dashboard(), indent=2)
        + "\n",
    }


if __name__ == "__main__":
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
