"""The audit store over ClickHouse's HTTP interface: clickhouse-connect's HttpClient, as in production,
against a chDB store that another process serves (tests/clickhouse_http.py, the `clickhouse_http`
fixture). The whole chDB suite (test_clickhouse_store.py) runs again here over HTTP, then what only
the HTTP path has: the database in the URL, parameters too long for a URL, insert settings as URL
parameters, two processes writing one store, and the wire protocol itself."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.sinks.audit import ALL_COLUMNS
from flowaudit.sinks.clickhouse import DDL_FILE, INSERT_FORMAT, AuditStore, StoreError, split_statements
from flowaudit.sinks.verify import verify_store
from tests.clickhouse_http import REPO, ShimError, decompress, parse_statement
from tests.helpers import run_cli, wait_for
from tests.sinks import test_clickhouse_store as chdb_suite
from tests.sinks import test_subjects_consents as consent_suite
from tests.sinks.test_clickhouse_store import generated, records_from

pytestmark = pytest.mark.integration

KEY = b"test-key" * 4
_DATABASES = itertools.count(1)

StoreFactory = Callable[..., AuditStore]


def _create_database(base_url: str) -> str:
    """A fresh database on the server (the production server's init script creates the store's)."""
    name = f"h{next(_DATABASES)}"
    client = clickhouse_connect.get_client(dsn=f"{base_url}/default")
    try:
        client.command(f"CREATE DATABASE {name}")
    finally:
        client.close()
    return name


def _factory(base_url: str, policy: Policy, *, qualify: bool) -> Iterator[StoreFactory]:
    database = _create_database(base_url)
    opened: list[AuditStore] = []

    def make(key: bytes = KEY, use_policy: Policy | None = None) -> AuditStore:
        store = AuditStore(
            f"{base_url}/{database}", use_policy or policy, key, database=database if qualify else None
        )
        store.connect()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store_factory(clickhouse_http: str, policy: Policy) -> Iterator[StoreFactory]:
    """conftest's store_factory over HTTP: the database in the URL, and qualifying the table as the
    chDB tests have it (`store.database`), so their checks run here unchanged."""
    yield from _factory(clickhouse_http, policy, qualify=True)


@pytest.fixture
def url_store_factory(clickhouse_http: str, policy: Policy) -> Iterator[StoreFactory]:
    """AuditStores as the worker opens them in production: the database only in the URL."""
    yield from _factory(clickhouse_http, policy, qualify=False)


# --- the chDB suite, again: these pick up this module's store_factory ----------------------------------

test_ddl_applies_twice = chdb_suite.test_ddl_applies_twice
test_clean_store_verifies = chdb_suite.test_clean_store_verifies
test_altered_column_is_named = chdb_suite.test_altered_column_is_named
test_deleted_row_is_named_by_position = chdb_suite.test_deleted_row_is_named_by_position
test_forged_row_is_named = chdb_suite.test_forged_row_is_named  # client.insert: Native, lz4, chunked
test_appended_link_without_the_key_is_detected = chdb_suite.test_appended_link_without_the_key_is_detected
test_crash_between_insert_and_commit_leaves_no_duplicate_and_no_gap = (
    chdb_suite.test_crash_between_insert_and_commit_leaves_no_duplicate_and_no_gap
)
test_offsets_that_start_again_are_new_records = chdb_suite.test_offsets_that_start_again_are_new_records
test_the_same_event_at_two_offsets_gets_one_row = chdb_suite.test_the_same_event_at_two_offsets_gets_one_row
test_retried_insert_is_deduplicated_by_token = chdb_suite.test_retried_insert_is_deduplicated_by_token
test_insert_retries_until_the_store_is_back = chdb_suite.test_insert_retries_until_the_store_is_back
test_insert_gives_up_only_when_stopping = chdb_suite.test_insert_gives_up_only_when_stopping
test_reports_on_a_known_input = chdb_suite.test_reports_on_a_known_input
test_user_disclosures_name_the_mechanism_of_each_transfer_and_the_retention_of_each_purpose = (
    chdb_suite.test_user_disclosures_name_the_mechanism_of_each_transfer_and_the_retention_of_each_purpose
)
# consents, notices, the per-subject index and its backfill: the same SQL over HTTP
test_consents_are_written_once_with_the_notices_known_at_withdrawal = (
    consent_suite.test_consents_are_written_once_with_the_notices_known_at_withdrawal
)
test_consent_withdrawals_report_is_complete = consent_suite.test_consent_withdrawals_report_is_complete
test_subject_exposure_and_user_disclosures_count_bulk_transfers = (
    consent_suite.test_subject_exposure_and_user_disclosures_count_bulk_transfers
)
test_an_older_store_gets_its_index_backfilled_once = (
    consent_suite.test_an_older_store_gets_its_index_backfilled_once
)
test_a_batch_prepared_on_one_in_flight_inserts_after_it = (
    chdb_suite.test_a_batch_prepared_on_one_in_flight_inserts_after_it
)
test_verify_reads_timestamps_beyond_what_python_can_hold = (
    chdb_suite.test_verify_reads_timestamps_beyond_what_python_can_hold
)
test_verify_of_an_unreadable_store_gives_no_verdict = (
    chdb_suite.test_verify_of_an_unreadable_store_gives_no_verdict
)
test_a_table_without_the_writers_columns_is_refused = (
    chdb_suite.test_a_table_without_the_writers_columns_is_refused
)
test_a_changed_chain_key_is_refused_at_start_up = chdb_suite.test_a_changed_chain_key_is_refused_at_start_up
test_a_store_of_row_format_1_is_migrated_and_verifies_across_formats = (
    chdb_suite.test_a_store_of_row_format_1_is_migrated_and_verifies_across_formats
)

NOT_RERUN = {
    # opens chdb:// itself; test_an_engine_null_table_is_refused_over_http below
    "test_an_engine_null_table_is_refused",
}


def test_the_whole_chdb_suite_runs_here() -> None:
    suite = {name for name in vars(chdb_suite) if name.startswith("test_")}
    here = {name for name, value in globals().items() if name in suite and value is vars(chdb_suite)[name]}
    assert here == suite - NOT_RERUN


def test_an_engine_null_table_is_refused_over_http(store_factory: StoreFactory) -> None:
    store = store_factory()
    create = split_statements(DDL_FILE.read_text())[0]
    null_ddl = "\n".join(
        line for line in create.split("ENGINE")[0].splitlines() if "INDEX idx_" not in line
    ).replace("IF NOT EXISTS audit_events", store.table)
    null_ddl = null_ddl.rstrip().rstrip(")").rstrip().rstrip(",") + "\n)"
    store.client.command(f"DROP TABLE {store.table}")
    store.client.command(null_ddl + " ENGINE = Null")
    with pytest.raises(StoreError, match="ENGINE = Null: it would not keep audit rows"):
        store_factory()


# --- what only the HTTP path has -------------------------------------------------------------------------


def test_a_store_at_a_clickhouse_url(url_store_factory: StoreFactory, policy: Policy) -> None:
    """As the worker opens it: `http://host:port/<database>`, the table not qualified."""
    store = url_store_factory()
    assert type(store.client).__name__ == "HttpClient" and store.table == "audit_events"
    database = store.url.rsplit("/", 1)[1]
    assert store.query("SELECT currentDatabase()")[1] == [(database,)]
    records = generated(policy, 1500)
    for start in range(0, 1500, 500):
        store.write(records[start : start + 500])
    report = verify_store(store)
    assert report.ok and (report.rows, report.chains, report.links) == (1500, 2, 6), report.problems

    restarted = url_store_factory()  # heads and the identity window come back from the store
    assert restarted.heads == store.heads
    assert restarted.prepare(records[:100]).skipped == 100
    daily = chdb_suite._run_report(restarted, "daily-volume")
    _, [(expected,)] = restarted.query("SELECT sum(greatest(length(data_categories), 1)) FROM audit_events")
    assert sum(row["events"] for row in daily) == expected > 1500  # a row per event and category

    victim = next(store.stream("SELECT event_id FROM audit_events ORDER BY source_offset LIMIT 1 OFFSET 9"))
    store.client.command(
        f"ALTER TABLE audit_events UPDATE record_count = record_count + 1 "
        f"WHERE event_id = '{victim['event_id']}' SETTINGS mutations_sync = 1"
    )
    problem = verify_store(restarted).problems[0]
    assert str(victim["event_id"]) in problem and "altered" in problem


def test_a_database_that_does_not_exist_is_an_error(clickhouse_http: str, policy: Policy) -> None:
    store = AuditStore(f"{clickhouse_http}/no_such_database", policy, KEY)
    with pytest.raises(StoreError, match="UNKNOWN_DATABASE"):
        store.connect()


def test_stored_event_ids_in_the_url_and_in_a_form(url_store_factory: StoreFactory, policy: Policy) -> None:
    """A few ids are bound in the URL; a lookup chunk of 2,000 is too long for it, and clickhouse-connect
    sends it as multipart form fields."""
    store = url_store_factory()
    records = generated(policy, 2600)
    store.write(records)
    written = [record.event.event_id for record in records]
    unknown = [str(uuid.uuid4()) for _ in range(50)]
    assert store.stored_event_ids(written[:5] + unknown[:5]) == set(written[:5])
    assert store.stored_event_ids(written + unknown) == set(written)


def test_insert_settings_apply_to_their_request_only(url_store_factory: StoreFactory, policy: Policy) -> None:
    """The deduplication token rides as a URL parameter: it must reach the engine (a retry is dropped,
    another token is not), and must not outlive its request (the next insert is not taken for it)."""
    store = url_store_factory()
    batch = store.prepare(generated(policy, 300))
    store.insert(batch)
    other = store.prepare(generated(policy, 200, seed=5))
    third = store.prepare(generated(policy, 100, seed=6))
    assert (other.rows, third.rows) == (200, 100)

    def send(payload: bytes, **settings: Any) -> None:
        store.client.raw_insert(store.table, list(ALL_COLUMNS), payload, settings=settings, fmt=INSERT_FORMAT)

    send(batch.payload, insert_deduplicate=1, insert_deduplication_token=batch.token)  # a retry
    assert store.count() == 300
    send(other.payload, insert_deduplicate=1, insert_deduplication_token=batch.token)  # the token decides
    assert store.count() == 300
    send(batch.payload, insert_deduplicate=1, insert_deduplication_token="another")
    assert store.count() == 600
    send(third.payload, insert_deduplicate=1)  # had "another" outlived its request, this would be dropped
    assert store.count() == 700


def test_two_processes_write_one_store(
    url_store_factory: StoreFactory, policy: Policy, tmp_path: Path
) -> None:
    """Two writers, as two workers of one consumer group: each its own chains, one store."""
    store = url_store_factory()
    output = tmp_path / "writer.out"
    writer_args = [store.url, "b", "2000", "100", "2", KEY.decode()]  # topic, records, batch, seed, key
    command = [sys.executable, "-m", "tests.sinks.http_store_writer", *writer_args]
    with open(output, "wb") as handle:
        writer = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:

        def theirs() -> int:
            if writer.poll() is not None:
                raise AssertionError(f"the writer exited early:\n{output.read_text()}")
            return int(store.query(f"SELECT count() FROM {store.table} WHERE source_topic = 'b'")[1][0][0])

        wait_for(theirs, 60, "the other process's first batch", interval=0.05)
        mine = records_from(policy, list(EventGenerator(policy, seed=1).events(2000)), topic="a")
        for start in range(0, 2000, 100):
            store.write(mine[start : start + 100])
        assert writer.wait(timeout=120) == 0, output.read_text()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
    result = json.loads(output.read_text().splitlines()[-1])
    assert result == {"rows": 2000, "heads": {"b/0": 20, "b/1": 20}}
    _, rows = store.query(f"SELECT source_topic, count() FROM {store.table} GROUP BY source_topic ORDER BY 1")
    assert rows == [("a", 2000), ("b", 2000)]
    report = verify_store(store)
    assert report.ok and (report.rows, report.chains) == (4000, 4), report.problems


def test_flowaudit_verify_and_report_over_http(
    url_store_factory: StoreFactory, policy: Policy, tmp_path: Path
) -> None:
    """The CLI as a DPO runs it against the production server (credentials in the URL are sent as
    Basic auth; the shim accepts any)."""
    store = url_store_factory()
    store.write(generated(policy, 400))
    host, database = store.url.removeprefix("http://").split("/")
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWAUDIT_")}
    env.update(
        FLOWAUDIT_CLICKHOUSE_URL=f"http://flowaudit_dpo:reader-secret@{host}/{database}",
        FLOWAUDIT_CHAIN_KEY=KEY.decode(),
        FLOWAUDIT_DATA_DIR=str(tmp_path / "data"),
    )
    verified = run_cli(env, "verify", "--json")
    assert verified.returncode == 0, verified.stderr.decode()
    assert json.loads(verified.stdout) == {
        "ok": True,
        "chains": 2,
        "links": 2,
        "rows": 400,
        "problems": [],
        "error": None,
        "checks": ["hmac"],  # the writer here keeps no Merkle log, and no public key is given
        "checkpoints": 0,
    }
    report = run_cli(env, "report", "daily-volume", "--format", "json")
    assert report.returncode == 0, report.stderr.decode()
    assert sum(row["events"] for row in json.loads(report.stdout)) >= 400


def test_statements_are_split_from_their_data() -> None:
    # binary data may start with bytes that look like whitespace: only the first newline is dropped
    insert = parse_statement(b"INSERT INTO `t` (`format`, `b`) FORMAT Native\n\n\t\x00data")
    assert (insert.sql, insert.insert_format, insert.data) == (
        b"INSERT INTO `t` (`format`, `b`)",
        "Native",
        b"\n\t\x00data",
    )
    inline = parse_statement(b"insert into t settings a = 'FORMAT x' format CSV 1,2\n")
    assert (inline.sql, inline.insert_format, inline.data) == (
        b"insert into t settings a = 'FORMAT x'",
        "CSV",
        b"1,2\n",
    )
    assert parse_statement(b"INSERT INTO t VALUES (1, 'FORMAT')").insert_format is None
    query = parse_statement(b"-- FORMAT JSON\nSELECT format, (SELECT 1 FORMAT CSV) FROM t\n FORMAT Native")
    assert (query.kind, query.output_format, query.returns_rows) == ("SELECT", "Native", True)
    assert parse_statement(b"SELECT 1 FORMAT JSON SETTINGS max_threads = 1").output_format == "JSON"
    assert parse_statement(b"SELECT format FROM t").output_format is None
    ddl = parse_statement(b"/* c */ CREATE TABLE t (format String) ENGINE = Memory")
    assert (ddl.kind, ddl.returns_rows) == ("CREATE", False)


def test_request_bodies_are_decompressed_as_clickhouse_connect_compresses_them() -> None:
    from clickhouse_connect.driver.compression import get_compressor

    blocks = [b"INSERT INTO t FORMAT CSV\n", b"1,2\n" * 1000, b"3,4\n"]
    for encoding in ("lz4", "zstd", "gzip"):
        compressor = get_compressor(encoding)  # a frame (or member) per block, as inserts send them
        body = b"".join(compressor.compress_block(block) for block in blocks) + (compressor.flush() or b"")
        assert decompress(body, encoding) == b"".join(blocks), encoding
    assert decompress(zlib.compress(b"deflated"), "deflate") == b"deflated"
    with pytest.raises(ShimError) as broken:
        decompress(b"not lz4", "lz4")
    assert broken.value.code == 271


# --- the wire protocol -------------------------------------------------------------------------------------


def _post(
    base_url: str, sql: str, headers: dict[str, str] | None = None, method: str = "POST", **parameters: str
) -> tuple[int, Any, bytes]:
    query = urllib.parse.urlencode(parameters if method == "POST" else {**parameters, "query": sql})
    request = urllib.request.Request(
        f"{base_url}/?{query}",
        data=sql.encode() if method == "POST" else None,
        headers=headers or {},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_the_http_interface_answers_as_clickhouse_does(clickhouse_http: str) -> None:
    with urllib.request.urlopen(f"{clickhouse_http}/ping", timeout=10) as response:
        assert response.read() == b"Ok.\n"

    status, headers, body = _post(
        clickhouse_http, "SELECT 1 AS x FORMAT TabSeparatedWithNames", query_id="q-1"
    )
    assert (status, body) == (200, b"x\n1\n")
    assert (
        headers["X-ClickHouse-Format"] == "TabSeparatedWithNames"
        and headers["X-ClickHouse-Query-Id"] == "q-1"
    )
    assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "1"

    status, headers, body = _post(clickhouse_http, "SELECT {n:UInt8} + 1", param_n="41", default_format="CSV")
    assert (status, body, headers["X-ClickHouse-Format"]) == (200, b"42\n", "CSV")

    status, headers, body = _post(
        clickhouse_http, "SELECT 'compressed'", {"Accept-Encoding": "gzip"}, enable_http_compression="1"
    )
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == b"compressed\n"

    # a setting is a URL parameter, for its request only
    assert _post(clickhouse_http, "SELECT getSetting('max_result_rows')", max_result_rows="7")[2] == b"7\n"
    assert _post(clickhouse_http, "SELECT getSetting('max_result_rows')")[2] == b"0\n"

    status, headers, body = _post(clickhouse_http, "SELECT * FROM nowhere")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "60" and body.startswith(b"Code: 60.")
    status, headers, _ = _post(clickhouse_http, "SELECT 1", no_such_setting="1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "115")
    status, headers, _ = _post(clickhouse_http, "CREATE TABLE t (a UInt8) ENGINE = Memory", method="GET")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")  # GET is read-only


def test_errors_reach_clickhouse_connect_as_database_errors(clickhouse_http: str) -> None:
    client = clickhouse_connect.get_client(dsn=f"{clickhouse_http}/default")
    try:
        with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as missing:
            client.query("SELECT * FROM default.nowhere")
        assert missing.value.code == 60
        with pytest.raises(DatabaseError, match="session state"):
            client.command("SET max_threads = 1")  # refused, not silently shared by every client
        assert client.command("SELECT 1 + 1") == 2  # the connection is fine afterwards
    finally:
        client.close()
