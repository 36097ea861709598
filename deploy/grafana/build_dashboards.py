"""Builds the Grafana dashboards and alert rules of deploy/grafana from code (run after a change).

    python deploy/grafana/build_dashboards.py

The compliance dashboard's panels are the report SQL files themselves, with the report parameters
mapped to Grafana's time range (`$__fromTime`, `$__toTime`) and a `user` variable; a test checks the
committed JSON is what this script builds, that every PromQL names a metric the worker exports and
that every SQL panel runs against the audit table's DDL.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from flowaudit.sinks.reports import load_reports  # noqa: E402

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
        [("sum by (legal_basis) (rate(flowaudit_events_by_category_total[5m]))", "{{legal_basis}}")],
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


def _grid(index: int, width: int = 12, height: int = 8) -> dict[str, int]:
    return {"x": (index % 2) * width, "y": (index // 2) * height, "w": width, "h": height}


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
    return text.replace("{user:String}", "'${user}'").replace("{recipient:String}", "'${recipient}'")


def compliance_dashboard() -> dict[str, Any]:
    panels = []
    for index, report in enumerate(load_reports().values()):
        panels.append(
            {
                "id": index + 1,
                "title": report.name,
                "description": report.description + f" (schemas/reports/{report.path.name})",
                "type": "table",
                "datasource": CLICKHOUSE,
                "gridPos": _grid(index, width=24, height=10),
                "targets": [
                    {
                        "refId": "A",
                        "datasource": CLICKHOUSE,
                        "editorType": "sql",
                        "format": 1,
                        "queryType": "table",
                        "rawSql": grafana_sql(report.sql),
                    }
                ],
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


# Grafana-managed alert rules for the critical conditions (the same ones Prometheus alerts on).
CRITICAL_ALERTS = [
    (
        "flowaudit-health-data-leaves-eea",
        "Health data blocked leaving the EEA",
        'sum(increase(flowaudit_blocked_events_total{rule="health-data-leaves-eea"}[5m]))',
        "0s",
        "Health data was about to leave the EEA and the gate blocked it.",
        "Run `flowaudit report blocked-health-transfers`, identify the producer, open a DPO incident.",
    ),
    (
        "flowaudit-transfer-without-safeguard",
        "Transfer outside the EEA without a safeguard blocked",
        'sum(increase(flowaudit_blocked_events_total{rule="transfer-without-safeguard"}[5m]))',
        "0s",
        "An EEA resident's data was about to leave the EEA with no Chapter V mechanism; the gate blocked it.",
        "Run `flowaudit report transfers-outside-eea`, stop the producer, document a mechanism (DPO).",
    ),
    (
        "flowaudit-audit-sink-failing",
        "Audit inserts failing",
        "sum(increase(flowaudit_audit_insert_failures_total[5m]))",
        "2m",
        "Audit inserts into ClickHouse fail; the worker has paused consumption (nothing is lost).",
        "Check ClickHouse health, disk and the writer's grants; consumption resumes by itself.",
    ),
    (
        "flowaudit-audit-sink-stalled",
        "Audit writes stalled",
        "(time() - max(flowaudit_last_audit_write_timestamp_seconds))"
        " * (sum(rate(flowaudit_records_consumed_total[5m])) > bool 0)",
        "0s",
        "Records are consumed but no audit row was written for 5 minutes.",
        "Dump the worker's threads (py-spy dump), check ClickHouse, restart the worker if needed.",
    ),
]
THRESHOLDS = {"flowaudit-audit-sink-stalled": 300}


def alert_rules() -> dict[str, Any]:
    rules = []
    for uid, title, expr, pending, summary, description in CRITICAL_ALERTS:
        rules.append(
            {
                "uid": uid,
                "title": title,
                "condition": "C",
                "data": [
                    {
                        "refId": "A",
                        "relativeTimeRange": {"from": 600, "to": 0},
                        "datasourceUid": "prometheus",
                        "model": {"refId": "A", "expr": expr, "instant": True},
                    },
                    {
                        "refId": "C",
                        "datasourceUid": "__expr__",
                        "model": {
                            "refId": "C",
                            "type": "threshold",
                            "expression": "A",
                            "conditions": [{"evaluator": {"type": "gt", "params": [THRESHOLDS.get(uid, 0)]}}],
                        },
                    },
                ],
                "noDataState": "OK",
                "execErrState": "Error",
                "for": pending,
                "annotations": {"summary": summary, "description": description},
                "labels": {"severity": "critical", "service": "flowaudit"},
            }
        )
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "flowaudit-critical",
                "folder": "flowaudit",
                "interval": "1m",
                "rules": rules,
            }
        ],
    }


def outputs() -> dict[Path, str]:
    return {
        HERE / "dashboards" / "flowaudit-live.json": json.dumps(live_dashboard(), indent=2) + "\n",
        HERE / "dashboards" / "flowaudit-compliance.json": json.dumps(compliance_dashboard(), indent=2)
        + "\n",
        HERE
        / "provisioning"
        / "alerting"
        / "flowaudit-alerts.yml": "# Generated by deploy/grafana/build_dashboards.py\n"
        + yaml.safe_dump(alert_rules(), sort_keys=False),
    }


if __name__ == "__main__":
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
