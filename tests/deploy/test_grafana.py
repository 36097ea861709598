"""Grafana provisioning: files load, dashboards are up to date with their builder, every panel and
alert names metrics the worker exports, and every SQL panel runs against the audit table's DDL."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowaudit.sinks.clickhouse import qualify
from flowaudit.sinks.reports import load_reports
from tests.deploy.conftest import check_promql

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "dashboards" / name).read_text())
    return data


def test_committed_files_are_what_the_builder_makes() -> None:
    for path, text in _builder().outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/grafana/build_dashboards.py"


def test_datasources_and_providers() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "flowaudit.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["clickhouse"]["type"] == "grafana-clickhouse-datasource"
    assert by_uid["clickhouse"]["jsonData"]["username"] == "flowaudit_dpo"  # the SELECT-only reader
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flowaudit.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_live_dashboard_queries_name_exported_metrics() -> None:
    dashboard = _dashboard("flowaudit-live.json")
    titles = {panel["title"] for panel in dashboard["panels"]}
    for needed in (
        "Blocked events/s by rule",
        "Consumer lag by topic",
        "Audit sink health",
        "Events/s by data category",
        "Flagged events/s by flag",
        "Transfers outside the EEA/s by mechanism",
    ):
        assert needed in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            check_promql(target["expr"], f"panel {panel['title']!r}")


def test_live_dashboard_shows_flags_by_id_and_transfers_by_mechanism() -> None:
    panels = {panel["title"]: panel for panel in _dashboard("flowaudit-live.json")["panels"]}
    flags = panels["Flagged events/s by flag"]["targets"]
    assert [t["expr"] for t in flags] == ["sum by (flag) (rate(flowaudit_flagged_events_total[5m]))"]
    transfers = panels["Transfers outside the EEA/s by mechanism"]["targets"]
    assert "by (mechanism, decision)" in transfers[0]["expr"]
    assert "flowaudit_transfers_by_mechanism_total" in transfers[0]["expr"]
    ids = [panel["id"] for panel in panels.values()]
    assert len(ids) == len(set(ids))  # panel ids unique


def test_grafana_alert_rules_name_exported_metrics() -> None:
    rules = yaml.safe_load((GRAFANA / "provisioning" / "alerting" / "flowaudit-alerts.yml").read_text())
    group = rules["groups"][0]
    assert {rule["uid"] for rule in group["rules"]} >= {
        "flowaudit-health-data-leaves-eea",
        "flowaudit-transfer-without-safeguard",
        "flowaudit-audit-sink-failing",
    }
    for rule in group["rules"]:
        ref_ids = {item["refId"] for item in rule["data"]}
        assert rule["condition"] in ref_ids
        for item in rule["data"]:
            if item["datasourceUid"] == "prometheus":
                check_promql(item["model"]["expr"], rule["uid"])
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] == "critical"


def _as_clickhouse(sql: str, table: str, recipient: str = "") -> str:
    """What the ClickHouse plugin sends, with the macros of a fixed time range, user and recipient."""
    text = sql.replace("$__fromTime", "toDateTime('2025-01-01 00:00:00')")
    text = text.replace("$__toTime", "toDateTime('2100-01-01 00:00:00')").replace("${user}", "alice")
    return qualify(text.replace("${recipient}", recipient), table)


@pytest.mark.integration
def test_compliance_panels_run_against_the_audit_table(store_factory: Any) -> None:
    from flowaudit.domain.consent import ConsentEvent
    from flowaudit.domain.decision import Decider
    from flowaudit.domain.events import event_from_mapping
    from flowaudit.generator import EventGenerator
    from flowaudit.sinks.audit import AuditRecord
    from flowaudit.sinks.consents import ConsentAuditRecord

    store = store_factory()
    decider = Decider(store.policy)
    records = []
    for offset, raw in enumerate(EventGenerator(store.policy, seed=4).events(500)):
        event = event_from_mapping(raw | {"user_id": "alice"} if offset % 10 == 0 else raw, store.policy)
        decision = decider.decide(event)
        # rows are outside the zone when their decision names a transfer mechanism; the core on this
        # branch does not fill it yet (any mechanism will do for running the panels)
        outside = event.destination_country not in store.policy.protected_countries
        decision = decision._replace(
            transfer_mechanism=decision.transfer_mechanism or ("none" if outside else None)
        )
        records.append(AuditRecord(event, decision, "t", 0, offset, 1_762_300_000_000))
    store.write(records)
    # a consent that one of the flows relied on, then withdrawn (the consent-withdrawals panel)
    cited = next(
        r.event
        for r in records
        if r.event.has_consent and r.event.user_id == "alice" and r.decision.decision == "allowed"
    )
    consent = [
        ConsentEvent(
            f"00000000-0000-4000-8000-00000000000{n}",
            cited.occurred_at_ms + delta,
            cited.user_id or "",
            cited.consent_id or "",
            cited.purpose,
            action,
        )
        for n, (delta, action) in enumerate(((-1000, "granted"), (1000, "withdrawn")))
    ]
    store.write_consents([ConsentAuditRecord(event, "c", 0, n) for n, event in enumerate(consent)])
    recipient = next(r.decision.counterparty for r in records if r.decision.counterparty)
    dashboard = _dashboard("flowaudit-compliance.json")
    assert len(dashboard["panels"]) == len(load_reports())  # one panel per report
    assert dashboard["templating"]["list"][0]["name"] == "user"
    for panel in dashboard["panels"]:
        target = panel["targets"][0]
        assert target["datasource"]["uid"] == "clickhouse" and "{" not in target["rawSql"].replace(
            "${user}", ""
        ).replace("${recipient}", "")
        columns, rows = store.query(_as_clickhouse(target["rawSql"], store.table, recipient))
        assert columns and rows, panel["title"]
