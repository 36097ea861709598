"""schemas/sql/roles.sql: it parses, and the writer may add the columns of the migration and no more."""

from __future__ import annotations

import re
from typing import Any

import pytest

from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import CONTENT_COLUMNS_V1, CONTENT_COLUMNS_V2
from flowaudit.sinks.clickhouse import split_statements

ROLES = split_statements((SCHEMA_DIR / "sql" / "roles.sql").read_text())


def _writer_grants() -> list[str]:
    return [" ".join(s.split()) for s in ROLES if s.startswith("GRANT") and s.endswith("TO flowaudit_writer")]


def test_the_writer_may_add_exactly_the_migrations_columns() -> None:
    grants = _writer_grants()
    alter = [grant for grant in grants if "ALTER" in grant]
    assert len(alter) == 1 and alter[0].startswith("GRANT ALTER ADD COLUMN(")
    granted = re.search(r"ADD COLUMN\(([^)]*)\)", alter[0])
    assert granted is not None
    added = [name for name in CONTENT_COLUMNS_V2 if name not in CONTENT_COLUMNS_V1]
    assert [name.strip() for name in granted[1].split(",")] == added
    assert not any(
        word in grant for grant in grants for word in ("UPDATE", "DELETE", "DROP", "MODIFY", "ALL")
    )


@pytest.mark.integration
def test_every_statement_parses(store_factory: Any) -> None:
    """ClickHouse's own parser (chDB has no access control to run them in)."""
    store = store_factory()
    for statement in ROLES:
        text = statement.replace("${FLOWAUDIT_WRITER_PASSWORD}", "w").replace(
            "${FLOWAUDIT_READER_PASSWORD}", "r"
        )
        assert store.query(f"EXPLAIN AST {text}")[1], statement


def test_the_merkle_tables_are_appended_and_read_never_altered() -> None:
    """Every table of schemas/sql/merkle.sql: INSERT and SELECT for the writer, SELECT for the reader."""
    created = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", (SCHEMA_DIR / "sql" / "merkle.sql").read_text())
    assert created == ["audit_merkle_nodes", "audit_merkle_checkpoints"]
    grants = [" ".join(s.split()) for s in ROLES if s.startswith("GRANT")]
    for table in created:
        assert [g for g in grants if f".{table} " in g] == [
            f"GRANT INSERT, SELECT ON flowaudit.{table} TO flowaudit_writer",
            f"GRANT SELECT ON flowaudit.{table} TO flowaudit_reader",
        ]
