"""What the audit store is checked for before a worker writes to it, so misconfiguration is loud.

Each check raises `StartupError` (a `StoreError`) with one line that says what is wrong and what to do:
- `check_table`: the table exists, keeps its rows (a MergeTree engine: an `ENGINE = Null` table
  accepts every insert and stores nothing) and has every column the writer sends (a reader: every
  column of the oldest row format it can read); it returns the columns the table has;
- `check_chain_key`: the last link of every chain verifies with the configured key. A changed key
  would otherwise be accepted silently, and every later `flowaudit verify` would report tampering.

Reads only: a few rows of system tables, and the row hashes of each chain's last link.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowaudit.sinks.audit import GENESIS, ChainHead, link_hash


class StartupError(Exception):
    """The store cannot be written safely; the message says why and what to do."""


def _database_and_name(table: str) -> tuple[str | None, str]:
    database, dot, name = table.rpartition(".")
    return (database if dot else None), name


def check_table(client: Any, table: str, columns: Sequence[str]) -> frozenset[str]:
    """The table exists with a MergeTree-family engine and all `columns`; returns every column it
    has. Raises StartupError."""
    database, name = _database_and_name(table)
    where = "database = {db:String}" if database else "database = currentDatabase()"
    parameters = {"db": database, "name": name} if database else {"name": name}
    found = client.query(
        f"SELECT engine FROM system.tables WHERE {where} AND name = {{name:String}}", parameters=parameters
    ).result_rows
    if not found:
        raise StartupError(f"there is no table {table} in the audit store")
    engine = str(found[0][0])
    if not engine.endswith("MergeTree"):
        raise StartupError(
            f"table {table} has ENGINE = {engine}: it would not keep audit rows; "
            "recreate it from schemas/sql/audit.sql (a MergeTree table)"
        )
    present = frozenset(
        str(row[0])
        for row in client.query(
            f"SELECT name FROM system.columns WHERE {where} AND table = {{name:String}}",
            parameters=parameters,
        ).result_rows
    )
    missing = [column for column in columns if column not in present]
    if missing:
        raise StartupError(
            f"table {table} lacks the columns {', '.join(missing)} (see schemas/sql/audit.sql)"
        )
    return present


def check_chain_key(client: Any, table: str, key: bytes, heads: Mapping[str, ChainHead]) -> None:
    """Recompute the last link of every chain with `key`; StartupError naming the first that fails."""
    if not heads:
        return
    wanted = [(chain, head.seq) for chain, head in heads.items()]
    previous = [(chain, head.seq - 1) for chain, head in heads.items() if head.seq > 1]
    links = client.query(
        f"SELECT chain_id, chain_seq, any(link_hash), "
        f"arraySort((h, i) -> i, groupArray(row_hash), groupArray(link_index)) "
        f"FROM {table} WHERE (chain_id, chain_seq) IN {{links:Array(Tuple(String, UInt64))}} "
        f"GROUP BY chain_id, chain_seq",
        parameters={"links": wanted + previous},
    ).result_rows
    stored = {
        (str(chain), int(seq)): (bytes(link), [bytes(h) for h in hashes])
        for chain, seq, link, hashes in links
    }
    for chain, head in sorted(heads.items()):
        link, row_hashes = stored[(chain, head.seq)]
        before = stored[(chain, head.seq - 1)][0] if head.seq > 1 else GENESIS
        if link_hash(key, chain, head.seq, before, row_hashes) != link:
            raise StartupError(
                f"the chain key is not the one chain {chain} was written with (its last link, "
                f"{head.seq}, does not verify): set FLOWAUDIT_CHAIN_KEY, or keep <data dir>/chain.key, "
                "as when the store was written; if the key is right, run `flowaudit verify`"
            )


def table_exists(client: Any, table: str) -> bool:
    """Whether the table or view `table` (possibly database-qualified) exists."""
    database, name = _database_and_name(table)
    where = "database = {db:String}" if database else "database = currentDatabase()"
    parameters = {"db": database, "name": name} if database else {"name": name}
    found = client.query(
        f"SELECT count() FROM system.tables WHERE {where} AND name = {{name:String}}", parameters=parameters
    ).result_rows
    return bool(found and int(found[0][0]))
