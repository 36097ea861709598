"""The `flowaudit` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from flowaudit.settings import Settings
from streams.policy import Policy, PolicyError, load_policy


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
        "purposes": {pid: p.legal_basis for pid, p in policy.purposes.items()},
        "subcontractors": [
            {"name": s.name, "storage": s.storage_label, "service": s.service}
            for s in policy.subcontractor_list
        ],
        "protected_zone": {"id": policy.protected_zone, "countries": sorted(policy.protected_countries)},
        "rules": [{"id": r.id, "check": r.check, "severity": r.severity} for r in policy.rules],
        "exceptions": {
            "enabled": [e.id for e in policy.exceptions],
            "disabled": list(policy.disabled_exceptions),
        },
    }


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
    print(f"purposes ({len(policy.purposes)}):")
    for pid, purpose in policy.purposes.items():
        print(f"  {pid:<26} {purpose.legal_basis}")
    print(f"subcontractors ({len(policy.subcontractor_list)}):")
    for sub in policy.subcontractor_list:
        print(f"  {sub.name:<20} {sub.storage_label:<6} {sub.service}")
    print(f"protected zone: {policy.protected_zone} ({len(policy.protected_countries)} countries)")
    print(f"rules ({len(policy.rules)}): " + ", ".join(r.id for r in policy.rules))
    enabled = ", ".join(e.id for e in policy.exceptions) or "none"
    print(f"exceptions enabled: {enabled}; disabled: {', '.join(policy.disabled_exceptions) or 'none'}")
    return 0


def _cmd_policy_check(args: argparse.Namespace, settings: Settings) -> int:
    try:
        policy = load_policy(args.directory)
    except PolicyError as exc:
        print(f"INVALID {exc}", file=sys.stderr)
        return 1
    print(f"OK {args.directory}: policy {policy.version}")
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return 0


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

    config = sub.add_parser("config", help="print the effective settings (secrets masked)")
    config.set_defaults(handler=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    code: int = args.handler(args, settings)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
