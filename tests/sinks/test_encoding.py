"""The Arrow batch sent to ClickHouse: exact values, chain columns, and a round trip through chDB."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.sinks import clickhouse, encoding
from flowaudit.sinks.audit import (
    ALL_COLUMNS,
    CONTENT_COLUMNS,
    GENESIS,
    AuditRecord,
    RowBuilder,
    content_from_stored,
    row_hash,
)
from flowaudit.sinks.clickhouse import INSERT_FORMAT
from flowaudit.sinks.encoding import (
    ARROW_TYPES,
    ROW_SCHEMA,
    BatchEncoder,
    Link,
    decode_batch,
    encode_batch,
    hash_array,
)
from flowaudit.sinks.verify import verify_store
from tests.conftest import DATA_DIR

EDGE_CASES = DATA_DIR / "events" / "encoding_edge_cases.jsonl"
INGESTED_MS = 1_762_300_000_123


def edge_records(policy: Policy, topic: str = "edge", partitions: int = 2) -> list[AuditRecord]:
    decider = Decider(policy)
    records = []
    for offset, line in enumerate(EDGE_CASES.read_bytes().splitlines()):
        event = event_from_mapping(orjson.loads(line), policy)
        records.append(
            AuditRecord(event, decider.decide(event), topic, offset % partitions, offset, 86_400_000)
        )
    return records


def test_arrow_types_cover_every_column_in_order() -> None:
    assert tuple(ARROW_TYPES) == ALL_COLUMNS
    assert ROW_SCHEMA.names == list(ALL_COLUMNS)


@pytest.mark.parametrize("chunk_rows", [16_384, 3, 1])
def test_encoded_batch_holds_exactly_the_contents_and_chain_columns(
    policy: Policy, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoding, "CHUNK_ROWS", chunk_rows)  # several record batches in one stream
    builder = RowBuilder(policy)
    contents = [builder.content(record, INGESTED_MS) for record in edge_records(policy)]
    hashes = [row_hash(orjson.dumps(content)) for content in contents]
    links = [Link("edge/0", 7, 3, b"\x01" * 32), Link("edge/1", 2, 1, b"\x00" * 31 + b"\xff")]

    table = decode_batch(encode_batch(contents, hashes, links))

    assert table.schema == ROW_SCHEMA
    assert len(table.to_batches()) == -(-len(contents) // chunk_rows)
    columns = table.to_pydict()
    for index, name in enumerate(CONTENT_COLUMNS):
        sent = columns[name]
        expected = [content[index] for content in contents]
        if name in {"occurred_at", "decided_at", "ingested_at"}:
            sent = [int(moment.timestamp() * 1000) for moment in sent]
        elif isinstance(expected[0], tuple):
            expected = [list(value) for value in expected]
        assert sent == expected, name
    assert columns["chain_id"] == ["edge/0"] * 3 + ["edge/1"]
    assert columns["chain_seq"] == [7, 7, 7, 2]
    assert columns["link_rows"] == [3, 3, 3, 1]
    assert columns["link_index"] == [0, 1, 2, 0]
    assert columns["link_hash"] == [b"\x01" * 32] * 3 + [b"\x00" * 31 + b"\xff"]
    assert columns["row_hash"] == hashes


def test_slices_of_any_size_make_the_same_stream(policy: Policy) -> None:
    builder = RowBuilder(policy)
    contents = builder.contents(edge_records(policy), INGESTED_MS)
    hashes = [row_hash(orjson.dumps(content)) for content in contents]
    links = [Link("edge/0", 1, len(contents), b"\x02" * 32)]
    encoder = BatchEncoder()
    for start, stop in ((0, 1), (1, 3), (3, len(contents))):
        encoder.add(contents[start:stop])
    sliced = decode_batch(encoder.finish(hashes, links))
    assert [len(batch) for batch in sliced.to_batches()] == [1, 2, len(contents) - 3]
    assert sliced.to_pydict() == decode_batch(encode_batch(contents, hashes, links)).to_pydict()


def test_columns_make_the_same_stream_as_rows(policy: Policy) -> None:
    """`add_columns` (the writer: columns from `RowBuilder.columns`) sends what `add` sends for the
    same rows."""
    builder = RowBuilder(policy)
    records = edge_records(policy)
    contents = builder.contents(records, INGESTED_MS)
    hashes = [row_hash(orjson.dumps(content)) for content in contents]
    links = [Link("edge/0", 1, len(contents), b"\x03" * 32)]
    by_columns = BatchEncoder()
    by_columns.add_columns(builder.columns(records[:2], INGESTED_MS))
    by_columns.add_columns(builder.columns(records[2:], INGESTED_MS))
    by_rows = BatchEncoder()
    by_rows.add(contents[:2])
    by_rows.add(contents[2:])
    assert by_columns.finish(hashes, links) == by_rows.finish(hashes, links)
    with pytest.raises(ValueError, match="columns given"):
        BatchEncoder().add_columns(builder.columns(records, INGESTED_MS)[:-1])


def test_hash_array_is_the_hashes_converted_one_by_one() -> None:
    hashes = [bytes([i]) * 32 for i in range(256)] + [b"\x00" * 31 + b"\xff"]
    assert hash_array(hashes).equals(pa.array(hashes, pa.binary(32)))
    assert hash_array([]).equals(pa.array([], pa.binary(32)))
    with pytest.raises(ValueError, match=r"not \[31, 33\]"):
        hash_array([b"a" * 31, b"b" * 33])  # 64 bytes joined: the length alone would pass
    with pytest.raises(ValueError, match="not"):
        hash_array([b"a" * 32, b"b" * 64])


def test_finish_refuses_hashes_that_do_not_match_the_rows(policy: Policy) -> None:
    contents = RowBuilder(policy).contents(edge_records(policy), INGESTED_MS)
    encoder = BatchEncoder()
    encoder.add(contents)
    hashes = [row_hash(orjson.dumps(content)) for content in contents[:-1]]
    with pytest.raises(ValueError, match="row hashes"):
        encoder.finish(hashes, [Link("edge/0", 1, len(hashes), GENESIS)])
    with pytest.raises(ValueError, match="in links"):
        encoder.finish(hashes + hashes[:1], [Link("edge/0", 1, len(hashes), GENESIS)])


@pytest.mark.integration
@pytest.mark.parametrize("chunk_rows", [16_384, 1])
def test_edge_cases_round_trip_through_clickhouse_exactly(
    store_factory: Any, policy: Policy, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nulls, empty strings, escapes, emoji, 1970 and pre-2001 times, the largest UInt64: as sent,
    whether a batch is one record batch per link or one per row."""
    monkeypatch.setattr(clickhouse, "CHUNK_ROWS", chunk_rows)
    store = store_factory()
    records = edge_records(policy)
    batch = store.prepare(records, INGESTED_MS)
    links = len({record.partition for record in records})
    expected_batches = links if chunk_rows > len(records) else len(records)
    assert len(decode_batch(batch.payload).to_batches()) == expected_batches
    store.insert(batch)
    _, parts = store.query(
        "SELECT count() FROM system.parts WHERE active AND database = {db:String} AND table = 'audit_events'",
        {"db": store.database},
    )
    assert parts == [(1,)]  # ClickHouse squashed the record batches: the batch is one part

    builder = RowBuilder(policy)
    expected = {str(r.event.event_id): builder.content(r, INGESTED_MS) for r in records}
    stored = list(store.stream(f"SELECT * FROM {store.table} ORDER BY source_offset"))
    assert len(stored) == len(records)
    for row in stored:
        content = content_from_stored(row)
        assert content == tuple(
            list(value) if isinstance(value, tuple) else value for value in expected[str(row["event_id"])]
        )
        assert row_hash(orjson.dumps(content)) == row["row_hash"]
    assert verify_store(store).ok


@pytest.mark.integration
def test_payload_is_what_the_insert_format_reads(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    batch = store.prepare(edge_records(policy), INGESTED_MS)
    store.client.raw_insert(store.table, list(ALL_COLUMNS), batch.payload, fmt=INSERT_FORMAT)
    assert store.count() == 4
