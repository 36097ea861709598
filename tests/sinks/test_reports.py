from __future__ import annotations

import json
from datetime import datetime

import pytest

from flowaudit.sinks.reports import ReportError, load_reports, normalize_time, render, report_parameters

EXPECTED = {
    "blocked-health-transfers",
    "transfers-outside-eea",
    "user-disclosures",
    "consent-missing",
    "register-drift",
    "daily-volume",
}


def test_all_reports_are_shipped_with_headers() -> None:
    reports = load_reports()
    assert set(reports) == EXPECTED
    for report in reports.values():
        assert report.description and "since" in report.parameters and "until" in report.parameters
        for name in report.parameters:
            assert "{" + name + ":" in report.sql, (report.name, name)
    assert reports["user-disclosures"].parameters == ("user", "since", "until")


def test_parameters_defaults_and_user_required() -> None:
    reports = load_reports()
    params = report_parameters(reports["daily-volume"], "2025-11-01", None, None)
    # until defaults to the end of DateTime64's range: rows dated after 2100 are reported too
    assert params == {"since": "2025-11-01 00:00:00.000", "until": "2299-12-31 23:59:59"}
    assert report_parameters(reports["daily-volume"], None, None, None)["since"] == "1900-01-01 00:00:00"
    with pytest.raises(ReportError, match="--user"):
        report_parameters(reports["user-disclosures"], None, None, None)
    assert normalize_time("2025-11-01T10:00:00+02:00", "") == "2025-11-01 08:00:00.000"
    with pytest.raises(ReportError):
        normalize_time("last tuesday", "")


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
