"""`flowaudit demo --events 20000`: the whole service on embedded defaults, every event accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

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
    assert set(summary["blocked_by_rule"]) == {
        "health-data-leaves-eea",
        "unknown-subcontractor",
        "subcontractor-location-mismatch",
        "unknown-purpose",
        "consent-missing",
        "health-data-for-marketing",
        "ai-requires-pseudonymization",
    }
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
