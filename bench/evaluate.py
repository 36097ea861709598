"""`flowaudit evaluate` on N generated lines (default 1,000,000): rate and peak memory.

Generates the JSON lines into a temporary file first (not timed), then runs the real command as a
subprocess and reads its peak RSS. Memory must stay flat: compare with --lines 100000.
Usage: python bench/evaluate.py [--lines N]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import orjson

from flowaudit.domain.policy import load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    policy = load_policy(DEFAULT_POLICY_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "events.jsonl")
        with open(source, "wb") as handle:
            for event in EventGenerator(policy, seed=11).events(args.lines):
                handle.write(orjson.dumps(event) + b"\n")
        started = time.perf_counter()
        with open(os.devnull, "wb") as sink:
            result = subprocess.run(
                [sys.executable, "-m", "flowaudit.cli", "evaluate", source],
                stdout=sink,
                stderr=subprocess.PIPE,
                check=False,
            )
        elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(result.stderr.decode().strip())
    print(
        f"evaluate: {args.lines:,} lines in {elapsed:.1f} s wall = {args.lines / elapsed:,.0f} lines/s, "
        f"peak RSS {peak_mib:.0f} MiB, exit {result.returncode}"
    )


if __name__ == "__main__":
    main()
