"""The audit store against a real ClickHouse engine (chDB): DDL, chain, verify, crash recovery, reports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.sinks.audit import AuditRecord, content_bytes, content_from_stored, row_hash
from flowaudit.sinks.clickhouse import (
    DDL_FILE,
    INSERT_FORMAT,
    AuditStore,
    PreparedBatch,
    StoreError,
    qualify,
    split_statements,
)
from flowaudit.sinks.reports import load_reports, report_parameters
from flowaudit.sinks.verify import verify_store
from tests.conftest import DATA_DIR
from tests.sinks.legacy_store import create_legacy_table, legacy_write

pytestmark = pytest.mark.integration


def records_from(
    policy: Policy,
    raws: list[dict[str, Any]],
    topic: str = "in",
    partitions: int = 2,
) -> list[AuditRecord]:
    """Records decided by the shipped decision core."""
    decider = Decider(policy)
    out = []
    for offset, raw in enumerate(raws):
        event = event_from_mapping(raw, policy)
        decision = decider.decide(event)
        out.append(AuditRecord(event, decision, topic, offset % partitions, offset, 1_762_300_000_000))
    return out


def generated(policy: Policy, count: int, seed: int = 1) -> list[AuditRecord]:
    return records_from(policy, list(EventGenerator(policy, seed=seed).events(count)))


def test_ddl_applies_twice(store_factory: Any) -> None:
    store = store_factory()
    store.apply_ddl()
    store.apply_ddl()
    assert store.count() == 0
    _, rows = store.query(
        "SELECT engine, partition_key, sorting_key, engine_full FROM system.tables "
        "WHERE database = {db:String} AND name = 'audit_events'",
        {"db": store.database},
    )
    engine, partition_key, sorting_key, engine_full = rows[0]
    assert (engine, partition_key, sorting_key) == (
        "MergeTree",
        "toYYYYMM(ingested_at)",
        "user_id, occurred_at, event_id",
    )
    assert "merge_selector_base = 10" in engine_full  # fewer merge rewrites per row (schemas/sql/audit.sql)


def test_clean_store_verifies(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    records = generated(policy, 3000)
    for start in range(0, 3000, 700):
        store.write(records[start : start + 700])
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.rows == 3000 and report.chains == 2 and report.links == 10


def _one_row(store: AuditStore, where: str = "1") -> dict[str, Any]:
    return next(
        store.stream(f"SELECT * FROM {store.table} WHERE {where} ORDER BY source_offset LIMIT 1 OFFSET 7")
    )


def test_altered_column_is_named(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store.write(generated(policy, 500))
    victim = _one_row(store, "decision = 'blocked'")
    store.client.command(
        f"ALTER TABLE {store.table} UPDATE decision = 'allowed' WHERE event_id = '{victim['event_id']}' "
        "SETTINGS mutations_sync = 1"
    )
    problem = verify_store(store).problems[0]
    assert str(victim["event_id"]) in problem and "altered" in problem


def test_deleted_row_is_named_by_position(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store.write(generated(policy, 500))
    victim = _one_row(store)
    store.client.command(
        f"ALTER TABLE {store.table} DELETE WHERE event_id = '{victim['event_id']}' "
        "SETTINGS mutations_sync = 1"
    )
    problem = verify_store(store).problems[0]
    assert f"row #{victim['link_index']} " in problem and "deleted" in problem
    assert f"chain {victim['chain_id']} link {victim['chain_seq']}" in problem


def test_forged_row_is_named(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store.write(generated(policy, 500))
    original = _one_row(store, "decision = 'blocked'")
    forged = dict(original)
    forged["decision"] = "allowed"
    forged["rules"] = []
    # a careful forger recomputes the row hash; only the chain key would let them fix the link
    forged["row_hash"] = row_hash(content_bytes(content_from_stored(forged)))
    store.client.insert(store.table, [list(forged.values())], column_names=list(forged))
    problem = verify_store(store).problems[0]
    assert "forged row" in problem and str(original["event_id"]) in problem


def test_appended_link_without_the_key_is_detected(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    records = generated(policy, 400)
    store.write(records[:200])
    forger = AuditStore(store.url, policy, b"not-the-key", database=store.database)
    forger._client, forger.heads = store.client, dict(store.heads)
    forger.write(records[200:])
    problem = verify_store(store).problems[0]
    assert "link hash does not match" in problem


def test_crash_between_insert_and_commit_leaves_no_duplicate_and_no_gap(
    store_factory: Any, policy: Policy
) -> None:
    records = generated(policy, 2000)
    first = store_factory()
    first.write(records[:1200])  # inserted, but the worker dies before committing offsets
    first.close()
    # restart: the consumer resumes from the last committed offset (say 800) and re-reads 800..1999
    second = store_factory()
    batch = second.prepare(records[800:])
    assert batch.skipped == 400 and batch.rows == 800
    second.insert(batch)
    assert second.count() == 2000
    _, rows = second.query(f"SELECT uniqExact(event_id), count() FROM {second.table}")
    assert rows == [(2000, 2000)]
    assert verify_store(second).ok


def test_offsets_that_start_again_are_new_records(store_factory: Any, policy: Policy) -> None:
    """A recreated topic (or a fresh development broker) starts at offset 0 again: new events there
    are written, not taken for replays (the store used to skip them on their offset alone)."""
    first_run = records_from(policy, list(EventGenerator(policy, seed=1).events(600)))
    second_run = records_from(policy, list(EventGenerator(policy, seed=2).events(600)))
    assert {r.offset for r in first_run} == {r.offset for r in second_run}
    store = store_factory()
    store.write(first_run)
    restarted = store_factory()  # the worker again, same store, the offsets start again
    batch = restarted.prepare(second_run)
    assert (batch.rows, batch.skipped) == (600, 0)
    restarted.insert(batch)
    assert restarted.count() == 1200
    report = verify_store(restarted)
    assert report.ok and report.rows == 1200, report.problems
    # and the second run's records read again are replays, recognised by event id
    again = restarted.prepare(second_run[:300])
    assert (again.rows, again.skipped) == (0, 300)


def test_the_same_event_at_two_offsets_gets_one_row(store_factory: Any, policy: Policy) -> None:
    records = generated(policy, 400)
    twice = [records[10]._replace(offset=1000), records[11]._replace(offset=1001)]
    store = store_factory()
    store.write(records[:200])
    # a copy later in the same batch, a copy of a row written before, and a copy within one batch
    batch = store.prepare([*records[200:], twice[0], twice[1], records[50]._replace(offset=1002)])
    assert batch.skipped == 3 and batch.rows == 200
    store.insert(batch)
    # after a restart, the window of recent ids is filled from the store
    restarted = store_factory()
    later = restarted.prepare([records[60]._replace(offset=2000), records[61]._replace(offset=2001)])
    assert (later.rows, later.skipped) == (0, 2)
    _, rows = store.query(f"SELECT uniqExact(event_id), count() FROM {store.table}")
    assert rows == [(400, 400)]
    assert verify_store(store).ok


def test_retried_insert_is_deduplicated_by_token(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    batch = store.prepare(generated(policy, 300))
    store.insert(batch)
    # the insert succeeded but the answer was lost: the same prepared batch is sent again
    store.client.raw_insert(
        store.table,
        None,
        batch.payload,
        fmt=INSERT_FORMAT,
        settings={"insert_deduplication_token": batch.token},
    )
    assert store.count() == 300
    with pytest.raises(StoreError, match="stale batch"):
        store.insert(batch)  # the writer itself refuses a batch whose link is no longer next


class FlakyClient:
    def __init__(self, real: Any, failures: int) -> None:
        self.real, self.failures, self.calls = real, failures, 0

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("ClickHouse is down")
        return self.real.raw_insert(*args, **kwargs)


def test_insert_retries_until_the_store_is_back(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    real = store.client
    store._client = FlakyClient(real, failures=4)
    batch = store.prepare(generated(policy, 100))
    delays: list[float] = []
    retries: list[int] = []
    store.insert_with_retry(
        batch, sleep=delays.append, on_retry=lambda n, e: retries.append(n), max_backoff=0.5
    )
    assert retries == [1, 2, 3, 4] and delays == [0.1, 0.2, 0.4, 0.5]
    store._client = real
    assert store.count() == 100 and verify_store(store).ok


def test_insert_gives_up_only_when_stopping(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store._client = FlakyClient(store.client, failures=100)
    batch: PreparedBatch = store.prepare(generated(policy, 10))
    with pytest.raises(StoreError):
        store.insert_with_retry(batch, sleep=lambda s: None, should_stop=lambda: True)
    assert store.heads == {}  # nothing advanced: the records will be read again


def _run_report(
    store: AuditStore, name: str, policy: Policy | None = None, **kwargs: str
) -> list[dict[str, Any]]:
    report = load_reports()[name]
    params = report_parameters(
        report, kwargs.get("since"), kwargs.get("until"), kwargs.get("user"), None, policy
    )
    columns, rows = store.query(qualify(report.sql, store.table), params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_reports_on_a_known_input(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    raws = [
        json.loads(line) for line in (DATA_DIR / "events" / "report_input.jsonl").read_text().splitlines()
    ]
    store.write(records_from(policy, raws))

    blocked = _run_report(store, "blocked-health-transfers")
    summary = {(r["destination_country"], r["recipient"], r["rule"]): r["events"] for r in blocked}
    assert summary == {
        ("US", "Strava", "health-data-leaves-eea"): 1,
        ("FR", "Cardiology practice Lyon", "consent-missing"): 1,
        ("US", "HeartBeat Health", "health-data-leaves-eea"): 1,
        # a bulk transfer names no residence: out of the US-only area and the exception (fail closed)
        ("US", "HeartBeat Health", "subcontractor-outside-service-area"): 1,
        ("US", "(platform)", "health-data-leaves-eea"): 1,
        ("US", "(platform)", "transfer-without-safeguard"): 1,
    }

    outside = _run_report(store, "transfers-outside-eea")
    # one row per group of events (not per category): the events add up to the events outside
    assert {
        (
            r["recipient"],
            r["transfer_mechanism"],
            r["decision"],
            r["events"],
            r["records"],
            tuple(r["categories"]),
        )
        for r in outside
    } == {
        ("Strava", "consent_derogation", "blocked", 1, 1, ("activity", "health")),
        ("Strava", "consent_derogation", "allowed", 1, 1, ("activity",)),
        ("Twilio", "scc", "blocked", 1, 1, ("identity",)),
        ("HeartBeat Health", "scc", "blocked", 1, 40, ("health", "identity")),
        ("(platform)", "none", "blocked", 1, 1, ("health",)),
    }
    assert {r["legal_basis"] for r in outside if r["recipient"] == "Twilio"} == {"consent"}

    disclosed = _run_report(store, "user-disclosures", user="alice")
    # the bulk transfer to HeartBeat Health names no subjects: listed last, as one that may hold hers
    assert [(r["via"], r["recipient"], r["events"]) for r in disclosed if r["via"] != "user_id"] == [
        ("unattributed", "HeartBeat Health", 1)
    ]
    alice = [r for r in disclosed if r["via"] == "user_id"]
    assert {(r["recipient"], r["decision"], r["events"]) for r in alice} == {
        ("Strava", "blocked", 1),
        ("Strava", "allowed", 1),
        ("Cardiology practice Lyon", "blocked", 1),
        ("(platform: device sync)", "allowed", 1),
    }
    strava_allowed = next(r for r in alice if r["recipient"] == "Strava" and r["decision"] == "allowed")
    assert list(strava_allowed["categories"]) == ["activity"] and strava_allowed["legal_basis"] == "consent"
    assert _run_report(store, "user-disclosures", user="alice", since="2025-11-04") != alice
    # a subject with no flows of their own still learns of the transfers that named nobody
    assert [r["via"] for r in _run_report(store, "user-disclosures", user="nobody")] == ["unattributed"]

    consent = _run_report(store, "consent-missing")
    assert {(r["purpose"], r["recipient"]) for r in consent} == {
        ("third_party_sharing", "Cardiology practice Lyon"),
        ("two_factor_auth", "Twilio"),
    }

    drift = _run_report(store, "register-drift")
    # marketing declares identity and technical; location is drift. Twilio's identity data is declared.
    assert {(r["purpose"], r["category"]) for r in drift} == {("marketing", "location")}

    daily = _run_report(store, "daily-volume", since="2025-11-05", until="2025-11-06")
    assert sum(r["events"] for r in daily if r["category"] == "health") == 2
    assert {str(r["day"]) for r in daily} == {"2025-11-05"}


def test_user_disclosures_name_the_mechanism_of_each_transfer_and_the_retention_of_each_purpose(
    store_factory: Any, policy: Policy
) -> None:
    """GDPR Art. 15(1)(d) and 15(2): the period the data will be kept, and what each transfer outside
    the protected zone relied on, on the known input of test_reports_on_a_known_input."""
    store = store_factory()
    raws = [
        json.loads(line) for line in (DATA_DIR / "events" / "report_input.jsonl").read_text().splitlines()
    ]
    store.write(records_from(policy, raws))
    disclosed = _run_report(store, "user-disclosures", policy, user="alice")
    mechanisms = {(r["via"], r["recipient"], r["decision"]): r["transfer_mechanism"] for r in disclosed}
    assert mechanisms == {
        ("user_id", "Strava", "allowed"): "consent_derogation",
        ("user_id", "Strava", "blocked"): "consent_derogation",
        ("user_id", "Cardiology practice Lyon", "blocked"): "(within EEA)",
        ("user_id", "(platform: device sync)", "allowed"): "(within EEA)",
        ("unattributed", "HeartBeat Health", "blocked"): "scc",
    }
    for row in disclosed:
        purpose = policy.purposes[row["purpose"]]
        assert (row["retention"], row["retention_period"]) == (
            purpose.retention,
            purpose.retention_period or "",
        )
    # her purposes state no duration ("until deletion"): the period column, with one that does
    report = load_reports()["user-disclosures"]
    params = report_parameters(report, None, None, "alice", None, policy)
    params["retention_periods"] = ["P2Y" for _ in params["retention_periods"]]
    columns, rows = store.query(qualify(report.sql, store.table), params)
    assert {row[columns.index("retention_period")] for row in rows} == {"P2Y"}
    # without the policy's register (clickhouse-client without the parameters) it says so
    bare = _run_report(store, "user-disclosures", user="alice")
    assert {r["retention"] for r in bare} == {"(register not given)"}


def test_a_batch_prepared_on_one_in_flight_inserts_after_it(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    records = generated(policy, 600)
    first = store.prepare(records[:300])
    second = store.prepare(records[300:], after=first)
    with pytest.raises(StoreError, match="stale batch"):
        store.insert(second)  # out of order: refused
    store.insert(first)
    store.insert(second)
    assert store.count() == 600 and verify_store(store).ok


def test_verify_reads_timestamps_beyond_what_python_can_hold(store_factory: Any, policy: Policy) -> None:
    """A row dated after year 9999 (2^62 ms) or before 1900 must not stop verify (it did: a traceback)."""
    import dataclasses

    store = store_factory()
    records = generated(policy, 20)
    extreme = {3: 2**62, 4: -5_000_000_000_000}
    records = [
        record._replace(event=dataclasses.replace(record.event, occurred_at_ms=extreme[i]))
        if i in extreme
        else record
        for i, record in enumerate(records)
    ]
    store.write(records)
    report = verify_store(store)
    assert report.ok, report.problems or report.error
    assert report.rows == 20
    store.client.command(
        f"ALTER TABLE {store.table} UPDATE purpose = 'marketing' WHERE source_offset = 3 "
        "SETTINGS mutations_sync = 1"
    )
    broken = verify_store(store)
    assert not broken.ok and "source offset 3" in broken.problems[0]


def test_verify_of_an_unreadable_store_gives_no_verdict(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store.write(generated(policy, 10))

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("connection reset")

    store.stream = failing  # type: ignore[method-assign]
    report = verify_store(store)
    assert not report.ok and report.problems == []
    assert report.error is not None and "connection reset" in report.error


def test_an_engine_null_table_is_refused(chdb_path: Any, policy: Policy) -> None:
    from pathlib import Path

    database = "null_engine"
    store = AuditStore(f"chdb://{chdb_path}", policy, b"k" * 32, database=database)
    store.connect()
    create = split_statements(DDL_FILE.read_text())[0]
    null_ddl = "\n".join(
        line for line in create.split("ENGINE")[0].splitlines() if "INDEX idx_" not in line
    ).replace("IF NOT EXISTS audit_events", f"{database}.audit_events")
    null_ddl = null_ddl.rstrip().rstrip(")").rstrip().rstrip(",") + "\n)"
    store.client.command(f"DROP TABLE {database}.audit_events")
    store.client.command(null_ddl + " ENGINE = Null")
    store.close()
    with pytest.raises(StoreError, match="ENGINE = Null: it would not keep audit rows"):
        AuditStore(f"chdb://{chdb_path}", policy, b"k" * 32, database=database).connect()
    assert Path(str(chdb_path)).exists()


def test_a_table_without_the_writers_columns_is_refused(store_factory: Any) -> None:
    store = store_factory()
    # the per-subject index's view reads the column: ClickHouse refuses to drop it while the view exists
    store.client.command(f"DROP VIEW {qualify('audit_subjects_mv', store.table)}")
    store.client.command(f"ALTER TABLE {store.table} DROP INDEX idx_counterparty")
    store.client.command(f"ALTER TABLE {store.table} DROP COLUMN counterparty")
    with pytest.raises(StoreError, match="lacks the columns counterparty"):
        store_factory()


def test_a_changed_chain_key_is_refused_at_start_up(store_factory: Any, policy: Policy) -> None:
    store = store_factory(key=b"the-original-key" * 2)
    records = generated(policy, 300)
    store.write(records[:150])
    store.write(records[150:])
    with pytest.raises(StoreError, match=r"chain key is not the one chain in/\d was written with"):
        store_factory(key=b"another-key-here" * 2)
    again = store_factory(key=b"the-original-key" * 2)  # the right key still opens it
    assert again.heads == store.heads


def _tamper(store: AuditStore, assignment: str, where: str) -> None:
    store.client.command(
        f"ALTER TABLE {store.table} UPDATE {assignment} WHERE {where} SETTINGS mutations_sync = 1"
    )


def test_a_store_of_row_format_1_is_migrated_and_verifies_across_formats(
    store_factory: Any, policy: Policy
) -> None:
    """A store written by the code before row format 2 (its DDL, its rows) is opened by this code: the
    columns are added, old rows keep hashing as format 1, new rows are format 2 on the same chains,
    and tampering with a row of either format, or with a row's format, is caught."""
    key = b"test-key" * 4
    first = store_factory(key=key)
    create_legacy_table(first.client, first.table)
    records = generated(policy, 600)
    heads: dict[str, Any] = {}
    legacy_write(first.client, first.table, policy, key, records[:150], heads)
    legacy_write(first.client, first.table, policy, key, records[150:300], heads)

    reader = AuditStore(first.url, policy, key, database=first.database)  # verify, before any migration
    reader.connect(writer=False, heads=False)  # a reader that needs no head (a receipt) reads none
    assert reader.heads == {} and reader.count() == 300
    reader.close()
    reader.connect(writer=False)
    assert reader.heads == heads
    assert "row_format" in reader.missing_columns and "counterparty_name" in reader.missing_columns
    report = verify_store(reader)
    assert report.ok and (report.rows, report.links) == (300, 4), report.problems or report.error
    reader.close()

    store = store_factory(key=key)  # the worker of this version starts: it migrates the table
    assert store.missing_columns == () and store.heads == heads
    store.write(records[300:450])
    store.write(records[450:])
    report = verify_store(store)
    assert report.ok and (report.rows, report.links, report.chains) == (600, 8, 2), report.problems
    _, formats = store.query(
        f"SELECT row_format, count(), countIf(transfer_mechanism IS NULL), countIf(empty(flags)), "
        f"countIf(counterparty_name IS NULL), countIf(empty(subjects)) FROM {store.table} "
        f"GROUP BY row_format ORDER BY row_format"
    )
    assert formats[0] == (1, 300, 300, 300, 300, 300)  # old rows: what README says they show
    assert formats[1][:2] == (2, 300)

    # the migrated table has exactly the columns of a table created by this code
    store.client.command(qualify(split_statements(DDL_FILE.read_text())[0], f"{store.table}_fresh"))
    columns = (
        "SELECT name, type, default_kind, default_expression FROM system.columns "
        "WHERE database = {db:String} AND table = {name:String} ORDER BY position"
    )
    migrated = store.query(columns, {"db": store.database, "name": "audit_events"})[1]
    assert migrated == store.query(columns, {"db": store.database, "name": "audit_events_fresh"})[1]
    store.client.command(f"DROP TABLE {store.table}_fresh")

    old, new = records[20].offset, records[520].offset
    for assignment, where, expected in (
        ("purpose = 'marketing'", f"source_offset = {old}", f"source offset {old} was altered"),
        ("purpose = 'marketing'", f"source_offset = {new}", f"source offset {new} was altered"),
        ("row_format = 2", f"source_offset = {old}", f"source offset {old} was altered"),
        ("row_format = 1", f"source_offset = {new}", f"source offset {new} was altered"),
        ("row_format = 7", f"source_offset = {new}", "unknown row format 7"),
    ):
        _, [(original_purpose, original_format)] = store.query(
            f"SELECT purpose, row_format FROM {store.table} WHERE {where}"
        )
        _tamper(store, assignment, where)
        problems = verify_store(store).problems
        assert problems and expected in problems[0], (assignment, where, problems)
        _tamper(store, f"purpose = '{original_purpose}', row_format = {original_format}", where)
        assert verify_store(store).ok  # put back as it was, the row verifies again
