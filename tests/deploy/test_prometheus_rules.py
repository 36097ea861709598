"""The alert rules load, their promtool unit tests pass, and they only name exported metrics."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from flowaudit.domain.policy import Policy
from tests.deploy.conftest import check_promql, require_tool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
EXPECTED = {
    "FlowauditHealthDataBlockedLeavingEEA",
    "FlowauditUnknownSubcontractor",
    "FlowauditTransferWithoutSafeguard",
    "FlowauditUnattributedBulkTransfersSurge",
    "FlowauditAuditSinkFailing",
    "FlowauditAuditSinkStalled",
    "FlowauditDeadLetterRateHigh",
    "FlowauditNoEvents",
    "FlowauditConsumerLagGrowing",
    "FlowauditAuditLogForked",
    "FlowauditCheckpointsNotWitnessed",
    "FlowauditChainNotAdvancing",
}


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(PROMETHEUS / "tests" / "alerts_test.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == EXPECTED and quiet == EXPECTED


def test_alerts_are_documented_and_use_exported_metrics() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == EXPECTED
    for rule in rules:
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert {"summary", "description", "report", "dashboard"} <= set(annotations), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}  # type: ignore[index]
        check_promql(str(rule["expr"]), str(rule["alert"]))
    for first_event in ("FlowauditHealthDataBlockedLeavingEEA", "FlowauditTransferWithoutSafeguard"):
        alert = next(r for r in rules if r["alert"] == first_event)
        assert alert["labels"]["severity"] == "critical" and "for" not in alert  # type: ignore[index]


MATCHER = re.compile(r'\b(rule|flag)="([^"]+)"')


def test_alerts_name_rule_and_flag_ids_of_the_policy(policy: Policy) -> None:
    """A mistyped id would make an alert that never fires: every `rule=`/`flag=` matcher names a rule
    or flag of the shipped policy."""
    known = {"rule": {rule.id for rule in policy.rules}, "flag": {flag.id for flag in policy.flags}}
    used = [(label, value) for rule in _rules() for label, value in MATCHER.findall(str(rule["expr"]))]
    assert ("rule", "transfer-without-safeguard") in used and ("flag", "unattributed-bulk-transfer") in used
    for label, value in used:
        assert value in known[label], f"{label}={value!r} is not a {label} id"


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/alerts.yml"]
    promtool = require_tool("promtool")
    # promtool resolves rule_files relative to the config; check the config's syntax with a local copy
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
