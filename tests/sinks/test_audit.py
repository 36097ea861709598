"""Rows, hashes and links without a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import (
    ALL_COLUMNS,
    CONTENT_COLUMNS,
    GENESIS,
    AuditRecord,
    RowBuilder,
    content_bytes,
    link_hash,
    millis_of,
    row_hash,
    row_hashes,
)
from flowaudit.sinks.clickhouse import split_statements


def _records(policy: Policy, count: int) -> list[AuditRecord]:
    decider = Decider(policy)
    out = []
    for offset, raw in enumerate(EventGenerator(policy, seed=9).events(count)):
        event = event_from_mapping(raw, policy)
        out.append(AuditRecord(event, decider.decide(event), "t", 0, offset, 1_700_000_000_000))
    return out


def test_timestamps_round_trip_exactly() -> None:
    for millis in (0, 1, 999, 1_735_689_600_123, 4_102_444_799_999):
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC).replace(tzinfo=None)
        moment = moment.replace(microsecond=(millis % 1000) * 1000)
        assert millis_of(moment) == millis
        assert millis_of(moment.replace(tzinfo=UTC)) == millis


def test_ddl_declares_exactly_the_row_columns() -> None:
    ddl = (SCHEMA_DIR / "sql" / "audit.sql").read_text()
    statements = split_statements(ddl)
    assert len(statements) == 1
    body = statements[0].split("(", 1)[1]
    declared = [
        line.split()[0]
        for line in body.splitlines()
        if line.strip() and line.startswith("    ") and "INDEX" not in line
    ]
    assert tuple(declared) == ALL_COLUMNS


def test_row_content_derives_zone_special_and_undeclared(policy: Policy) -> None:
    builder = RowBuilder(policy)
    for record in _records(policy, 300):
        row = dict(zip(CONTENT_COLUMNS, builder.content(record, 1), strict=True))
        event, decision = record.event, record.decision
        assert row["outside_protected_zone"] == (event.destination_country not in policy.protected_countries)
        assert row["special_category"] == bool({"health", "unclassified"} & set(decision.data_categories))
        declared = (
            policy.purposes[event.purpose].data_categories if event.purpose in policy.purposes else set()
        )
        assert list(row["undeclared_categories"]) == [
            c for c in decision.data_categories if c not in declared
        ]
        assert row["counterparty"] == event.counterparty


def test_link_hash_depends_on_key_order_and_previous() -> None:
    hashes = [b"a" * 32, b"b" * 32]
    base = link_hash(b"k", "c/0", 1, GENESIS, hashes)
    assert len(base) == 32
    assert base == link_hash(b"k", "c/0", 1, GENESIS, list(hashes))
    assert base != link_hash(b"other", "c/0", 1, GENESIS, hashes)
    assert base != link_hash(b"k", "c/0", 1, GENESIS, hashes[::-1])
    assert base != link_hash(b"k", "c/0", 1, b"1" * 32, hashes)
    assert base != link_hash(b"k", "c/0", 2, GENESIS, hashes)
    assert base != link_hash(b"k", "c/1", 1, GENESIS, hashes)
    assert base != link_hash(b"k", "c/0", 1, GENESIS, hashes[:1])


def test_content_bytes_are_compact_json(policy: Policy) -> None:
    record = _records(policy, 1)[0]
    data = content_bytes(RowBuilder(policy).content(record, 1_700_000_000_123))
    assert data.startswith(b'["') and data.endswith(b",1700000000123]")  # ingested_at: epoch millis
    assert json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode() == data


def test_batch_contents_and_hashes_agree_with_the_single_row_definitions(policy: Policy) -> None:
    builder = RowBuilder(policy)
    records = _records(policy, 300)
    contents = builder.contents(records, 7)
    assert contents == [RowBuilder(policy).content(record, 7) for record in records]
    assert row_hashes(contents) == [row_hash(content_bytes(content)) for content in contents]
    assert len(set(row_hashes(contents))) == len(records)
