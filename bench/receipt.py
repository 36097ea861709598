"""Receipt benchmark: `build_receipt` for a subject with --subject-rows rows in a large store (issue 17).

1. One chain (flowaudit.bench/0) of --chain-leaves rows written by the real writer (`AuditStore`
   with the Merkle log on, 20,000-row batches), generated events of which every n-th is the
   subject's (its user id replaced), so the subject's leaves lie all over the tree, as a long-lived
   subject's do: proofs of leaves spread out share few nodes (the worst case for the node reads).
   A witness reads each checkpoint one batch late (the receipt needs a consistency proof).
2. The audit table grows to --rows rows with INSERT ... SELECT copies (other subjects, fresh event
   ids), so the subject's rows are a primary-key range of a table of that size.
3. Times `build_receipt` (rows, checkpoints, nodes level by level, consistency proof from a
   witnessed tree) --runs times, the file `flowaudit receipt` writes of its output (`receipt_bytes`,
   write_seconds), and `verify_receipt` on it; then what `flowaudit receipt` does end to end
   (bench/receipt_command.py: imports, opening the store, the build, the file) in --command-runs
   fresh processes; prints JSON.

With --dir the store is built once and reused: beside it, `bench-receipt.json` records the
arguments it was built with and `bench-receipt.witness.json` the witness's state (a later run with the
same --rows, --chain-leaves and --subject-rows opens the store and reads that state instead of
building again; other arguments build it afresh in a new directory).

Usage: python bench/receipt.py [--rows 10000000] [--chain-leaves 2500000] [--subject-rows 10000]
       [--runs 5] [--dir DIR] [--command-runs 3]
Target (issue 17): < 1 s for 10,000 rows in a 10 M-row store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sink import grow
from flowaudit.common.tuning import tune_process
from flowaudit.domain.checkpoint import CosignatureSigner, NoteSigner
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import load_policy
from flowaudit.domain.receipt import verify_receipt
from flowaudit.domain.witness import Witness
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.receipts import receipt_bytes
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.merkle_store import MerkleStore
from flowaudit.sinks.receipts import EARLIEST_MS, LATEST_MS, build_receipt
from flowaudit.sinks.witness_state import save_state, witnessed_notes
from flowaudit.witness import StoreProofs, observe_all

SUBJECT = "u-receipt-subject"
CHAIN_TOPIC = "flowaudit.bench"
SIGNER = NoteSigner("bench.flowaudit", bytes(32))
WITNESS = CosignatureSigner("witness.bench", bytes(range(32)))


def chain_records(leaves: int, subject_rows: int, batch: int) -> Iterator[list[AuditRecord]]:
    """The chain's records in batches: generated events, every (leaves // subject_rows)-th one the
    subject's, so their leaves are spread over the whole tree (as a long-lived subject's are)."""
    policy = load_policy(DEFAULT_POLICY_DIR)
    decider = Decider(policy)
    every = max(1, leaves // subject_rows)
    events = (
        raw
        for raw in EventGenerator(policy, seed=11).events(leaves * 2)
        if raw.get("event_type") != "consent"
    )
    current: list[AuditRecord] = []
    for offset in range(leaves):
        event = event_from_mapping(next(events), policy)
        if offset % every == 0 and offset // every < subject_rows:
            event = dataclasses.replace(event, user_id=SUBJECT)
        current.append(AuditRecord(event, decider.decide(event), CHAIN_TOPIC, 0, offset, 0))
        if len(current) == batch:
            yield current
            current = []
    if current:
        yield current


def open_store(path: Path, *, writer: bool) -> AuditStore:
    """The bench's store; reused as a reader without chain heads, as `flowaudit receipt` opens it
    (the grown copies share the chain's id, so the chain's last link no longer verifies against
    the key, which a writer checks when it opens the store)."""
    policy = load_policy(DEFAULT_POLICY_DIR)
    store = AuditStore(f"chdb://{path}", policy, b"bench-key", database="bench_receipt", log_signer=SIGNER)
    store.connect(writer=writer, heads=writer)
    return store


def build_or_reuse(path: Path, args: argparse.Namespace) -> tuple[AuditStore, dict[str, tuple[int, str]]]:
    """The store and the witness's trees (chain -> size, cosigned note): reused when `path` was
    built with the same arguments (its marker file says so), else built afresh."""
    marker = path.with_name(path.name + ".json")
    state = path.with_name(path.name + ".witness.json")
    wanted = {"rows": args.rows, "chain_leaves": args.chain_leaves, "subject_rows": args.subject_rows}
    if marker.exists() and state.exists() and json.loads(marker.read_text()) == wanted:
        started = time.perf_counter()
        store = open_store(path, writer=False)  # as `flowaudit receipt` opens it
        print(
            f"reusing the store in {path} ({wanted}): opened in {time.perf_counter() - started:.3f} s",
            file=sys.stderr,
        )
        return store, witnessed_notes(state)
    marker.unlink(missing_ok=True)
    if path.exists():
        shutil.rmtree(path)
    store, witness = build(path, args)
    save_state(state, witness)
    marker.write_text(json.dumps(wanted))
    return store, {chain: (tree.size, tree.note) for chain, tree in witness.trees.items()}


def build(path: Path, args: argparse.Namespace) -> tuple[AuditStore, Witness]:
    """The chain written by the real writer (Merkle log on), the witness one batch behind, the table
    grown to --rows rows."""
    store = open_store(path, writer=True)
    chain = f"{CHAIN_TOPIC}/0"
    witness = Witness(SIGNER.verifier(), WITNESS)
    proofs = StoreProofs(MerkleStore(store.client, store.database))
    started = time.perf_counter()
    pending: list[str] = []
    for batch in chain_records(args.chain_leaves, args.subject_rows, 20_000):
        observe_all(witness, pending, proofs)  # the checkpoint of the batch before
        store.write(batch)
        pending = store.latest_checkpoints([chain])
    assert store.log is not None
    leaves = store.log.compacts[chain].size
    print(f"chain of {leaves:,} leaves written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    started = time.perf_counter()
    grow(store, args.rows, 200_000)
    print(
        f"audit table grown to {store.count():,} rows in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return store, witness


def main() -> None:
    tune_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chain-leaves", type=int, default=2_500_000)
    parser.add_argument("--subject-rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="keep the store here (default: a temporary directory)")
    parser.add_argument(
        "--command-runs",
        type=int,
        default=3,
        help="then time the command's steps in this many fresh processes",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "bench-receipt"
        store, witnessed = build_or_reuse(path, args)

        spent: list[tuple[float, str]] = []

        def query(sql: str, parameters: dict[str, object]) -> tuple[list[str], list[tuple[object, ...]]]:
            began = time.perf_counter()
            try:
                return store.query(qualify(sql, store.table), parameters)
            finally:
                spent.append((time.perf_counter() - began, sql.split("WHERE")[0][-40:].strip()))

        timings, cpu, receipt = [], [], None
        for _ in range(args.runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            receipt = build_receipt(query, SUBJECT, EARLIEST_MS, LATEST_MS, witnessed)
            timings.append(time.perf_counter() - started)
            # the process's CPU, the engine's threads included (chDB runs in it): steadier than the
            # wall time on a shared machine
            cpu.append(time.process_time() - cpu_started)
        assert receipt is not None
        last = spent[-len(spent) // args.runs :]
        print(f"last run: {len(last)} queries, {sum(t for t, _ in last):.3f} s in queries", file=sys.stderr)
        for seconds, what in sorted(last, reverse=True)[:5]:
            print(f"  {seconds:.3f} s {what}", file=sys.stderr)
        started = time.perf_counter()
        written = receipt_bytes(receipt)
        write_seconds = time.perf_counter() - started
        started = time.perf_counter()
        check = verify_receipt(receipt, SIGNER.verifier(), WITNESS.verifier())
        verify_seconds = time.perf_counter() - started
        entry = next(iter(receipt["chains"].values()))
        result = {
            "store_rows": store.count(),
            "chain_leaves": int(entry["checkpoint"].split("\n")[1]),
            "receipt_rows": len(receipt["rows"]),
            "witnessed_rows": check.witnessed_rows,
            "distinct_nodes": len(entry["nodes"]),
            "receipt_bytes": len(written),
            "build_seconds": [round(t, 3) for t in timings],
            "build_seconds_median": round(statistics.median(timings), 3),
            "build_cpu_seconds": [round(t, 3) for t in cpu],
            "build_cpu_seconds_median": round(statistics.median(cpu), 3),
            "write_seconds": round(write_seconds, 3),
            "verify_receipt_seconds": round(verify_seconds, 3),
            "target_seconds": 1.0,
        }
        store.close()  # chDB: one process per store, and the command's processes open it next
        result["command"] = time_commands(path, args.command_runs)
    print(json.dumps(result, indent=2))


def time_commands(path: Path, runs: int) -> list[dict[str, float]]:
    """bench/receipt_command.py (what `flowaudit receipt` does) in `runs` fresh processes: its
    steps' seconds, and the process's from start to exit."""
    script = Path(__file__).with_name("receipt_command.py")
    state = path.with_name(path.name + ".witness.json")
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                str(path),
                str(state),
                SUBJECT,
                str(path.with_name("receipt.json")),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        steps: dict[str, float] = json.loads(done.stdout)
        timings.append({**steps, "process": round(time.perf_counter() - started, 3)})
    return timings


if __name__ == "__main__":
    main()
