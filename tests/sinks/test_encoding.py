"""The Arrow batch sent to ClickHouse: exact values, chain columns, and a round trip through chDB."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sinks import encoding
from sinks.audit import ALL_COLUMNS, CONTENT_COLUMNS, AuditRecord, RowBuilder, content_from_stored, row_hash
from sinks.clickhouse import INSERT_FORMAT
from sinks.encoding import ARROW_TYPES, ROW_SCHEMA, Link, decode_batch, encode_batch
from sinks.verify import verify_store
from streams.decision import Decider
from streams.events import event_from_mapping
from streams.policy import Policy
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


@pytest.mark.integration
@pytest.mark.parametrize("chunk_rows", [16_384, 3])
def test_edge_cases_round_trip_through_clickhouse_exactly(
    store_factory: Any, policy: Policy, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nulls, empty strings, escapes, emoji, 1970 and pre-2001 times, the largest UInt64: as sent."""
    monkeypatch.setattr(encoding, "CHUNK_ROWS", chunk_rows)
    store = store_factory()
    records = edge_records(policy)
    batch = store.prepare(records, INGESTED_MS)
    store.insert(batch)

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
