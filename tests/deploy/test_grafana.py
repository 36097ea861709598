"""Grafana provisioning: files load, dashboards are up to date with their builder, panels lie in the
grid, variables are quoted, every panel names metrics the worker exports, every SQL panel runs
against the audit table's DDL, and alerts have one source (Prometheus)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowaudit.sinks.clickhouse import qualify
from flowaudit.sinks.reports import load_reports
from tests.deploy.conftest import check_promql

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
PROMETHEUS_DIR = GRAFANA.parent / "prometheus"


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


def test_alerts_have_one_source_prometheus() -> None:
    """Grafana provisions no alert rules of its own (they duplicated Prometheus's, with no contact
    point): the critical conditions are Prometheus rules, routed by Alertmanager."""
    assert not (GRAFANA / "provisioning" / "alerting").exists()
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for name in (
        "FlowauditHealthDataBlockedLeavingEEA",
        "FlowauditTransferWithoutSafeguard",
        "FlowauditAuditSinkFailing",
    ):
        assert alerts[name]["labels"]["severity"] == "critical"


@pytest.mark.parametrize("name", ["flowaudit-live.json", "flowaudit-compliance.json"])
def test_every_panel_lies_inside_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard(name)["panels"]:
        place = panel["gridPos"]
        assert place["w"] > 0 and place["h"] > 0 and place["x"] >= 0 and place["y"] >= 0, panel["title"]
        assert place["x"] + place["w"] <= 24, f"{panel['title']!r} ends past column 24: {place}"
        cells = {
            (x, y)
            for x in range(place["x"], place["x"] + place["w"])
            for y in range(place["y"], place["y"] + place["h"])
        }
        assert taken.isdisjoint(cells), f"{panel['title']!r} overlaps another panel: {place}"
        taken |= cells


# a dashboard variable in SQL: $name, ${name} or ${name:format}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::(\w+))?\}|(\w+))")


def test_no_query_interpolates_a_variable_unquoted() -> None:
    """Every variable in a SQL panel is formatted by Grafana as a quoted, escaped SQL string; only the
    ClickHouse plugin's time macros stand bare."""
    dashboard = _dashboard("flowaudit-compliance.json")
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    seen: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for braced, form, bare in _VARIABLE.findall(target["rawSql"]):
                if bare in ("__fromTime", "__toTime"):
                    continue
                assert braced in names and form == "sqlstring", f"{panel['title']!r}: ${{{braced or bare}}}"
                seen.add(braced)
    assert seen == names  # the check saw the variables it guards


def test_the_report_parameters_become_quoted_variables() -> None:
    sql = _builder().grafana_sql("SELECT 1 WHERE user_id = {user:String} AND r = {recipient:String}")
    assert sql == "SELECT 1 WHERE user_id = ${user:sqlstring} AND r = ${recipient:sqlstring}"


def test_legal_bases_count_each_event_once() -> None:
    panels = {panel["title"]: panel for panel in _dashboard("flowaudit-live.json")["panels"]}
    (target,) = panels["Events/s by legal basis"]["targets"]
    assert "flowaudit_events_by_legal_basis_total" in target["expr"]  # not the per-category counter


def test_destinations_are_drawn_as_a_map_and_a_bar_chart() -> None:
    drawn = [p for p in _dashboard("flowaudit-compliance.json")["panels"] if p["type"] != "table"]
    panels = {panel["type"]: panel for panel in drawn if "destination" in panel["title"].lower()}
    layer = panels["geomap"]["options"]["layers"][0]
    assert layer["location"] == {
        "mode": "lookup",
        "lookup": "destination_country",
        "gazetteer": "public/gazetteer/countries.json",
    }
    assert layer["config"]["style"]["size"]["field"] == "events"
    assert layer["config"]["style"]["color"]["field"] == "blocked"
    bars = panels["barchart"]
    assert bars["options"]["xField"] == "destination_country"
    kept = {"destination_country", "allowed", "blocked"}
    excluded = set(bars["transformations"][0]["options"]["excludeByName"])
    destinations = load_reports()["destinations"].sql
    for panel in (panels["geomap"], bars):
        assert panel["targets"][0]["rawSql"] == _builder().grafana_sql(destinations)
    assert kept.isdisjoint(excluded)


def _sqlstring(value: str) -> str:
    """Grafana's `sqlstring` variable format: the value in single quotes, its quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def _as_clickhouse(sql: str, table: str, recipient: str = "") -> str:
    """What the ClickHouse plugin sends, with the macros of a fixed time range, user and recipient."""
    text = sql.replace("$__fromTime", "toDateTime('2025-01-01 00:00:00')")
    text = text.replace("$__toTime", "toDateTime('2100-01-01 00:00:00')")
    text = text.replace("${user:sqlstring}", _sqlstring("alice"))
    return qualify(text.replace("${recipient:sqlstring}", _sqlstring(recipient)), table)


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
    tables = [panel for panel in dashboard["panels"] if panel["type"] == "table"]
    assert len(tables) == len(load_reports())  # one table per report, and the map and bars above
    assert dashboard["templating"]["list"][0]["name"] == "user"
    for panel in dashboard["panels"]:
        target = panel["targets"][0]
        assert target["datasource"]["uid"] == "clickhouse" and "{" not in target["rawSql"].replace(
            "${user:sqlstring}", ""
        ).replace("${recipient:sqlstring}", "")
        columns, rows = store.query(_as_clickhouse(target["rawSql"], store.table, recipient))
        assert columns and rows, panel["title"]
        if panel["type"] == "barchart":  # its bars and the columns it leaves out are the report's
            left_out = set(panel["transformations"][0]["options"]["excludeByName"])
            assert panel["options"]["xField"] in columns and left_out <= set(columns), panel["title"]
            assert set(columns) - left_out - {panel["options"]["xField"]}, panel["title"]  # something to draw


def test_mechanisms_and_rules_are_drawn_as_bar_charts() -> None:
    bars = {
        panel["description"]: panel
        for panel in _dashboard("flowaudit-compliance.json")["panels"]
        if panel["type"] == "barchart"
    }
    assert set(bars) == {
        "schemas/reports/destinations.sql",
        "schemas/reports/transfer-mechanisms.sql",
        "schemas/reports/blocked-by-rule.sql",
    }
    reports = load_reports()
    for name, x_field in (("transfer-mechanisms", "mechanism"), ("blocked-by-rule", "rule")):
        panel = bars[f"schemas/reports/{name}.sql"]
        assert panel["options"]["xField"] == x_field
        assert panel["targets"][0]["rawSql"] == _builder().grafana_sql(reports[name].sql)
