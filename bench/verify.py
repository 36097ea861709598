"""Verify benchmark: what comparing every stored Merkle node with the tree rebuilt from the rows costs
`flowaudit verify --public-key` (issue 17's examination: an inner node altered was not caught when
verify read only the right edge of each tree).

1. One chain (flowaudit.bench/0) of --leaves rows written by the real writer (`AuditStore` with the
   Merkle log on, 20,000-row batches; the events of bench/receipt.py).
2. Times `verify_with` with the public key only (no chain key), --runs times each way, alternating
   after one warm-up run:
   `nodes` compares every stored node (`MerkleCheck.compare_nodes`, one query per window of about
   400,000 nodes), `edge` is the check before it (the right edge of each tree only). Prints JSON.

Usage: python bench/verify.py [--leaves 300000] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.receipt import SIGNER, chain_records
from flowaudit.common.tuning import tune_process
from flowaudit.domain.policy import load_policy
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks import merkle_verify
from flowaudit.sinks.clickhouse import AuditStore
from flowaudit.sinks.merkle_verify import VerifyOptions, verify_with


def build(path: Path, leaves: int) -> AuditStore:
    policy = load_policy(DEFAULT_POLICY_DIR)
    store = AuditStore(f"chdb://{path}", policy, b"bench-key", database="bench_verify", log_signer=SIGNER)
    store.connect()
    started = time.perf_counter()
    for batch in chain_records(leaves, 1, 20_000):
        store.write(batch)
    print(f"{leaves:,} rows written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return store


def timed(store: AuditStore, nodes: bool) -> tuple[float, float]:
    """One verify with the public key only, (wall, CPU) seconds: the process's CPU time, chDB's
    threads included, which a loaded machine disturbs less. `nodes` false: the node comparison
    switched off."""
    check: Any = merkle_verify.MerkleCheck
    saved = check.compare_nodes, check._rebuilt
    if not nodes:
        check.compare_nodes, check._rebuilt = lambda self, chain: None, lambda self, runs: None
    keyless = AuditStore(store.url, store.policy, b"", database=store.database)
    keyless._client, keyless.columns = store.client, store.columns
    try:
        started, cpu = time.perf_counter(), time.process_time()
        report = verify_with(keyless, VerifyOptions(SIGNER.verifier().vkey))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        check.compare_nodes, check._rebuilt = saved
    assert report.ok and report.rows == store.count(), report.as_dict()
    return seconds, cpu


def main() -> None:
    tune_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--leaves", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="keep the store here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(args.dir or tmp) / "bench-verify", args.leaves)
        timed(store, True)  # warm-up (caches, first parts merged), not counted
        runs: dict[str, list[tuple[float, float]]] = {"nodes": [], "edge": []}
        for _ in range(args.runs):
            for name in ("edge", "nodes"):
                runs[name].append(timed(store, name == "nodes"))
                wall, cpu = runs[name][-1]
                load = os.getloadavg()[0]
                print(f"{name}: {wall:.2f} s, CPU {cpu:.2f} s (load {load:.1f})", file=sys.stderr)
        store.close()
    result: dict[str, Any] = {"rows": args.leaves}
    for what, column in (("wall", 0), ("cpu", 1)):
        medians = {name: statistics.median(run[column] for run in times) for name, times in runs.items()}
        result[what] = {name: [round(run[column], 2) for run in times] for name, times in runs.items()}
        result[f"{what}_median_s"] = {name: round(t, 2) for name, t in medians.items()}
        cost = (medians["nodes"] - medians["edge"]) / args.leaves * 1e6
        result[f"node_check_{what}_us_per_row"] = round(cost, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
