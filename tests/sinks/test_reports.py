from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import AuditRecord, ChainHead
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.reports import ReportError, load_reports, normalize_time, render, report_parameters
from tests.conftest import read_data
from tests.sinks.legacy_store import create_legacy_table, legacy_write

EXPECTED = {
    "blocked-health-transfers",
    "transfers-outside-eea",
    "user-disclosures",
    "consent-missing",
    "register-drift",
    "daily-volume",
    "consent-withdrawals",
    "subject-exposure",
    "destinations",
    "transfer-mechanisms",
    "blocked-by-rule",
    "ropa-flows",

    "flow-map",
}


def test_all_reports_are_shipped_with_headers() -> None:
    reports = load_reports()
    assert set(reports) == EXPECTED
    for report in reports.values():
        assert report.description and "since" in report.parameters and "until" in report.parameters
        for name in report.parameters:
            assert "{" + name + ":" in report.sql, (report.name, name)
    assert reports["user-disclosures"].parameters == ("user", "since", "until")
    assert reports["consent-withdrawals"].optional == {"user"}
    assert reports["subject-exposure"].parameters == ("recipient", "since", "until")


def test_parameters_defaults_and_user_required() -> None:
    reports = load_reports()
    params = report_parameters(reports["daily-volume"], "2025-11-01", None, None)
    # until defaults to the end of DateTime64's range: rows dated after 2100 are reported too
    assert params == {"since": "2025-11-01 00:00:00.000", "until": "2299-12-31 23:59:59"}
    assert report_parameters(reports["daily-volume"], None, None, None)["since"] == "1900-01-01 00:00:00"
    with pytest.raises(ReportError, match="--user"):
        report_parameters(reports["user-disclosures"], None, None, None)
    assert report_parameters(reports["consent-withdrawals"], None, None, None)["user"] == ""  # all
    with pytest.raises(ReportError, match="--recipient"):
        report_parameters(reports["subject-exposure"], None, None, None)
    assert normalize_time("2025-11-01T10:00:00+02:00", "") == "2025-11-01 08:00:00.000"
    with pytest.raises(ReportError):
        normalize_time("last tuesday", "")


@pytest.mark.parametrize(
    ("name", "flag", "given"),
    [
        ("daily-volume", "user", {"user": "u-1"}),
        ("daily-volume", "recipient", {"recipient": "strava"}),
        ("user-disclosures", "recipient", {"user": "u-1", "recipient": "strava"}),
        ("subject-exposure", "user", {"recipient": "strava", "user": "u-1"}),
    ],
)
def test_a_flag_the_report_does_not_take_is_an_error_naming_its_parameters(
    name: str, flag: str, given: dict[str, str]
) -> None:
    report = load_reports()[name]
    with pytest.raises(ReportError) as error:
        report_parameters(report, None, None, given.get("user"), given.get("recipient"))
    takes = ", ".join(f"--{p}" for p in report.parameters)
    assert str(error.value) == f"report {name} takes no --{flag} (its parameters: {takes})"


def test_since_after_until_is_an_error() -> None:
    report = load_reports()["daily-volume"]
    with pytest.raises(ReportError, match="--since 2025-12-01 is after --until 2025-11-01"):
        report_parameters(report, "2025-12-01", "2025-11-01", None)
    assert report_parameters(report, "2025-11-01", "2025-11-01", None)["since"]  # an empty range is fine


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["csv", "table", "json"])
def test_a_report_with_no_rows_still_names_its_columns(store_factory: Any, fmt: str) -> None:
    store = store_factory()
    report = load_reports()["user-disclosures"]
    columns, rows = store.query(
        qualify(report.sql, store.table), report_parameters(report, None, None, "nobody")
    )
    assert rows == [] and columns[:3] == ["recipient", "recipient_type", "event_type"]
    text = render(columns, rows, fmt)
    if fmt == "json":
        assert text == "[]\n"
    elif fmt == "csv":
        assert text == ",".join(columns) + "\n"  # the header, not an empty line
    else:
        assert text.splitlines()[0].split() == columns


def test_render_formats() -> None:
    columns = ["country", "events", "when", "rules"]
    rows = [("US", 3, datetime(2025, 1, 1, 12), ["a", "b"])]
    table = render(columns, rows, "table")
    assert "country" in table and "US" in table and "(1 rows)" in table and "a, b" in table
    assert json.loads(render(columns, rows, "json")) == [
        {"country": "US", "events": 3, "when": "2025-01-01T12:00:00.000Z", "rules": ["a", "b"]}
    ]
    assert render(columns, rows, "csv").splitlines() == [
        "country,events,when,rules",
        'US,3,2025-01-01T12:00:00.000Z,"a,b"',
    ]
    with pytest.raises(ReportError):
        render(columns, rows, "xml")


def _mixed_store(store_factory: Any, policy: Policy) -> tuple[AuditStore, dict[str, Any]]:
    """The store of tests/data/reports/mixed_formats.yaml: format 1 rows, migrated, format 2 rows."""
    data: dict[str, Any] = read_data("reports/mixed_formats.yaml")
    decider = Decider(policy)
    records: dict[int, list[AuditRecord]] = {1: [], 2: []}
    for offset, row in enumerate(data["rows"]):
        event = event_from_mapping(row["event"], policy)
        decision = decider.decide(event)._replace(**row.get("decision", {}))
        records[row["format"]].append(AuditRecord(event, decision, "in", 0, offset, 1_762_300_000_000))
    first = store_factory()
    create_legacy_table(first.client, first.table)
    legacy_write(first.client, first.table, policy, first.key, records[1], {})
    store = store_factory()  # migrates
    store.write(records[2])
    return store, data


def _run(store: AuditStore, name: str, **kwargs: str) -> list[dict[str, Any]]:
    report = load_reports()[name]
    params = report_parameters(
        report, kwargs.get("since"), kwargs.get("until"), kwargs.get("user"), kwargs.get("recipient")
    )
    columns, rows = store.query(qualify(report.sql, store.table), params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


@pytest.mark.integration
def test_reports_over_rows_before_and_after_row_format_2(store_factory: Any, policy: Policy) -> None:
    store, data = _mixed_store(store_factory, policy)
    assert store.heads["in/0"] == ChainHead(2, store.heads["in/0"].link_hash, len(data["rows"]) - 1)

    outside = _run(store, "transfers-outside-eea")
    events: Counter[tuple[str, str]] = Counter()
    categories: dict[tuple[str, str], set[str]] = {}
    for row in outside:
        group = (row["recipient"], row["transfer_mechanism"])
        events[group] += row["events"]
        categories.setdefault(group, set()).update(row["categories"])
    expected = {(r[0], r[1]): (r[2], set(r[3])) for r in data["transfers_outside_eea"]}
    assert {group: (events[group], categories[group]) for group in events} == expected
    # each event once: the rows add up to the events outside the zone, whatever their categories
    _, [(outside_events,)] = store.query(f"SELECT count() FROM {store.table} WHERE outside_protected_zone")
    assert sum(row["events"] for row in outside) == outside_events

    carol: Counter[str] = Counter()
    for row in _run(store, "user-disclosures", user="carol"):
        assert row["via"] == "user_id"  # no bulk transfers in this store
        carol[row["recipient"]] += row["events"]
    assert dict(carol) == data["user_disclosures_carol"]

    for name in ("blocked-health-transfers", "consent-missing", "register-drift", "daily-volume"):
        _run(store, name)  # every report runs over a store of both formats
    _run(store, "consent-withdrawals")
    strava = _run(store, "subject-exposure", recipient="strava")  # carol and dave, by user_id only
    assert {r["kind"] for r in strava} == {"subjects"} and sum(r["events"] for r in strava) == 4


@pytest.mark.integration
def test_destinations_count_each_event_once_per_country(store_factory: Any, policy: Policy) -> None:
    """The map's report against the rows themselves, aggregated here."""
    store, _ = _mixed_store(store_factory, policy)
    _, rows = store.query(
        "SELECT destination_country, decision, user_id, special_category, outside_protected_zone "
        f"FROM {store.table}"
    )
    expected: dict[str, dict[str, Any]] = {}
    for country, decision, user_id, special, outside in rows:
        entry = expected.setdefault(
            country,
            {
                "events": 0,
                "allowed": 0,
                "blocked": 0,
                "subjects": set(),
                "health_events": 0,
                "outside": False,
            },
        )
        entry["events"] += 1
        entry[decision] += 1
        entry["health_events"] += int(bool(special))
        entry["outside"] = entry["outside"] or bool(outside)
        if user_id is not None:
            entry["subjects"].add(user_id)
    got = _run(store, "destinations")
    assert [row["events"] for row in got] == sorted((row["events"] for row in got), reverse=True)
    assert len(expected) >= 2 and any(entry["blocked"] for entry in expected.values())
    assert {
        row["destination_country"]: {
            "events": row["events"],
            "allowed": row["allowed"],
            "blocked": row["blocked"],
            "subjects": row["data_subjects"],
            "health_events": row["health_events"],
            "outside": bool(row["outside_protected_zone"]),
        }
        for row in got
    } == {country: entry | {"subjects": len(entry["subjects"])} for country, entry in expected.items()}
