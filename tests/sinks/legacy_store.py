"""A store as the code before row format 2 wrote it, for the migration tests.

The table is created from a copy of the DDL of that code (tests/data/legacy/audit.v1.sql), and rows
are written as that code wrote them: the content tuple in `CONTENT_COLUMNS_V1` (the frozen format 1
list), `outside_protected_zone` from the undated zone (`destination_country` not in the policy's
protected countries), `counterparty` as sent, each chain's batches linked with the chain key.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import (
    ALL_COLUMNS_V1,
    CONTENT_COLUMNS_V1,
    GENESIS,
    TIMESTAMP_COLUMNS,
    AuditRecord,
    ChainHead,
    RowBuilder,
    link_hash,
    row_hashes,
)
from flowaudit.sinks.clickhouse import qualify, split_statements
from tests.conftest import DATA_DIR

LEGACY_DDL = DATA_DIR / "legacy" / "audit.v1.sql"
_OUTSIDE = CONTENT_COLUMNS_V1.index("outside_protected_zone")
_TIMESTAMPS = [CONTENT_COLUMNS_V1.index(name) for name in TIMESTAMP_COLUMNS]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def create_legacy_table(client: Any, table: str) -> None:
    """Replace `table` by an empty table of the format 1 DDL (and no per-subject index: the code
    before row format 2 had none)."""
    client.command(f"DROP VIEW IF EXISTS {qualify('audit_subjects_mv', table)}")
    client.command(f"DROP TABLE IF EXISTS {qualify('audit_subjects', table)}")
    client.command(f"DROP TABLE IF EXISTS {table}")
    for statement in split_statements(LEGACY_DDL.read_text()):
        client.command(qualify(statement, table))


def legacy_contents(
    policy: Policy, records: Sequence[AuditRecord], ingested_at_ms: int
) -> list[tuple[Any, ...]]:
    """The format 1 content tuples of `records`, as the code before row format 2 built them."""
    zone = policy.protected_countries
    out = []
    for record, content in zip(records, RowBuilder(policy).contents(records, ingested_at_ms), strict=True):
        values = list(content[: len(CONTENT_COLUMNS_V1)])
        values[_OUTSIDE] = record.event.destination_country not in zone
        out.append(tuple(values))
    return out


def legacy_write(
    client: Any,
    table: str,
    policy: Policy,
    key: bytes,
    records: Sequence[AuditRecord],
    heads: dict[str, ChainHead],
    ingested_at_ms: int = 1_762_000_000_000,
) -> None:
    """Insert `records` as one link per chain (in the order given), advancing `heads`."""
    by_chain: dict[str, list[AuditRecord]] = {}
    for record in records:
        by_chain.setdefault(record.chain_id, []).append(record)
    rows: list[list[Any]] = []
    for chain, chain_records in by_chain.items():
        head = heads.get(chain, ChainHead())
        contents = legacy_contents(policy, chain_records, ingested_at_ms)
        hashes = row_hashes(contents)
        seq = head.seq + 1
        link = link_hash(key, chain, seq, head.link_hash if head.seq else GENESIS, hashes)
        for index, (content, digest) in enumerate(zip(contents, hashes, strict=True)):
            values = list(content)
            values[0] = uuid.UUID(values[0])
            for position in _TIMESTAMPS:
                values[position] = _EPOCH + timedelta(milliseconds=values[position])
            rows.append([*values, chain, seq, len(contents), index, link, digest])
        heads[chain] = ChainHead(seq, link, max(head.last_offset, chain_records[-1].offset))
    client.insert(table, rows, column_names=list(ALL_COLUMNS_V1))
