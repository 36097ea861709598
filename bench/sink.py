"""Audit sink benchmark: rows/s written into chDB, and report latency over a 10,000,000-row store.

1. Builds --records realistic audit records (generator + decision core, not timed). Each store
   first takes them once untimed (the engine and the allocators warm up, as in a running worker),
   then --passes more times with fresh offsets and event ids, timed, through `AuditStore.prepare` +
   `insert` in
   batches of --batch rows. The ClickHouse engine's background merges run meanwhile, as they
   would in a worker:
   - sequential: prepare then insert, batch after batch;
   - overlapped: the next batch is prepared while the previous one is inserted on another thread
     (chDB releases the GIL while it parses and writes), which is how the worker runs, since its
     insert happens on the store thread while the event loop decides the next batch.
2. Grows the store to --rows rows with INSERT … SELECT inside ClickHouse (copies of the written rows
   with fresh event ids, spread over --users data subjects and a year of timestamps; their chain
   columns are not valid, this store is for query latency only), waits until its background merges
   are done (the parts left are reported: no OPTIMIZE, the store is as a running worker leaves it),
   then times `user-disclosures` for several users and `blocked-health-transfers`, median of the runs.

3. Times `user-disclosures` for subjects of bulk transfers (read from the per-subject index,
   audit_subjects). `--no-subjects-index` drops its materialized view first (the store of the
   code before it): the write rates with and without the index, and its cost, side by side.

4. The Merkle log (issue 17) is on, as in the worker: every batch also writes its chains' tree nodes
   and one signed checkpoint per link (sinks/merkle_log.py). `--no-merkle` writes the HMAC chain
   only (the code before it), for the cost per row.

Usage: python bench/sink.py [--records 200000] [--passes 5] [--rows 10000000] [--batch 20000]
       [--no-subjects-index] [--no-merkle]
Targets (issue 4): >= 150,000 rows/s; user-disclosures < 200 ms at 10M rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from flowaudit.common.tuning import tune_process
from flowaudit.domain.checkpoint import NoteSigner
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import SUBJECTS_VIEW, AuditStore, PreparedBatch, qualify
from flowaudit.sinks.reports import load_reports, report_parameters


def build_records(count: int) -> list[AuditRecord]:
    policy = load_policy(DEFAULT_POLICY_DIR)
    decider = Decider(policy)
    records = []
    for offset, raw in enumerate(EventGenerator(policy, seed=3).events(count)):
        event = event_from_mapping(raw, policy)
        records.append(AuditRecord(event, decider.decide(event), "flowaudit.bench", offset % 4, offset, 0))
    return records


def later_passes(records: list[AuditRecord], passes: int) -> list[AuditRecord]:
    """The same records again `passes` times, each time at offsets past all earlier ones and with
    event ids of their own: the store knows records by event id and would not write them again."""
    span = max(record.offset for record in records) + 1
    return [
        _renamed(r, k)._replace(offset=r.offset + span * k) for k in range(1, passes + 1) for r in records
    ]


def _renamed(record: AuditRecord, generation: int) -> AuditRecord:
    """The record as another event: a new event id (its first group of hex digits changed)."""
    event_id = f"{generation:08x}{record.event.event_id[8:]}"
    return record._replace(
        event=dataclasses.replace(record.event, event_id=event_id),
        decision=record.decision._replace(event_id=event_id),
    )


def write_sequential(store: AuditStore, records: list[AuditRecord], batch: int) -> None:
    for start in range(0, len(records), batch):
        store.insert(store.prepare(records[start : start + batch]))


def write_overlapped(store: AuditStore, records: list[AuditRecord], batch: int) -> None:
    with ThreadPoolExecutor(max_workers=1) as inserter:
        inflight: Future[None] | None = None
        previous: PreparedBatch | None = None
        for start in range(0, len(records), batch):
            prepared = store.prepare(records[start : start + batch], after=previous)
            if inflight is not None:
                inflight.result()  # one insert in flight at most; links must land in order
            inflight = inserter.submit(store.insert, prepared)
            previous = prepared
        if inflight is not None:
            inflight.result()


def merged_rows(store: AuditStore) -> int:
    """Rows rewritten by background merges so far in this process (all tables)."""
    _, rows = store.query("SELECT value FROM system.events WHERE event = 'MergedRows'")
    return int(rows[0][0]) if rows else 0


def active_parts(store: AuditStore) -> int:
    _, rows = store.query(
        "SELECT count() FROM system.parts WHERE active AND database = {db:String} AND table = 'audit_events'",
        {"db": store.database},
    )
    return int(rows[0][0])


def settle_merges(store: AuditStore, timeout: float = 600.0) -> float:
    """Wait until no merge is running or due (two quiet checks a second apart); seconds waited."""
    started = time.perf_counter()
    quiet = 0
    while quiet < 2 and time.perf_counter() - started < timeout:
        time.sleep(1.0)
        _, rows = store.query("SELECT count() FROM system.merges")
        quiet = quiet + 1 if int(rows[0][0]) == 0 else 0
    return time.perf_counter() - started


def measure(
    write: Callable[[AuditStore, list[AuditRecord], int], None],
    store: AuditStore,
    records: list[AuditRecord],
    passes: int,
    batch: int,
) -> dict[str, float]:
    """Rows/s of `write` after an untimed warm-up pass, the CPU time per row of this thread
    (Python) and of all others (the ClickHouse engine: insert, background merges), and how many
    rows the merges rewrote meanwhile per row written (their share of the engine's work)."""
    write(store, records, batch)
    timed = later_passes(records, passes)
    merged_before = merged_rows(store)
    started, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    write(store, timed, batch)
    elapsed = time.perf_counter() - started
    main_cpu = time.thread_time() - main_cpu
    engine_cpu = time.process_time() - cpu - main_cpu
    return {
        "rows_per_second": round(len(timed) / elapsed),
        "python_us_per_row": round(main_cpu / len(timed) * 1e6, 2),
        "clickhouse_us_per_row": round(engine_cpu / len(timed) * 1e6, 2),
        "merged_rows_per_row": round((merged_rows(store) - merged_before) / len(timed), 2),
        "parts_after": active_parts(store),
    }


def grow(store: AuditStore, target_rows: int, users: int) -> float:
    started = time.perf_counter()
    table = store.table
    while (current := store.count()) < target_rows:
        take = min(current, target_rows - current)
        store.client.command(
            f"""INSERT INTO {table}
            SELECT * EXCEPT (number) REPLACE (
                generateUUIDv4(number) AS event_id,
                if(isNull(user_id), NULL, concat('u-', toString(cityHash64(number) % {users}))) AS user_id,
                occurred_at - toIntervalSecond(cityHash64(number, 1) % 31536000) AS occurred_at
            )
            FROM (SELECT *, rowNumberInAllBlocks() + {current} AS number FROM {table} LIMIT {take})
            SETTINGS max_insert_threads = 2"""
        )
    return time.perf_counter() - started


def time_report(store: AuditStore, name: str, runs: list[dict[str, str | None]]) -> list[float]:
    report = load_reports()[name]
    sql = qualify(report.sql, store.table)
    timings = []
    for args in runs:
        params = report_parameters(report, args.get("since"), args.get("until"), args.get("user"))
        started = time.perf_counter()
        store.query(sql, params)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    tune_process()
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the records")
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--dir", help="keep the store here (default: a temporary directory)")
    parser.add_argument("--no-subjects-index", action="store_true", help="drop the per-subject index's view")
    parser.add_argument("--no-merkle", action="store_true", help="no Merkle log: the HMAC chain only")
    args = parser.parse_args()

    records = build_records(args.records)
    policy = load_policy(DEFAULT_POLICY_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "bench-audit"
        signer = None if args.no_merkle else NoteSigner("bench.flowaudit", bytes(32))
        store = AuditStore(f"chdb://{path}", policy, b"bench-key", database="bench_ovl", log_signer=signer)
        store.connect()
        if args.no_subjects_index:
            store.client.command(f"DROP VIEW {qualify(SUBJECTS_VIEW, store.table)}")
        # overlapped first: it is how the worker writes, and it should not share the CPU with the
        # background merges of the other store's parts
        overlapped = measure(write_overlapped, store, records, args.passes, args.batch)
        sequential_store = AuditStore(
            f"chdb://{path}", policy, b"bench-key", database="bench_seq", log_signer=signer
        )
        sequential_store._client = store.client
        sequential_store.apply_ddl()
        sequential_store._open_log()
        if args.no_subjects_index:
            sequential_store.client.command(f"DROP VIEW {qualify(SUBJECTS_VIEW, sequential_store.table)}")
        sequential = measure(write_sequential, sequential_store, records, args.passes, args.batch)
        sequential = {"rows_per_second": sequential["rows_per_second"]}  # the rest is the overlapped run's

        grow_seconds = grow(store, args.rows, args.users)
        settle_seconds = settle_merges(store)  # reports run on the store as its merges leave it
        rows, parts = store.count(), active_parts(store)
        users = [f"u-{n}" for n in range(0, args.users, max(1, args.users // 25))][:25]
        disclosures = time_report(store, "user-disclosures", [{"user": u} for u in users])
        blocked = time_report(store, "blocked-health-transfers", [{} for _ in range(7)])
        _, named = store.query(
            qualify("SELECT DISTINCT subject FROM audit_subjects ORDER BY subject LIMIT 25", store.table)
        )
        subjects = [row[0] for row in named] or users[:1]
        by_subject = time_report(store, "user-disclosures", [{"user": s} for s in subjects])
        _, index_rows = store.query(qualify("SELECT count() FROM audit_subjects", store.table))
        _, sample = store.query(
            f"SELECT count() FROM {store.table} WHERE user_id = {{u:String}}", {"u": users[len(users) // 2]}
        )
        store.close()

    result = {
        "timed_rows": args.records * args.passes,
        "batch_rows": args.batch,
        "sequential": sequential,
        "overlapped": overlapped,
        "store_rows": rows,
        "store_parts": parts,
        "grow_seconds": round(grow_seconds, 1),
        "settle_seconds": round(settle_seconds, 1),
        "rows_of_one_user": int(sample[0][0]),
        "user_disclosures_ms_median": round(statistics.median(disclosures), 1),
        "user_disclosures_ms_max": round(max(disclosures), 1),
        "blocked_health_transfers_ms_median": round(statistics.median(blocked), 1),
        "subjects_index": not args.no_subjects_index,
        "merkle_log": not args.no_merkle,
        "subjects_index_rows": int(index_rows[0][0]),
        "user_disclosures_of_a_subject_ms_median": round(statistics.median(by_subject), 1),
        "user_disclosures_of_a_subject_ms_max": round(max(by_subject), 1),
        "targets": {"rows_per_second": 150_000, "user_disclosures_ms": 200},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
