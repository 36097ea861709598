"""`flowaudit demo --events 20000`: the whole service on embedded defaults, every event accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowaudit.domain.policy import load_policy
from flowaudit.policy import DEFAULT_POLICY_DIR
from tests.conftest import read_data
from tests.helpers import REPO

COVERAGE = read_data("generator_coverage.yaml")

pytestmark = pytest.mark.integration


def test_demo_accounts_for_every_event(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env.update(FLOWAUDIT_DATA_DIR=str(tmp_path / "data"), FLOWAUDIT_METRICS_PORT="0")
    result = subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", "demo", "--events", "20000", "--json"],
        env=env,
        capture_output=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = json.loads(result.stdout)  # stdout holds only the JSON summary
    assert summary["events"] == 20000
    assert summary["allowed"] + summary["blocked"] + summary["dead_lettered"] == 20000
    assert summary["audit_rows"] == summary["allowed"] + summary["blocked"] and summary["accounted_for"]
    assert summary["dead_lettered"] == 20000 // 500  # the deliberately broken records, no more
    # every rule and flag of the policy is counted, zeros included, and each fires (the consent ledger's
    # too: the worker reads the consent topic; tests/data/generator_coverage.yaml)
    policy = load_policy(DEFAULT_POLICY_DIR)
    not_on_stream = set(COVERAGE["not_on_stream"])
    rules = summary["blocked_by_rule"]
    assert set(rules) == {rule.id for rule in policy.rules}
    assert {rule for rule, count in rules.items() if count > 0} == set(rules) - not_on_stream
    assert all(rules[rule] == 0 for rule in not_on_stream)

    assert set(summary["flags"]) == {flag.id for flag in policy.flags}
    assert all(count > 0 for count in summary["flags"].values()), summary["flags"]
    assert "grant not read yet" in summary["notes"]["consent-unverified"]
    consents = summary["consents"]
    assert consents["granted"] > 0 and consents["withdrawn"] > 0 and consents["dead_lettered"] == 0, consents
    assert consents["granted"] + consents["withdrawn"] == consents["produced"], consents
    outside = summary["transfers_outside_eea"]
    assert set(COVERAGE["mechanisms"]) <= set(outside), outside
    assert all(row["events"] >= row["blocked"] >= 0 for row in outside.values())
    assert summary["health_data_destinations"][0]["country"] == "FR"
    # the demo's store verifies, and the reports run on it
    env["FLOWAUDIT_DATA_DIR"] = str(tmp_path / "data" / "demo")
    verify = subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", "verify"], env=env, capture_output=True, cwd=REPO
    )
    assert verify.returncode == 0 and b"OK: 19960 rows" in verify.stdout, verify.stdout + verify.stderr
    for name in (
        "blocked-health-transfers",
        "transfers-outside-eea",
        "consent-missing",
        "register-drift",
        "daily-volume",
    ):
        report = subprocess.run(
            [sys.executable, "-m", "flowaudit.cli", "report", name, "--format", "json"],
            env=env,
            capture_output=True,
            cwd=REPO,
        )
        assert report.returncode == 0 and json.loads(report.stdout), name
    # the commands the demo prints to look at its store work as printed (the flowaudit ones)
    printed = [line.split() for line in summary["how_to_query"] if " report " not in line]
    for words in (w for w in printed if w[0].startswith("FLOWAUDIT_DATA_DIR=")):
        run = subprocess.run(
            [sys.executable, "-m", "flowaudit.cli", *words[2:]], env=env, capture_output=True, cwd=REPO
        )
        assert run.returncode == 0, (words, run.stderr)
    assert (tmp_path / "data" / "demo" / "ropa.html").stat().st_size > 0
    assert b"<svg" in (tmp_path / "data" / "demo" / "map.html").read_bytes()
