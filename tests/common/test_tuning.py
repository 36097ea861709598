"""Process tuning, checked in a fresh interpreter (it changes process-wide state)."""

from __future__ import annotations

import json
import subprocess
import sys

from flowaudit.common import tuning
from tests.helpers import REPO

PROBE = """
import gc, json, sys
from flowaudit.common.tuning import tune_process
before = sys.getswitchinterval()
allocator = tune_process()
print(json.dumps({"before": before, "after": sys.getswitchinterval(), "gc": gc.get_threshold(),
                  "allocator": allocator}))
"""


def test_tune_process_sets_the_switch_interval_gc_and_allocator() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, check=True, cwd=REPO)
    state = json.loads(result.stdout)
    assert state["before"] == 0.005  # the interpreter's default, so the change is visible
    assert state["after"] == tuning.SWITCH_INTERVAL_SECONDS
    assert tuple(state["gc"]) == tuning.GC_THRESHOLDS
    assert state["allocator"] is True  # glibc accepted the thresholds
