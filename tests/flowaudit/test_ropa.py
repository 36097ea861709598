"""`flowaudit ropa`: the record from a known store (tests/data/ropa/known.yaml), every column and the
drift both ways; each format rendered and read back; the command's errors and its two paths to the
store (directly, here over ClickHouse's HTTP interface; through a running worker: in
tests/streams/test_worker_integration.py)."""

from __future__ import annotations

import csv
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flowaudit import cli, ropa
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.domain.ropa import DECLARED_NEVER_FLOWED, FLOWED_NOT_DECLARED, PurposeEntry, Record
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.reports import as_records, load_reports, report_parameters
from tests.conftest import read_data
from tests.helpers import CHROMIUM, chromium, run_cli

KNOWN = read_data("ropa/known.yaml")
NOW = "2025-12-02T00:00:00Z"


def known_records(policy: Policy) -> list[AuditRecord]:
    decider = Decider(policy)
    records = []
    for offset, row in enumerate(KNOWN["events"]):
        event = event_from_mapping(row["event"], policy)
        decision = decider.decide(event)._replace(**row.get("decision", {}))
        records.append(AuditRecord(event, decision, "in", 0, offset, 1_762_300_000_000))
    return records


def record_from(store: AuditStore, policy: Policy, since: str | None, until: str | None) -> Record:
    report = load_reports()[ropa.REPORT]
    parameters = report_parameters(report, since, until, None)
    columns, rows = store.query(qualify(report.sql, store.table), parameters)
    plain = [list(r.values()) for r in as_records(columns, rows)]
    return ropa.build_record(policy, columns, plain, parameters["since"], parameters["until"], NOW)


@pytest.fixture
def known(store_factory: Any, policy: Policy) -> Record:
    store = store_factory()
    store.write(known_records(policy))
    return record_from(store, policy, KNOWN["since"], KNOWN["until"])


def _entry(record: Record, controller: str, purpose: str) -> PurposeEntry:
    section = next(s for s in record.controllers if s.controller.name == controller)
    return next(e for e in section.entries if e.purpose == purpose)


@pytest.mark.integration
def test_every_column_of_a_purpose_from_the_policy_and_the_store(known: Record, policy: Policy) -> None:
    assert [s.controller.name for s in known.controllers] == ["Withings SA", "Withings, Inc."]
    assert (known.since, known.until) == ("2025-11-01 00:00:00.000", "2025-12-01 00:00:00.000")
    assert known.policy_version == policy.version and known.protected_zone == "eea"
    marketing = _entry(known, "Withings SA", "marketing")
    register = policy.purposes["marketing"]
    assert (marketing.description, marketing.legal_basis, marketing.special_category_condition) == (
        register.description,
        "consent",
        None,
    )
    assert (marketing.retention, marketing.source) == (register.retention, register.source)
    assert marketing.data_categories == ("identity",)
    assert marketing.data_subjects == (
        "Users and account holders of the Products and Services",
        "The general public, minors included (003 sets no minimum age, CCPA: consumers under 16)",
    )
    assert marketing.recipients == (
        "Mailgun (Sending emails)",
        "Mailchimp (Sending emails (backup solution))",
        "Third-party advertising platforms (processors, not in 000)",
        "Marketing partners (cross-context behavioural advertising, partners' communications)",
    )  # the controller's own platform serves every purpose, but is no recipient
    assert marketing.transfers == ("Mailgun: US (scc)", "Mailchimp: US (scc)")
    assert (marketing.observed.events, marketing.observed.blocked) == (2, 0)
    assert (marketing.observed.first_seen, marketing.observed.last_seen) == (
        "2025-11-06T08:00:00.000Z",
        "2025-11-09T08:00:00.000Z",
    )
    assert marketing.observed_categories == ("identity",)
    assert marketing.observed_recipients == (
        "Facebook (social_network): 1 event",
        "Mailchimp (Sending emails (backup solution)): 1 event",
    )
    assert marketing.observed_transfers == ("US via consent_derogation: 1 event", "US via scc: 1 event")
    display = _entry(known, "Withings SA", "health_data_display")
    assert display.special_category_condition == "explicit_consent"
    assert display.observed_recipients == ("(platform: device sync): 3 events, 1 blocked",)
    assert display.observed_transfers == ("US via none: 1 event, 1 blocked",)


@pytest.mark.integration
def test_each_controller_has_its_subjects_recipients_and_period(known: Record) -> None:
    # US-only data subjects and the EEA-only logistician are in one record each
    us_consumers = "Consumers resident in US states"
    assert us_consumers in _entry(known, "Withings, Inc.", "marketing").data_subjects
    assert us_consumers not in _entry(known, "Withings SA", "marketing").data_subjects
    assert "Dimotrans (Logistics)" in _entry(known, "Withings SA", "logistics").recipients
    inc_logistics = _entry(known, "Withings, Inc.", "logistics")
    assert "Dimotrans (Logistics)" not in inc_logistics.recipients
    assert "Logistech (Logistics)" in inc_logistics.recipients
    assert (inc_logistics.observed.events, inc_logistics.observed.blocked) == (2, 1)
    # the October events are outside the period
    assert _entry(known, "Withings, Inc.", "health_data_display").observed.events == 1
    assert _entry(known, "Withings SA", "customer_support").observed.events == 2
    # a purpose seen but not in the register closes the controller's record
    last = next(s for s in known.controllers if s.controller.name == "Withings SA").entries[-1]
    assert (last.purpose, last.description, last.observed.events) == (
        "wellness_coaching",
        "(not in the register)",
        1,
    )
    assert [(g.user_country, g.purpose, g.tally.events) for g in known.unassigned] == [
        (None, "backup", 1),
        ("CH", "health_data_display", 1),
    ]


@pytest.mark.integration
def test_drift_both_ways(known: Record, policy: Policy) -> None:
    flowed = [
        [d.controller, d.kind, d.purpose, d.subject, d.tally.events, d.tally.blocked]
        for d in known.drift
        if d.direction == FLOWED_NOT_DECLARED
    ]
    assert sorted(flowed) == sorted(KNOWN["flowed_not_declared"])
    never = [d for d in known.drift if d.direction == DECLARED_NEVER_FLOWED]
    assert all(d.tally.events == 0 for d in never)
    purposes_never = {(d.controller, d.purpose) for d in never if d.kind == "purpose-never-flowed"}
    assert purposes_never == {
        (controller, purpose)
        for controller, flowed_purposes in KNOWN["flowed_purposes"].items()
        for purpose in policy.purposes
        if purpose not in flowed_purposes
    }
    # product_improvement was only attempted (blocked): it never flowed
    assert ("Withings SA", "product_improvement") in purposes_never
    others = [[d.controller, d.kind, d.purpose, d.subject] for d in never if d.kind != "purpose-never-flowed"]
    assert sorted(others) == sorted(KNOWN["declared_never_flowed"])


# --- the formats ---------------------------------------------------------------------------------------


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sections: list[str] = []
        self.external: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "section":
            self.sections.append(found.get("class") or "")
        self.external += [v for k, v in attrs if k in ("src", "href") and v]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


@pytest.mark.integration
def test_each_format_renders_the_record(known: Record) -> None:
    md = ropa.render(known, "md").decode()
    assert md.startswith("# Record of processing activities (GDPR Art. 30(1))")
    assert "## Withings SA" in md and "## Withings, Inc." in md and "### wellness_coaching" in md
    assert "## Drift: flowed, not declared" in md and "| Withings SA | flowed, not declared |" in md

    page = _Html()
    page.feed(ropa.render(known, "html").decode())
    assert page.sections == ["controller", "controller", "drift"]
    assert page.tags.count("thead") == 3  # unassigned and both drifts; a purpose is a card of rows
    assert page.tags.count("h3") == 2 * 23 + 1  # a card per purpose of each controller
    assert page.external == []  # self-contained
    assert "@media print" in page.style and "display: table-header-group" in page.style
    assert "page-break-before: always" in page.style

    rows = list(csv.DictReader(io.StringIO(ropa.render(known, "csv").decode())))
    purposes = [r for r in rows if r["record"] == "purpose"]
    assert len(purposes) == 2 * 23 + 1  # every purpose for each controller, and wellness_coaching
    marketing = next(r for r in purposes if r["controller"] == "Withings SA" and r["purpose"] == "marketing")
    assert marketing["transfers"] == "Mailgun: US (scc); Mailchimp: US (scc)" and marketing["events"] == "2"
    assert [r["purpose"] for r in rows if r["record"] == "unassigned"] == ["backup", "health_data_display"]
    assert len([r for r in rows if r["record"] == "drift"]) == len(known.drift)
    identity = {(r["controller"], r["kind"]): r["what"] for r in rows if r["record"] == "controller"}
    assert identity[("Withings SA", "supervisory authority")].startswith("Commission Nationale")
    assert identity[("Withings SA", "address")] == known.controllers[0].controller.address
    assert ("Withings, Inc.", "data protection officer") in identity


# A4 landscape less the page's 12 mm margins, in CSS pixels (96 per inch): what a printed page holds
PRINTED_WIDTH_PX = round((297 - 2 * 12) / 25.4 * 96)


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-tools.sh)")
def test_the_html_record_fits_the_width_of_a_printed_page(known: Record, tmp_path: Path) -> None:
    """Laid out by a real browser as wide as an A4 landscape page's print area, nothing sticks out
    to the right (on the demo's store, a table of the record's columns side by side needed 2,177 px,
    and printed cut off)."""
    page = ropa.render(known, "html").decode()
    probe = (
        "<script>document.body.dataset.overflow = "
        "String(document.documentElement.scrollWidth - window.innerWidth)</script>"
    )
    path = tmp_path / "ropa.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    shown = chromium(tmp_path / "profile", "--dump-dom", path.as_uri(), window=f"{PRINTED_WIDTH_PX},900")
    assert 'data-overflow="0"' in shown.stdout, shown.stdout[-500:] + shown.stderr[-500:]


@pytest.mark.integration
def test_the_xlsx_file_reads_back(known: Record, tmp_path: Path) -> None:
    from openpyxl import load_workbook

    path = tmp_path / "ropa.xlsx"
    path.write_bytes(ropa.render(known, "xlsx"))
    book = load_workbook(path)
    assert book.sheetnames == ["About", "Withings SA", "Withings, Inc.", "No controller", "Drift"]
    sheet = book["Withings SA"]
    headings = [cell.value for cell in sheet[1]]
    assert headings[:4] == ["purpose", "description", "legal basis (Art. 6(1))", "Art. 9(2) condition"]
    assert sheet.freeze_panes == "A2" and all(cell.font.b for cell in sheet[1])
    assert sheet.column_dimensions["B"].width == 40 and sheet["B2"].alignment.wrap_text
    rows = {row[0]: row for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert rows["marketing"][headings.index("events seen")] == 2
    drift = book["Drift"]
    assert drift.max_row == 1 + len(known.drift) and drift.freeze_panes == "A2"


def test_text_that_looks_like_a_formula_stays_text(policy: Policy) -> None:
    flows = [
        {
            "user_country": "FR",
            "purpose": "third_party_sharing",
            "event_type": "sharing",
            "recipient_type": "third_party_app",
            "recipient": '=HYPERLINK("http://x","y")',
            "destination_country": "FR",
            "outside_protected_zone": False,
            "transfer_mechanism": None,
            "categories": ["activity"],
            "events": 1,
            "blocked": 0,
            "first_seen": "2025-11-01T00:00:00.000Z",
            "last_seen": "2025-11-01T00:00:00.000Z",
        }
    ]
    columns = list(flows[0])
    record = ropa.build_record(policy, columns, [list(f.values()) for f in flows], "a", "b", NOW)
    text = ropa.render(record, "csv").decode()
    assert "'=HYPERLINK" in text
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(ropa.render(record, "xlsx")))
    cells = [
        c for row in book["Withings SA"].iter_rows() for c in row if str(c.value).startswith("=HYPERLINK")
    ]
    assert cells and all(c.data_type == "s" for c in cells)


# --- the command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "unknown format 'pdf' (md, html, csv, xlsx)"),
        (["--format", "xlsx"], "--format xlsx writes a binary file: give it with --out FILE.xlsx"),
        (
            ["--since", "2025-12-01", "--until", "2025-11-01"],
            "--since 2025-12-01 is after --until 2025-11-01",
        ),
        (["--since", "last tuesday"], "not an ISO-8601 date or time: 'last tuesday'"),
        (["--out", "record.pdf"], "--out record.pdf: name a md, html, csv, xlsx file, or give --format"),
        (["--format", "md", "--out", "r.xlsx"], "--format md but --out r.xlsx names a .xlsx file"),
    ],
)
def test_bad_requests_are_one_line_errors(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # refused before any store is opened: the data directory does not even exist
    monkeypatch.setenv("FLOWAUDIT_DATA_DIR", str(tmp_path / "nowhere"))
    umask = os.umask(0o022)  # main() sets the CLI's umask: give the test process its own back
    os.umask(umask)
    try:
        assert cli.main(["ropa", *args]) == 2
    finally:
        os.umask(umask)
    err = capsys.readouterr().err
    assert err == f"flowaudit: {message}\n"
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.integration
def test_the_command_over_a_server_store(clickhouse_http: str, policy: Policy, tmp_path: Path) -> None:
    import clickhouse_connect

    admin = clickhouse_connect.get_client(dsn=f"{clickhouse_http}/default")
    admin.command("CREATE DATABASE IF NOT EXISTS ropa_cli")
    admin.close()
    store = AuditStore(f"{clickhouse_http}/ropa_cli", policy, b"test-key" * 4)
    store.connect()
    try:
        store.write(known_records(policy))
    finally:
        store.close()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWAUDIT_")}
    env.update(
        FLOWAUDIT_CLICKHOUSE_URL=f"{clickhouse_http}/ropa_cli",
        FLOWAUDIT_CHAIN_KEY="test-key" * 4,
        FLOWAUDIT_DATA_DIR=str(tmp_path / "data"),
    )
    period = ["--since", KNOWN["since"], "--until", KNOWN["until"]]
    shown = run_cli(env, "ropa", *period)
    assert shown.returncode == 0, shown.stderr.decode()
    assert (
        "| Withings, Inc. | flowed, not declared | undeclared-recipient | logistics |"
        in shown.stdout.decode()
    )
    out = tmp_path / "ropa.xlsx"
    written = run_cli(env, "ropa", *period, "--format", "xlsx", "--out", str(out))
    assert written.returncode == 0 and written.stdout == b"", written.stderr.decode()
    assert out.read_bytes()[:2] == b"PK"  # a zip: the xlsx container
    listed = run_cli(env, "report", "ropa-flows", *period, "--format", "json")
    assert sum(row["events"] for row in json.loads(listed.stdout)) == len(KNOWN["events"]) - 2


def test_the_format_follows_the_suffix_of_out_when_not_given() -> None:
    assert ropa.check_format(None, Path("record.xlsx")) == "xlsx"
    assert ropa.check_format(None, Path("RECORD.HTML")) == "html"
    assert ropa.check_format(None, None) == "md"
    assert ropa.check_format("csv", Path("record.csv")) == "csv"
    assert ropa.check_format("md", Path("record.txt")) == "md"  # a suffix that is no format: --format rules
