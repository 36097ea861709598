"""Compliance reports: named SQL files in `schemas/reports/`, run against the audit store.

Each file starts with `-- name:`, `-- description:` and `-- parameters:` lines. Parameters use
ClickHouse's `{name:Type}` syntax, so a DPO can paste the same file into clickhouse-client with
`--param_name=value`. A parameter listed with a trailing `?` (`user?`) is optional: left out, it is
passed as '' and the SQL reads '' as "all".

A `-- policy: retention` line asks for facts of the loaded policy as parameters: the register's
purposes and, in the same order, their retention as the privacy documents state it and its
ISO-8601 period ('' where none is stated), as `{retention_purposes:Array(String)}`,
`{retention_texts:Array(String)}` and `{retention_periods:Array(String)}`. They describe the policy
in force when the report runs (GDPR Art. 15(1)(d): the period envisaged now). Without a policy they
are empty and the SQL says the register was not given. `recipient` (subject-exposure) is matched on the
registry's canonical name, case-insensitively, by the SQL.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR

REPORT_DIR = SCHEMA_DIR / "reports"
# the whole range of DateTime64 (1900 to 2299): rows dated outside 1970-2100 are reported too
DEFAULT_SINCE = "1900-01-01 00:00:00"
DEFAULT_UNTIL = "2299-12-31 23:59:59"
_HEADER = re.compile(r"^--\s*(name|description|parameters|policy):\s*(.*)$")
# the facts of the policy a report can ask for (`-- policy:`), and the parameters each becomes
POLICY_INPUTS: dict[str, tuple[str, ...]] = {
    "retention": ("retention_purposes", "retention_texts", "retention_periods"),
}


class ReportError(ValueError):
    """Unknown report, or missing or malformed parameters."""


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    parameters: tuple[str, ...]
    sql: str
    path: Path
    optional: frozenset[str] = frozenset()
    policy_inputs: tuple[str, ...] = ()


def load_reports(directory: Path = REPORT_DIR) -> dict[str, Report]:
    reports: dict[str, Report] = {}
    for path in sorted(directory.glob("*.sql")):
        header: dict[str, str] = {}
        for line in path.read_text().splitlines():
            match = _HEADER.match(line.strip())
            if match:
                header[match[1]] = match[2].strip()
        name = header.get("name", path.stem)
        if name != path.stem:
            raise ReportError(f"{path}: name {name!r} differs from the file name")
        listed = [p.strip() for p in header.get("parameters", "").split(",") if p.strip()]
        parameters = tuple(p.rstrip("?") for p in listed)
        optional = frozenset(p.rstrip("?") for p in listed if p.endswith("?"))
        inputs = tuple(p.strip() for p in header.get("policy", "").split(",") if p.strip())
        if unknown := [p for p in inputs if p not in POLICY_INPUTS]:
            known = ", ".join(POLICY_INPUTS)
            raise ReportError(f"{path}: unknown policy input {unknown[0]!r} (known: {known})")
        reports[name] = Report(
            name, header.get("description", ""), parameters, path.read_text(), path, optional, inputs
        )
    return reports


def normalize_time(value: str | None, default: str) -> str:
    """Accept ISO-8601 dates or timestamps (UTC assumed) and return ClickHouse's DateTime64 text."""
    if value is None or value == "":
        return default
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"not an ISO-8601 date or time: {value!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def report_parameters(
    report: Report,
    since: str | None,
    until: str | None,
    user: str | None,
    recipient: str | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """The report's query parameters from the command's flags (and, for a report that asks for
    them, from the policy); raises ReportError for a flag the report does not take, a malformed
    time, --since after --until, or a missing required parameter."""
    values: dict[str, Any] = policy_parameters(report, policy)
    given = {"since": since, "until": until, "user": user, "recipient": recipient}
    for name, value in given.items():
        if value not in (None, "") and name not in report.parameters:
            takes = ", ".join(f"--{p}" for p in report.parameters) or "none"
            raise ReportError(f"report {report.name} takes no --{name} (its parameters: {takes})")
    if "since" in report.parameters:
        values["since"] = normalize_time(since, DEFAULT_SINCE)
    if "until" in report.parameters:
        values["until"] = normalize_time(until, DEFAULT_UNTIL)
    if "since" in values and "until" in values and values["since"] > values["until"]:
        raise ReportError(f"--since {since} is after --until {until}")
    named = {
        "user": (user, "--user (the data subject's user id)"),
        "recipient": (recipient, "--recipient (a recipient's name, as the registry spells it)"),
    }
    for name, (value, flag) in named.items():
        if name not in report.parameters:
            continue
        if not value and name not in report.optional:
            raise ReportError(f"report {report.name} needs {flag}")
        values[name] = value or ""
    return values


def policy_parameters(report: Report, policy: Policy | None) -> dict[str, list[str]]:
    """The parameters of the policy facts the report asks for (empty lists without a policy)."""
    values: dict[str, list[str]] = {}
    if "retention" in report.policy_inputs:
        register = policy.purposes if policy is not None else {}
        purposes = sorted(register)
        names = POLICY_INPUTS["retention"]
        values[names[0]] = purposes
        values[names[1]] = [register[p].retention for p in purposes]
        values[names[2]] = [register[p].retention_period or "" for p in purposes]
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def as_records(columns: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{name: _plain(value) for name, value in zip(columns, row, strict=True)} for row in rows]


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    records = as_records(columns, rows)
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([",".join(map(str, v)) if isinstance(v, list) else v for v in record.values()])
        return buffer.getvalue()
    if fmt != "table":
        raise ReportError(f"unknown format {fmt!r} (table, json or csv)")
    cells = [
        [", ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else str(v)) for v in r.values()]
        for r in records
    ]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(widths[i]) for i, name in enumerate(columns)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells)
    lines.append(f"({len(cells)} rows)")
    return "\n".join(lines) + "\n"
