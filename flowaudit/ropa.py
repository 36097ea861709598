"""`flowaudit ropa`: the Art. 30(1) record of processing as files a DPO can hand over.

`build_record` turns the rows of the report `ropa-flows` (as the store or a worker's web API returns
them) and the policy into a `domain.ropa.Record` (the assembly and the drift are defined there);
`render(record, fmt)` gives the bytes of one format:

- `md`: per controller its details, then one block per purpose (declared, then observed); then the
  flows no controller serves and the drift, both ways;
- `html`: one self-contained page (no external resource) that prints well: A4 landscape, each
  controller on a new page, one card per purpose (the record's columns side by side do not fit a
  page), table headers repeated on every printed page, rows not split;
- `csv`: one table, the column `record` telling a `controller` line (one detail of its identity, in
  `kind` and `what`), a `purpose` line, an `unassigned` line (a flow no controller serves) and a
  `drift` line; lists joined with "; ";
- `xlsx` (openpyxl): a sheet `About` (period, policy version, each controller's details), one sheet
  per controller, `No controller`, and `Drift`; header row frozen and bold, column widths set, text
  wrapped.

`check_format(fmt, out)` picks the format (--format, else the suffix of --out, else md) and refuses
what cannot be written (an unknown format, a suffix that contradicts it, xlsx without `--out`)
before any store is opened; `write(data, out)` writes to the file or to standard output.
"""

from __future__ import annotations

import csv
import html
import io
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flowaudit.domain.policy import Policy
from flowaudit.domain.ropa import (
    DECLARED_NEVER_FLOWED,
    FLOWED_NOT_DECLARED,
    ControllerRecord,
    Drift,
    PurposeEntry,
    Record,
    Tally,
    UnassignedGroup,
    assemble,
    observed_flow,
)

FORMATS = ("md", "html", "csv", "xlsx")
REPORT = "ropa-flows"  # schemas/reports/ropa-flows.sql: the observed side


class RopaError(ValueError):
    """A request `flowaudit ropa` cannot fulfil (format, output file, the report's rows)."""


def check_format(fmt: str | None, out: Path | None) -> str:
    """The format to write: --format, else the suffix of --out (md without either); raises RopaError
    for an unknown format, a suffix that is not a format when --format is not given, a --format that
    contradicts the suffix, or xlsx to standard output."""
    suffix = out.suffix.lower().lstrip(".") if out is not None else ""
    if fmt is None:
        if out is not None and suffix not in FORMATS:
            raise RopaError(f"--out {out}: name a {', '.join(FORMATS)} file, or give --format")
        fmt = suffix or "md"
    if fmt not in FORMATS:
        raise RopaError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")
    if suffix in FORMATS and suffix != fmt:
        raise RopaError(f"--format {fmt} but --out {out} names a .{suffix} file")
    if fmt == "xlsx" and out is None:
        raise RopaError("--format xlsx writes a binary file: give it with --out FILE.xlsx")
    return fmt


def build_record(
    policy: Policy, columns: Sequence[str], rows: Iterable[Sequence[Any]], since: str, until: str, now: str
) -> Record:
    """The record from the report's columns and rows (plain JSON values, as `as_records` makes them)."""
    try:
        flows = [observed_flow(dict(zip(columns, row, strict=True))) for row in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise RopaError(f"the report {REPORT} answered rows of another shape: {exc!r}") from None
    return assemble(policy, flows, since, until, now)


def write(data: bytes, out: Path | None) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise RopaError(f"cannot write {out}: {exc.strerror or exc}") from None


# --- the columns, shared by csv, html and xlsx --------------------------------------------------------


def _joined(values: Iterable[str]) -> str:
    return "; ".join(values)


def _outside(record: Record) -> str:
    return f"outside the {record.protected_zone.upper()}"


# (csv name, heading, value of a purpose line)
PurposeColumn = tuple[str, str, Callable[[PurposeEntry], object]]


def purpose_columns(record: Record) -> list[PurposeColumn]:
    outside = _outside(record)
    return [
        ("purpose", "purpose", lambda e: e.purpose),
        ("description", "description", lambda e: e.description),
        ("legal_basis", "legal basis (Art. 6(1))", lambda e: e.legal_basis),
        ("special_category_condition", "Art. 9(2) condition", lambda e: e.special_category_condition or ""),
        ("data_categories", "data categories", lambda e: _joined(e.data_categories)),
        ("data_subjects", "categories of data subjects", lambda e: _joined(e.data_subjects)),
        ("recipients", "recipients (service)", lambda e: _joined(e.recipients)),
        ("transfers", f"transfers {outside} (mechanism)", lambda e: _joined(e.transfers)),
        ("retention", "retention", lambda e: e.retention),
        ("source", "source", lambda e: e.source),
        ("events", "events seen", lambda e: e.observed.events),
        ("blocked", "of them blocked", lambda e: e.observed.blocked),
        ("first_seen", "first seen", lambda e: e.observed.first_seen or ""),
        ("last_seen", "last seen", lambda e: e.observed.last_seen or ""),
        ("observed_categories", "categories carried", lambda e: _joined(e.observed_categories)),
        ("observed_recipients", "recipients seen", lambda e: _joined(e.observed_recipients)),
        ("observed_transfers", f"transfers {outside} seen", lambda e: _joined(e.observed_transfers)),
    ]


_TALLY_HEADINGS = ("events", "of them blocked", "first seen", "last seen")
DRIFT_HEADINGS = ("controller", "direction", "kind", "purpose", "what", *_TALLY_HEADINGS)
UNASSIGNED_HEADINGS = ("user country", "purpose", *_TALLY_HEADINGS)


def _tally_cells(tally: Tally) -> list[object]:
    return [tally.events, tally.blocked, tally.first_seen or "", tally.last_seen or ""]


def drift_cells(drift: Drift) -> list[object]:
    return [
        drift.controller,
        drift.direction,
        drift.kind,
        drift.purpose,
        drift.subject,
        *_tally_cells(drift.tally),
    ]


def unassigned_cells(group: UnassignedGroup) -> list[object]:
    return [group.user_country or "(not recorded)", group.purpose, *_tally_cells(group.tally)]


def controller_details(section: ControllerRecord, record: Record) -> list[tuple[str, str]]:
    c = section.controller
    return [
        ("controller", c.name),
        ("serves (the subject's country)", c.serves_label),
        ("address", c.address or "not stated"),
        ("contact", c.email or "not stated"),
        ("data protection officer", c.dpo or "not stated"),
        ("supervisory authority", c.supervisory_authority or "not stated"),
        ("legal framework", c.legal_framework or "not stated"),
        ("parent company", c.parent or "—"),
        ("hosting", c.hosting),
        ("privacy notice", c.notice),
        ("recipients for every purpose", _joined(section.general_recipients) or "—"),
        ("source", c.source),
    ]


def _title(record: Record) -> str:
    return "Record of processing activities (GDPR Art. 30(1))"


def _period(record: Record) -> list[tuple[str, str]]:
    return [
        ("period", f"{record.since} to {record.until} (UTC, until exclusive)"),
        ("policy version", record.policy_version),
        ("generated at", record.generated_at),
    ]


# --- markdown -----------------------------------------------------------------------------------------


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(record: Record) -> bytes:
    lines = [f"# {_title(record)}", ""]
    lines += [f"- **{label}**: {_md(value)}" for label, value in _period(record)]
    columns = purpose_columns(record)
    for section in record.controllers:
        lines += ["", f"## {section.controller.name}", ""]
        lines += [f"- **{label}**: {_md(value)}" for label, value in controller_details(section, record)]
        for entry in section.entries:
            lines += ["", f"### {entry.purpose}", "", "| | |", "|---|---|"]
            lines += [f"| {heading} | {_md(value(entry))} |" for _, heading, value in columns[1:]]
    lines += ["", "## Flows no controller serves", ""]
    lines += _md_table(UNASSIGNED_HEADINGS, [unassigned_cells(g) for g in record.unassigned])
    for direction in (FLOWED_NOT_DECLARED, DECLARED_NEVER_FLOWED):
        lines += ["", f"## Drift: {direction}", ""]
        rows = [drift_cells(d) for d in record.drift if d.direction == direction]
        lines += _md_table(DRIFT_HEADINGS, rows)
    return ("\n".join(lines) + "\n").encode()


def _md_table(headings: Sequence[str], rows: list[list[object]]) -> list[str]:
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return lines


# --- csv ----------------------------------------------------------------------------------------------


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(value: object) -> object:
    """A text cell a spreadsheet will not run as a formula: recipient names come from the events."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(record: Record) -> bytes:
    columns = purpose_columns(record)
    names = [
        "record",
        "controller",
        *(name for name, _, _ in columns),
        "user_country",
        "direction",
        "kind",
        "what",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for section in record.controllers:
        # the controller's identity first (Art. 30(1)(a)): one row per detail, as `kind` and `what`
        for label, detail in controller_details(section, record):
            _write_inert(
                writer,
                {
                    "record": "controller",
                    "controller": section.controller.name,
                    "kind": label,
                    "what": detail,
                },
            )
        for entry in section.entries:
            row = {name: value(entry) for name, _, value in columns}
            _write_inert(writer, {"record": "purpose", "controller": section.controller.name, **row})
    for group in record.unassigned:
        _write_inert(
            writer,
            {"record": "unassigned", "user_country": group.user_country or "", "purpose": group.purpose}
            | _tally_row(group.tally),
        )
    for drift in record.drift:
        _write_inert(
            writer,
            {
                "record": "drift",
                "controller": drift.controller,
                "purpose": drift.purpose,
                "direction": drift.direction,
                "kind": drift.kind,
                "what": drift.subject,
            }
            | _tally_row(drift.tally),
        )
    return buffer.getvalue().encode()


def _write_inert(writer: csv.DictWriter[str], row: Mapping[str, object]) -> None:
    writer.writerow({key: _inert(value) for key, value in row.items()})


def _tally_row(tally: Tally) -> dict[str, object]:
    return dict(zip(("events", "blocked", "first_seen", "last_seen"), _tally_cells(tally), strict=True))


# --- html ---------------------------------------------------------------------------------------------

_CSS = """
body { font: 10pt/1.35 system-ui, sans-serif; margin: 1.5em; color: #111; }
h1 { font-size: 16pt; } h2 { font-size: 13pt; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1em; table-layout: fixed; }
th, td { border: 1px solid #999; padding: 3px 5px; vertical-align: top; text-align: left;
         overflow-wrap: anywhere; }
table.purpose th { width: 26%; }
h3 { font-size: 11pt; margin: 1.2em 0 0.2em; }
th { background: #e8e8e8; }
td.n { text-align: right; }
dl.details { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.details dt { font-weight: bold; }
dl.details dd { margin: 0; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 8pt; }
  section.controller, section.drift { break-before: page; page-break-before: always; }
  thead { display: table-header-group; }
  tr, dl.details, h3 { break-inside: avoid; page-break-inside: avoid; }
  h3 { break-after: avoid; page-break-after: avoid; }
  th { background: #e8e8e8 !important; print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _html_table(headings: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headings) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        cells = (
            f'<td class="n">{cell}</td>' if isinstance(cell, int) else f"<td>{_e(cell)}</td>" for cell in row
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return out


def _html_details(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return ['<dl class="details">', *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs), "</dl>"]


def render_html(record: Record) -> bytes:
    columns = purpose_columns(record)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(_title(record))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(_title(record))}</h1>",
        *_html_details(_period(record)),
    ]
    for section in record.controllers:
        out += ['<section class="controller">', f"<h2>{_e(section.controller.name)}</h2>"]
        out += _html_details(controller_details(section, record))
        # one card per purpose, as in the markdown: the record has some 20 columns, which no page
        # holds side by side (a table of them was cut off at the right edge when printed)
        for entry in section.entries:
            out += [f"<h3>{_e(entry.purpose)}</h3>", '<table class="purpose"><tbody>']
            for _, heading, value in columns[1:]:
                cell = value(entry)
                shown = f'<td class="n">{cell}</td>' if isinstance(cell, int) else f"<td>{_e(cell)}</td>"
                out.append(f"<tr><th>{_e(heading)}</th>{shown}</tr>")
            out += ["</tbody></table>"]
        out.append("</section>")
    out += ['<section class="drift">', "<h2>Flows no controller serves</h2>"]
    out += _html_table(UNASSIGNED_HEADINGS, (unassigned_cells(g) for g in record.unassigned))
    for direction in (FLOWED_NOT_DECLARED, DECLARED_NEVER_FLOWED):
        out.append(f"<h2>Drift: {_e(direction)}</h2>")
        out += _html_table(DRIFT_HEADINGS, (drift_cells(d) for d in record.drift if d.direction == direction))
    out += ["</section>", "</body></html>"]
    return ("\n".join(out) + "\n").encode()


# --- xlsx ---------------------------------------------------------------------------------------------

_WIDE = {"description": 40, "data_subjects": 40, "recipients": 45, "transfers": 35, "retention": 40}
_WIDE |= {"source": 30, "observed_recipients": 45, "observed_transfers": 30}


def render_xlsx(record: Record) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    about = book.active
    assert about is not None  # a new workbook has one sheet
    about.title = "About"
    pairs = list(_period(record))
    for section in record.controllers:
        pairs += [("", ""), *controller_details(section, record)]
    _sheet(about, ("", _title(record)), [list(pair) for pair in pairs], [32, 100])
    columns = purpose_columns(record)
    for section in record.controllers:
        sheet = book.create_sheet(_sheet_title(section.controller.name))
        rows = [[value(entry) for _, _, value in columns] for entry in section.entries]
        _sheet(sheet, [h for _, h, _ in columns], rows, [_WIDE.get(name, 16) for name, _, _ in columns])
    unassigned = book.create_sheet("No controller")
    _sheet(
        unassigned,
        UNASSIGNED_HEADINGS,
        [unassigned_cells(g) for g in record.unassigned],
        [14, 26, 10, 10, 26, 26],
    )
    drift = book.create_sheet("Drift")
    _sheet(
        drift, DRIFT_HEADINGS, [drift_cells(d) for d in record.drift], [18, 22, 26, 26, 45, 10, 10, 26, 26]
    )
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _sheet_title(name: str) -> str:
    """A sheet title Excel accepts: at most 31 characters, none of []:*?/\\."""
    cleaned = "".join("_" if ch in "[]:*?/\\" else ch for ch in name)
    return cleaned[:31] or "Controller"


def _sheet(sheet: Any, headings: Sequence[str], rows: list[list[object]], widths: Sequence[int]) -> None:
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter

    sheet.append(list(headings))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append(row)
    wrap = Alignment(wrap_text=True, vertical="top")
    for line in sheet.iter_rows():
        for cell in line:
            cell.alignment = wrap
            if cell.data_type == "f":  # text that starts with "=" (names come from the events): not a formula
                cell.data_type = "s"
    for index, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"  # the header row stays in view
    sheet.print_title_rows = "1:1"  # and is repeated on every printed page
    sheet.page_setup.orientation = "landscape"


RENDERERS: Mapping[str, Callable[[Record], bytes]] = {
    "md": render_md,
    "html": render_html,
    "csv": render_csv,
    "xlsx": render_xlsx,
}


def render(record: Record, fmt: str) -> bytes:
    check_format(fmt, Path("-") if fmt == "xlsx" else None)
    return RENDERERS[fmt](record)
