"""Rows, hashes and links without a database."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import (
    ALL_COLUMNS,
    CONTENT_COLUMNS,
    CONTENT_COLUMNS_BY_FORMAT,
    CONTENT_COLUMNS_V1,
    CONTENT_COLUMNS_V2,
    GENESIS,
    ROW_FORMAT,
    TIMESTAMP_COLUMNS,
    AuditRecord,
    RowBuilder,
    UnknownRowFormat,
    content_bytes,
    content_from_stored,
    contents_from_stored,
    link_hash,
    millis_of,
    row_hash,
    row_hashes,
)
from flowaudit.sinks.clickhouse import split_statements
from tests.conftest import DATA_DIR


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


def _declared(create: str) -> dict[str, str]:
    """column -> its definition, from a CREATE TABLE statement."""
    body = create.split("(", 1)[1]
    return {
        line.split()[0]: " ".join(line.split()[1:]).rstrip(",")
        for line in body.splitlines()
        if line.strip() and line.startswith("    ") and "INDEX" not in line
    }


def test_ddl_declares_exactly_the_row_columns() -> None:
    create, *alters = split_statements((SCHEMA_DIR / "sql" / "audit.sql").read_text())
    declared = _declared(create)
    assert tuple(declared) == ALL_COLUMNS
    # the migration adds exactly the columns format 1 lacks, defined as in the CREATE, in its places
    [alter] = alters
    added = [line.strip().rstrip(",") for line in alter.splitlines()[1:]]
    new_columns = [name for name in CONTENT_COLUMNS_V2 if name not in CONTENT_COLUMNS_V1]
    previous = ["ingested_at", *new_columns[:-1]]
    assert added == [
        f"ADD COLUMN IF NOT EXISTS {name} {declared[name]} AFTER {after}"
        for name, after in zip(new_columns, previous, strict=True)
    ]


def test_format_1_columns_are_those_the_code_before_format_2_wrote() -> None:
    """The frozen list of format 1 is the old DDL's content columns (a copy of it in tests/data)."""
    [old_create] = split_statements((DATA_DIR / "legacy" / "audit.v1.sql").read_text())
    old_columns = tuple(_declared(old_create))
    assert old_columns[: len(CONTENT_COLUMNS_V1)] == CONTENT_COLUMNS_V1
    assert CONTENT_COLUMNS_V2[: len(CONTENT_COLUMNS_V1)] == CONTENT_COLUMNS_V1  # format 2 appends
    assert CONTENT_COLUMNS == CONTENT_COLUMNS_BY_FORMAT[ROW_FORMAT] == CONTENT_COLUMNS_V2


def test_row_content_derives_zone_special_and_undeclared(policy: Policy) -> None:
    builder = RowBuilder(policy)
    for record in _records(policy, 300):
        row = dict(zip(CONTENT_COLUMNS, builder.content(record, 1), strict=True))
        event, decision = record.event, record.decision
        assert row["outside_protected_zone"] == (decision.transfer_mechanism is not None)
        assert row["special_category"] == bool({"health", "unclassified"} & set(decision.data_categories))
        declared = (
            policy.purposes[event.purpose].data_categories if event.purpose in policy.purposes else set()
        )
        assert list(row["undeclared_categories"]) == [
            c for c in decision.data_categories if c not in declared
        ]
        assert row["counterparty"] == event.counterparty
        assert row["row_format"] == 2


def test_row_content_carries_the_contract_v2_decision_and_subjects(policy: Policy) -> None:
    """The zone follows the decision (dated in v2), not today's zone: GB before 2021 was inside it."""
    record = next(r for r in _records(policy, 300) if r.event.event_type == "subcontractor_transfer")
    event = dataclasses.replace(record.event, destination_country="GB", subjects=("u-1", "u-2"), user_id=None)
    builder = RowBuilder(policy)
    for mechanism, outside in ((None, False), ("adequacy", True), ("none", True)):
        decision = record.decision._replace(
            special_category_condition="explicit_consent",
            transfer_mechanism=mechanism,
            flags=("consent-unverified", "undeclared-category"),
            counterparty="HeartBeat Health",
        )
        row = dict(
            zip(
                CONTENT_COLUMNS,
                builder.content(record._replace(event=event, decision=decision), 1),
                strict=True,
            )
        )
        assert row["outside_protected_zone"] is outside and row["transfer_mechanism"] == mechanism
        assert row["special_category_condition"] == "explicit_consent"
        assert list(row["flags"]) == ["consent-unverified", "undeclared-category"]
        assert row["counterparty_name"] == "HeartBeat Health" and row["counterparty"] == event.subcontractor
        assert list(row["subjects"]) == ["u-1", "u-2"]
    unattributed = record._replace(event=dataclasses.replace(record.event, subjects=None))
    assert dict(zip(CONTENT_COLUMNS, builder.content(unattributed, 1), strict=True))["subjects"] == ()


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
    assert data.startswith(b'["') and b",1700000000123,2," in data  # ingested_at (epoch millis), format
    assert json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode() == data


def test_batch_contents_and_hashes_agree_with_the_single_row_definitions(policy: Policy) -> None:
    builder = RowBuilder(policy)
    records = _records(policy, 300)
    contents = builder.contents(records, 7)
    assert contents == [RowBuilder(policy).content(record, 7) for record in records]
    assert row_hashes(contents) == [row_hash(content_bytes(content)) for content in contents]
    assert len(set(row_hashes(contents))) == len(records)


def _as_stored(content: tuple[Any, ...], columns: tuple[str, ...], names: list[str]) -> tuple[Any, ...]:
    """A content as a query returns it: in `names` order, timestamps as datetimes (some as epoch
    milliseconds, as a query with toUnixTimestamp64Milli gives), the event id a UUID, arrays tuples."""
    values = dict(zip(columns, content, strict=True))
    stored: list[Any] = []
    for number, name in enumerate(names):
        value = values.get(name, 0)  # a column a format 1 row lacks reads as its default
        if name in TIMESTAMP_COLUMNS and number % 2:
            value = datetime.fromtimestamp(value / 1000, UTC)
        elif name == "event_id":
            value = uuid.UUID(value)
        elif isinstance(value, list):
            value = tuple(value)
        stored.append(value)
    return tuple(stored)


def test_contents_of_many_stored_rows_are_each_rows_content(policy: Policy) -> None:
    """`contents_from_stored` gives, for rows of either format, what `content_from_stored` gives
    for each (as lists), and hashes to the row hash the writer computed."""
    names = [*reversed(CONTENT_COLUMNS), "chain_id", "link_index"]  # any column order
    builder = RowBuilder(policy)
    written = builder.contents(_records(policy, 40), 1_700_000_000_123)
    v1 = [(c[: len(CONTENT_COLUMNS_V1)], CONTENT_COLUMNS_V1) for c in written[:15]]
    v2 = [(c, CONTENT_COLUMNS_V2) for c in written[15:]]
    rows = []
    for content, columns in v1 + v2:
        stored = _as_stored(content, columns, names)
        if columns is CONTENT_COLUMNS_V1:  # a format 1 row of a migrated store: row_format 1
            stored = _with_format(names, stored, 1)
        rows.append(stored)
    contents = contents_from_stored(names, rows)
    singles = [list(content_from_stored(dict(zip(names, row, strict=True)))) for row in rows]
    assert contents == singles
    assert [row_hash(content_bytes(c)) for c in contents] == row_hashes([c for c, _ in v1 + v2])
    no_format = [n for n in names if n != "row_format"]  # a store of format 1 rows only
    old = [_as_stored(c, columns, no_format) for c, columns in v1]
    assert contents_from_stored(no_format, old) == contents[:15]
    with pytest.raises(UnknownRowFormat, match="unknown row format 9"):
        contents_from_stored(names, [_with_format(names, rows[20], 9)])


def _with_format(names: list[str], row: tuple[Any, ...], row_format: int) -> tuple[Any, ...]:
    return tuple(row_format if name == "row_format" else v for name, v in zip(names, row, strict=True))


def test_columns_are_the_single_row_contents_column_by_column(policy: Policy) -> None:
    """The writer builds columns (`RowBuilder.columns`); each must hold exactly what the row-by-row
    definition puts in its place, objects of the same types (the row hash is over their JSON)."""
    builder = RowBuilder(policy)
    records = _records(policy, 500)
    records += [r._replace(topic="u", partition=3, offset=r.offset + 10**12) for r in records[:50]]
    columns = builder.columns(records, 1_762_300_000_123)
    expected = [builder.content(record, 1_762_300_000_123) for record in records]
    assert len(columns) == len(CONTENT_COLUMNS)
    for index, name in enumerate(CONTENT_COLUMNS):
        assert columns[index] == [row[index] for row in expected], name
        assert [type(v) for v in columns[index]] == [type(row[index]) for row in expected], name
    assert [content_bytes(row) for row in zip(*columns, strict=True)] == list(map(content_bytes, expected))
    assert builder.columns([], 1) == [[] for _ in CONTENT_COLUMNS]
    assert builder.contents([], 1) == []
