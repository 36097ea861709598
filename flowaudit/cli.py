"""The `flowaudit` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowaudit.common.settings import Settings, SettingsError, load_settings
from flowaudit.domain.policy import Policy, PolicyError, Subcontractor, load_policy
from flowaudit.domain.policy.model import Era
from flowaudit.integrity import add_integrity_commands

if TYPE_CHECKING:
    from flowaudit.sinks.clickhouse import AuditStore
    from flowaudit.sinks.reports import Report


def _load_policy_or_exit(directory: Path) -> Policy:
    try:
        return load_policy(directory)
    except PolicyError as exc:
        print(f"flowaudit: invalid policy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.evaluate import run

    policy = _load_policy_or_exit(args.policy_dir or settings.policy_dir)
    return run(args.file, policy, verbose=args.verbose, quiet=args.quiet)


def _policy_summary(policy: Policy) -> dict[str, object]:
    return {
        "directory": str(policy.directory),
        "version": policy.version,
        "files": dict(policy.file_versions),
        "categories": {
            name: {
                "special_category": cat.special_category,
                "fields": sorted(f for f, c in policy.field_categories.items() if c == name),
            }
            for name, cat in policy.categories.items()
        },
        "unclassified": {
            "category": policy.unclassified_category,
            "treated_as": policy.unclassified_treated_as,
        },
        "direct_identifiers": sorted(policy.direct_identifiers),
        "purposes": {
            pid: {
                "description": p.description,
                "legal_basis": p.legal_basis,
                "special_category_condition": p.special_category_condition,
                "declares": sorted(p.data_categories),
                "retention": p.retention,
                "retention_period": p.retention_period,
                "source": p.source,
            }
            for pid, p in policy.purposes.items()
        },
        "controllers": [
            {
                "id": c.id,
                "name": c.name,
                "serves": c.serves_label,
                "address": c.address,
                "email": c.email,
                "dpo": c.dpo,
                "supervisory_authority": c.supervisory_authority,
                "source": c.source,
            }
            for c in policy.controllers
        ],
        "subcontractors": [_subcontractor_summary(s) for s in policy.subcontractor_list],
        "protected_zone": {"id": policy.protected_zone, "countries": sorted(policy.protected_countries)},
        "adequacy_in_force_now": sorted(_era_now(policy).adequate) if policy.timeline.eras else [],
        "rules": [
            {"id": r.id, "check": r.check, "severity": r.severity, "source": r.source} for r in policy.rules
        ],
        "flags": [
            {"id": r.id, "check": r.check, "severity": r.severity, "source": r.source} for r in policy.flags
        ],
        "exceptions": {
            "enabled": [e.id for e in policy.exceptions],
            "disabled": list(policy.disabled_exceptions),
        },
    }


def _subcontractor_summary(sub: Subcontractor) -> dict[str, object]:
    return {
        "name": sub.name,
        "storage": sub.storage_label,
        "service": sub.service,
        "purposes": "any" if sub.serves_any else list(sub.purposes),
        "service_area": None if sub.service_area is None else sorted(sub.service_area),
        "encryption_required": sub.encryption_required,
        "transfer_mechanism": sub.transfer_mechanism,
        "source": sub.source,
    }


def _era_now(policy: Policy) -> Era:
    import bisect
    import time

    return policy.timeline.eras[bisect.bisect_right(policy.timeline.boundaries, int(time.time() * 1000))]


def _cmd_policy_show(args: argparse.Namespace, settings: Settings) -> int:
    policy = _load_policy_or_exit(args.policy_dir or settings.policy_dir)
    summary = _policy_summary(policy)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"policy {policy.version}  ({policy.directory})")
    for filename, version in policy.file_versions.items():
        print(f"  {filename:<22} version {version}")
    print(f"categories ({len(policy.categories)}), {len(policy.field_categories)} fields:")
    for name, info in summary["categories"].items():  # type: ignore[attr-defined]
        special = "  [Art. 9 special category]" if info["special_category"] else ""
        print(f"  {name:<14} {len(info['fields']):>3} fields{special}")
    print(f"  unknown fields -> {policy.unclassified_category}, treated as {policy.unclassified_treated_as}")
    print(f"controllers ({len(policy.controllers)}):")
    for controller in policy.controllers:
        print(f"  {controller.name:<26} residents of {controller.serves_label}  ({controller.source})")
    print(f"purposes ({len(policy.purposes)}):")
    for pid, purpose in policy.purposes.items():
        condition = purpose.special_category_condition or "no health data"
        print(f"  {pid:<26} {purpose.legal_basis:<21} Art. 9(2): {condition}")
    print(f"subcontractors ({len(policy.subcontractor_list)}):")
    for sub in policy.subcontractor_list:
        area = (
            "" if sub.service_area is None else f"  only residents of {_countries(sub.service_area, policy)}"
        )
        extra = (
            ("  the controller, any purpose" if sub.controller else "")
            + ("  encrypted" if sub.encryption_required else "")
            + (f"  {sub.transfer_mechanism}" if sub.transfer_mechanism else "")
        )
        print(f"  {sub.name:<20} {sub.storage_label:<6} {sub.service}{extra}{area}")
    print(f"protected zone: {policy.protected_zone} ({len(policy.protected_countries)} countries)")
    if policy.timeline.eras:
        print("adequacy decisions in force today: " + ", ".join(sorted(_era_now(policy).adequate)))
    print(f"rules ({len(policy.rules)}): " + ", ".join(r.id for r in policy.rules))
    print(f"flags ({len(policy.flags)}, advisory): " + ", ".join(r.id for r in policy.flags))
    enabled = ", ".join(e.id for e in policy.exceptions) or "none"
    print(f"exceptions enabled: {enabled}; disabled: {', '.join(policy.disabled_exceptions) or 'none'}")
    return 0


def _countries(countries: frozenset[str], policy: Policy) -> str:
    """A zone's id when the set is a zone, else the codes."""
    for zone_id, members in policy.zones.items():
        if members == countries:
            return zone_id.upper()
    return ",".join(sorted(countries))


def _cmd_policy_check(args: argparse.Namespace, settings: Settings) -> int:
    try:
        policy = load_policy(args.directory)
    except PolicyError as exc:
        print(f"INVALID {exc}", file=sys.stderr)
        return 1
    print(f"OK {args.directory}: policy {policy.version}")
    return 0


def open_store(settings: Settings, policy: Policy) -> AuditStore:
    """The audit store named by the settings, opened to read: nothing is created. Raises StoreError."""
    from flowaudit.sinks.clickhouse import AuditStore, load_chain_key

    key = load_chain_key(settings.chain_key_value, settings.data_dir, create=False)
    store = AuditStore(settings.resolved_clickhouse_url, policy, key)
    store.connect(writer=False)
    return store


def _store_or_worker(settings: Settings, policy: Policy) -> AuditStore | tuple[str, str]:
    """The store, or (base URL, token) of the running worker that holds the embedded store."""
    from flowaudit.sinks.clickhouse import StoreError
    from flowaudit.webapi import running_worker

    try:
        return open_store(settings, policy)
    except StoreError as exc:
        worker = running_worker(settings) if settings.resolved_clickhouse_url.startswith("chdb:") else None
        if worker is None:
            raise
        url = worker[0]
        print(
            f"flowaudit: the embedded store is held by the running worker; asking it at {url}",
            file=sys.stderr,
        )
        del exc
        return worker


def _query_report(
    settings: Settings, policy: Policy, report: Report, parameters: dict[str, object]
) -> tuple[list[str], list[tuple[object, ...]]]:
    """A report's columns and rows, from the store or from the worker that holds it. Raises StoreError."""
    from flowaudit.sinks.clickhouse import StoreError, qualify
    from flowaudit.webapi import fetch_json

    target = _store_or_worker(settings, policy)
    if isinstance(target, tuple):
        url, token = target
        # the flags only: the worker adds the facts of its own policy (sinks.reports.policy_parameters)
        flags = {name: value for name, value in parameters.items() if name in report.parameters}
        answer = fetch_json(f"{url}/flowaudit/report/{report.name}/", flags, token)
        return answer["columns"], [tuple(row) for row in answer["rows"]]
    try:
        if target.missing_columns:  # a store no worker of this version has opened yet
            raise StoreError(
                f"the audit table {target.table} predates row format 2 (it lacks "
                f"{', '.join(target.missing_columns)}): the reports need those columns, which "
                "a worker of this version adds at start-up; `flowaudit verify` reads it as it is"
            )
        return target.query(qualify(report.sql, target.table), parameters)
    finally:
        target.close()


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.sinks.clickhouse import StoreError
    from flowaudit.sinks.reports import ReportError, load_reports, render, report_parameters

    reports = load_reports()
    if args.list or not args.name:
        for listed in reports.values():
            params = ", ".join(listed.parameters)
            print(f"{listed.name:<26} {listed.description}  [parameters: {params}]")
        return 0
    report = reports.get(args.name)
    if report is None:
        print(
            f"flowaudit: unknown report {args.name!r}; `flowaudit report --list` lists them", file=sys.stderr
        )
        return 2
    try:
        policy = _load_policy_or_exit(settings.policy_dir)
        parameters = report_parameters(report, args.since, args.until, args.user, args.recipient, policy)
        columns, rows = _query_report(settings, policy, report, parameters)
    except (ReportError, StoreError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(columns, rows, args.format))
    return 0


def _cmd_ropa(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from flowaudit import ropa
    from flowaudit.sinks.clickhouse import StoreError
    from flowaudit.sinks.reports import ReportError, as_records, load_reports, report_parameters

    try:
        fmt = ropa.check_format(args.format, args.out)
        report = load_reports()[ropa.REPORT]
        parameters = report_parameters(report, args.since, args.until, None)
        policy = _load_policy_or_exit(settings.policy_dir)
        columns, rows = _query_report(settings, policy, report, parameters)
        plain = [list(record.values()) for record in as_records(columns, rows)]  # as the web API gives them
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = ropa.build_record(policy, columns, plain, parameters["since"], parameters["until"], now)
        ropa.write(ropa.render(record, fmt), args.out)
    except (ropa.RopaError, ReportError, StoreError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_map(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.flowmap import run_map

    policy = _load_policy_or_exit(settings.policy_dir)
    if args.min_events < 0:
        print(f"flowaudit: --min-events {args.min_events}: give a count of 0 or more", file=sys.stderr)
        return 2

    def query(report: Report, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        return _query_report(settings, policy, report, parameters)  # opened once the arguments check

    return run_map(args.since, args.until, args.out, query, policy.version, args.min_events)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.replay import run_replay

    return run_replay(settings, args.policy, args.since, args.until, args.format)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.runtime import run_worker

    return run_worker(settings, args.loglevel.upper())


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.produce import run_produce

    policy = _load_policy_or_exit(settings.policy_dir)
    return run_produce(settings, policy, args.file, args.rate)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.demo import run_demo

    return run_demo(settings, args.events, args.json, seed=args.seed)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return 0


def _add_period(command: argparse.ArgumentParser, what: str = "") -> None:
    """--since and --until, as every command over the store reads them."""
    command.add_argument("--since", help=f"{what}from this UTC date/time (ISO-8601), inclusive")
    command.add_argument("--until", help=f"{what}until this UTC date/time (ISO-8601), exclusive")


def _add_store_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that read the audit store: report, ropa, map, replay, and those of tamper
    evidence (flowaudit/integrity.py: verify, public-key, witness, receipt, verify-receipt)."""
    report = sub.add_parser("report", help="run a compliance report against the audit store")
    report.add_argument("name", nargs="?", help="report name (see --list)")
    report.add_argument("--list", action="store_true", help="list the reports")
    _add_period(report)
    report.add_argument("--user", help="data subject (user id), for user-disclosures, consent-withdrawals")
    report.add_argument("--recipient", help="recipient (canonical name, any case), for subject-exposure")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.set_defaults(handler=_cmd_report)

    ropa = sub.add_parser("ropa", help="the GDPR Art. 30(1) record of processing: policy and audit store")
    _add_period(ropa)
    ropa.add_argument("--format", help="md, html, csv or xlsx (default: the suffix of --out, else md)")
    ropa.add_argument("--out", type=Path, help="write to this file (default: standard output; xlsx needs it)")
    ropa.set_defaults(handler=_cmd_ropa)

    flow_map = sub.add_parser(
        "map", help="draw the data-flow map: categories -> purposes -> recipients -> countries"
    )
    _add_period(flow_map)
    flow_map.add_argument("--out", type=Path, help="FILE.svg, .html, .dot or .json (default: SVG to stdout)")
    flow_map.add_argument(
        "--min-events",
        type=int,
        default=0,
        help="leave out flows (category set, purpose, recipient, country) of fewer events; the title says so",
    )
    flow_map.set_defaults(handler=_cmd_map)

    add_integrity_commands(sub)  # verify, public-key, checkpoint-key, witness, receipt, verify-receipt

    replay = sub.add_parser(
        "replay", help="re-decide the stored history under another policy; list what changes (reads only)"
    )
    replay.add_argument("--policy", type=Path, required=True, help="the what-if policy directory")
    _add_period(replay, "flows ")
    replay.add_argument("--format", choices=("table", "json", "csv"), default="table")
    replay.set_defaults(handler=_cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowaudit", description="Audit trail of personal-data flows: decide, gate and record."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    evaluate = sub.add_parser("evaluate", help="decide canonical JSON events, one per line")
    evaluate.add_argument("file", nargs="?", default="-", help="JSON-lines file, or - for standard input")
    evaluate.add_argument("--policy-dir", type=Path, help="policy directory (default: FLOWAUDIT_POLICY_DIR)")
    evaluate.add_argument("--verbose", action="store_true", help="also print policy_version and waivers")
    evaluate.add_argument("--quiet", action="store_true", help="do not report the rate on standard error")
    evaluate.set_defaults(handler=_cmd_evaluate)

    policy = sub.add_parser("policy", help="inspect or check policy data")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    show = policy_sub.add_parser("show", help="print the loaded policy summary and version")
    show.add_argument("--policy-dir", type=Path)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cmd_policy_show)
    check = policy_sub.add_parser("check", help="validate a policy directory")
    check.add_argument("directory", type=Path)
    check.set_defaults(handler=_cmd_policy_check)

    _add_store_commands(sub)

    worker = sub.add_parser(
        "worker", help="run the stream service (embedded broker when FLOWAUDIT_KAFKA_URL is unset)"
    )
    worker.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    worker.set_defaults(handler=_cmd_worker)

    produce = sub.add_parser("produce", help="send canonical JSON events, Avro-encoded, to their topics")
    produce.add_argument("file", nargs="?", default="-", help="JSON-lines file, or - for standard input")
    produce.add_argument("--rate", type=float, help="events per second at most")
    produce.set_defaults(handler=_cmd_produce)

    demo = sub.add_parser(
        "demo", help="run broker, worker and audit store on embedded defaults with generated events"
    )
    demo.add_argument("--events", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.set_defaults(handler=_cmd_demo)

    config = sub.add_parser("config", help="print the effective settings (secrets masked)")
    config.set_defaults(handler=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # `flowaudit report ... | head` should end quietly, as other command-line tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # The store, the chain key and exports hold personal data and secrets: owner-only files.
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"flowaudit: invalid setting {exc}", file=sys.stderr)
        return 2
    code: int = args.handler(args, settings)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
