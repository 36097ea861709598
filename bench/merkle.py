"""Merkle log benchmark: the CPU a batch's leaves and nodes cost, and proof reads on a large chain.

1. CPU per row of a --batch-row batch (pure Python hashlib, median of --repeat runs), on realistic
   audit rows (generator + decision core + the writer's row builder, not timed):
   - `extend`: the leaves (SHA-256(0x00 || row_hash)) and every node the batch completes
     (sinks.merkle_store.extend_chain), from the chain's compact range;
   - `encode`: those nodes as an Arrow stream (node_payload);
   - for comparison, `leaf over content`: SHA-256(0x00 || the row's content JSON) per row, the leaf
     the issue first named (docs/merkle.md), and `row hash`: what the writer already spends on the
     row hash (SHA-256 of the content JSON, serialization included).
2. Grows one chain to --leaves leaves in chDB, batch by batch (timing each node INSERT), then times
   --proofs inclusion proofs of random leaves, consistency proofs from random older sizes, and both
   at once (one query each), reading the chain's size and compact range too. Median and max.

Usage: python bench/merkle.py [--batch 20000] [--repeat 7] [--leaves 1100000] [--proofs 50]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
import orjson

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.merkle import (
    CompactRange,
    inclusion_ranges,
    leaf_hash,
    proof_nodes,
    verify_consistency,
    verify_inclusion,
)
from flowaudit.domain.policy import load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.audit import AuditRecord, RowBuilder, row_hashes
from flowaudit.sinks.merkle_store import MerkleStore, extend_chain, node_payload

CHAIN = "flowaudit.bench/0"


def contents_of(count: int) -> list[tuple[object, ...]]:
    policy = load_policy(DEFAULT_POLICY_DIR)
    decider, builder = Decider(policy), RowBuilder(policy)
    records = []
    for offset, raw in enumerate(EventGenerator(policy, seed=3).events(count)):
        event = event_from_mapping(raw, policy)
        records.append(AuditRecord(event, decider.decide(event), "flowaudit.bench", 0, offset, 0))
    return builder.contents(records, 1_762_336_800_000)


def per_row_us(action: Callable[[], object], rows: int, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) / rows * 1e6)
    return times


def cpu_costs(batch: int, repeat: int) -> None:
    contents = contents_of(batch)
    hashes = row_hashes(contents)
    jsons = [orjson.dumps(content) for content in contents]
    mean_json = sum(map(len, jsons)) / len(jsons)
    print(f"batch of {batch:,} rows, content JSON {mean_json:.0f} bytes per row on average")

    def extend() -> object:
        return extend_chain(CompactRange.of(1, [bytes(32)]), hashes)  # an odd start: the worst case

    extension = extend_chain(CompactRange(), hashes)
    sha256 = hashlib.sha256
    runs = {
        "extend (leaves + nodes)": per_row_us(extend, batch, repeat),
        "encode (Arrow)": per_row_us(lambda: node_payload(CHAIN, extension), batch, repeat),
        "leaf over content JSON": per_row_us(
            lambda: [sha256(b"\0" + j).digest() for j in jsons], batch, repeat
        ),
        "row hash (writer, today)": per_row_us(lambda: row_hashes(contents), batch, repeat),
    }
    print(f"  {extension.count:,} node rows for {batch:,} audit rows ({extension.count / batch:.2f} per row)")
    for name, times in runs.items():
        shown = " ".join(f"{t:.2f}" for t in times)
        print(f"  {name:26s} median {statistics.median(times):.2f} us/row   runs: {shown}")


def grow_chain(merkle: MerkleStore, leaves: int, batch: int) -> tuple[list[bytes], dict[int, bytes]]:
    """Row hashes of the chain and the roots at every batch end, nodes inserted batch by batch."""
    rows = [hashlib.sha256(b"%d" % i).digest() for i in range(leaves)]
    compact, roots, insert_ms = CompactRange(), {}, []
    for start in range(0, leaves, batch):
        old = compact.size
        extension = extend_chain(compact, rows[start : start + batch])
        began = time.perf_counter()
        merkle.insert_nodes(CHAIN, old, extension)
        insert_ms.append((time.perf_counter() - began) * 1000)
        roots[extension.size] = extension.root
    per_row = statistics.median(insert_ms) / batch * 1000
    print(
        f"grew {CHAIN} to {leaves:,} leaves: node INSERT per {batch:,}-row batch median "
        f"{statistics.median(insert_ms):.1f} ms ({per_row:.2f} us per audit row), max {max(insert_ms):.1f} ms"
    )
    return rows, roots


def timed_ms(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def proof_reads(merkle: MerkleStore, rows: list[bytes], roots: dict[int, bytes], proofs: int) -> None:
    size = len(rows)
    rng = random.Random(5)
    sizes = sorted(roots)
    inclusion, consistency, both = [], [], []
    for _ in range(proofs):
        index, old = rng.randrange(size), rng.choice(sizes[:-1])
        inclusion.append(timed_ms(lambda i=index: merkle.inclusion_proof(CHAIN, i, size)))
        consistency.append(timed_ms(lambda o=old: merkle.consistency_proof(CHAIN, o, size)))
        proof, extends = merkle.proofs(CHAIN, index, size, old_size=old)
        both.append(timed_ms(lambda i=index, o=old: merkle.proofs(CHAIN, i, size, old_size=o)))
        verify_inclusion(index, size, leaf_hash(rows[index]), proof, roots[size])
        verify_consistency(old, size, roots[old], roots[size], extends)
    for name, times in (("inclusion", inclusion), ("consistency", consistency), ("both, one query", both)):
        print(f"  {name:16s} proof read: median {statistics.median(times):.2f} ms, max {max(times):.2f} ms")
    sql, parameters = merkle.nodes_query(CHAIN, proof_nodes(inclusion_ranges(size // 3, size)))
    plan = merkle.client.query(f"EXPLAIN indexes = 1 {sql}", parameters=parameters).result_rows
    granules = [str(row[0]).strip() for row in plan if "Granules" in str(row[0])]
    print(f"  an inclusion proof's query, primary key: {granules[-1] if granules else plan}")
    print(f"  stored size: {timed_ms(lambda: merkle.stored_size(CHAIN)):.2f} ms")
    print(f"  compact range: {timed_ms(lambda: merkle.load_compact(CHAIN)):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--leaves", type=int, default=1_100_000)
    parser.add_argument("--proofs", type=int, default=50)
    args = parser.parse_args()
    cpu_costs(args.batch, args.repeat)
    with tempfile.TemporaryDirectory() as directory:
        client = clickhouse_connect.get_client(dsn=f"chdb://{Path(directory) / 'store'}")
        merkle = MerkleStore(client)
        merkle.apply_ddl()
        rows, roots = grow_chain(merkle, args.leaves, args.batch)
        parts = client.query(
            "SELECT count(), sum(rows) FROM system.parts WHERE active AND table = 'audit_merkle_nodes'"
        ).result_rows[0]
        print(f"  node table: {parts[1]:,} rows in {parts[0]} parts")
        proof_reads(merkle, rows, roots, args.proofs)
        client.close()


if __name__ == "__main__":
    main()
