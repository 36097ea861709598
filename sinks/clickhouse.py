"""The audit store in ClickHouse, through clickhouse-connect.

`chdb:///path` opens the embedded engine (chDB, in-process, one process per path); `http(s)://…`
reaches a ClickHouse server. The same DDL, inserts and queries serve both.

Writing is split in two steps so the caller can overlap them: `prepare` (rows, hashes, chain links,
deduplication token) and `insert` (one INSERT of the whole batch). Chain heads advance only after an
insert returns, so a failed insert is retried with the very same prepared batch, and its
deduplication token lets ClickHouse drop a retry of an insert that had in fact succeeded.
Records whose event id the store already holds are not written again (`sinks.identity`: known by
event id, never by offset alone); `prepare` asks the store only about records that may be known.

The store's other tables, created at start-up with it: the consent rows and withdrawal notices
(schemas/sql/consent.sql, `write_consents`: see sinks/consents.py) and the per-subject index of
bulk transfers (schemas/sql/subjects.sql, `apply_subjects_index`). None of them is chained.

Not thread-safe: the worker calls it from a single executor thread.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import clickhouse_connect

from flowaudit.common.redact import mask_url
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import (
    ALL_COLUMNS,
    ALL_COLUMNS_V1,
    CONTENT_COLUMNS,
    GENESIS,
    ROW_FORMAT,
    AuditRecord,
    ChainHead,
    RowBuilder,
    chain_id_for,
    link_hash,
    row_hashes,
)
from flowaudit.sinks.consents import (
    CONSENT_COLUMNS,
    CONSENT_TABLE,
    NOTICES_SQL,
    ConsentAuditRecord,
    ConsentBatch,
    build_consent_batches,
    notice_parameters,
)
from flowaudit.sinks.ddl import split_statements
from flowaudit.sinks.encoding import CHUNK_ROWS, BatchEncoder, Link
from flowaudit.sinks.identity import LOOKUP_CHUNK, RecentEventIds, split_known
from flowaudit.sinks.startup import StartupError, check_chain_key, check_table, table_exists

if TYPE_CHECKING:  # sinks.merkle_log imports this module (split_statements); at run time: connect()
    from flowaudit.domain.checkpoint import NoteSigner
    from flowaudit.sinks.merkle_log import LogUpdate, MerkleLog

log = logging.getLogger(__name__)

TABLE = "audit_events"
# every table and view of the store: SQL names them unqualified, `qualify` points them at a database
_STORE_TABLES = re.compile(
    r"\b(audit_events|audit_subjects_mv|audit_subjects|consent_events|consent_withdrawal_notices"
    r"|audit_merkle_nodes|audit_merkle_checkpoints)\b"
)
DDL_FILE = SCHEMA_DIR / "sql" / "audit.sql"
CONSENT_DDL_FILE = SCHEMA_DIR / "sql" / "consent.sql"
SUBJECTS_DDL_FILE = SCHEMA_DIR / "sql" / "subjects.sql"
SUBJECTS_VIEW = "audit_subjects_mv"

_DECISION = CONTENT_COLUMNS.index("decision")
_EVENT_ID_OF_RECORD = operator.attrgetter("event.event_id")
INSERT_FORMAT = "ArrowStream"  # see sinks/encoding.py
_INSERT_SETTINGS = {"insert_deduplicate": 1}


class StoreError(Exception):
    """The store could not be reached or refused an operation (retryable for inserts)."""


@dataclass
class PreparedBatch:
    """A batch ready to insert: identical bytes and token on every retry."""

    payload: bytes
    token: str
    rows: int
    skipped: int
    heads: dict[str, ChainHead] = field(default_factory=dict)  # chain heads once this batch is durable
    rows_by_decision: dict[str, int] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)  # of the rows to write
    # (topic, partition, offset) of the records not written: the store already holds their event id
    skipped_at: set[tuple[str, int, int]] = field(default_factory=set)
    # the Merkle log's share (sinks/merkle_log.py): per chain, the link's nodes and signed checkpoint
    log_updates: dict[str, LogUpdate] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.rows == 0


def load_chain_key(explicit: str | None, data_dir: Path, *, create: bool = True) -> bytes:
    """The HMAC key of the chain: FLOWAUDIT_CHAIN_KEY, else a key kept in the data directory, created
    there once when `create` (the worker); a reader that finds none raises StoreError."""
    if explicit:
        return explicit.encode()
    path = data_dir / "chain.key"
    if not path.exists():
        if not create:
            raise StoreError(
                f"no chain key: set FLOWAUDIT_CHAIN_KEY, or point FLOWAUDIT_DATA_DIR at the "
                f"store's data directory (there is no {path})"
            )
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        log.warning(
            "created a new audit chain key in %s; keep it with the store (or set FLOWAUDIT_CHAIN_KEY)", path
        )
    return path.read_text().strip().encode()


def qualify(sql: str, table: str) -> str:
    """Point SQL written against `audit_events` at the store's (possibly database-qualified) table,
    and the store's other tables (consent_events, audit_subjects, ...) at the same database."""
    if table == TABLE:
        return sql
    database, dot, _ = table.rpartition(".")
    prefix = f"{database}." if dot else ""
    return _STORE_TABLES.sub(lambda match: table if match[1] == TABLE else prefix + match[1], sql)


def retry_store(
    operation: Callable[[], None],
    what: str,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    max_backoff: float = 30.0,
    on_retry: Callable[[int, Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run `operation` until it succeeds, with bounded exponential back-off on StoreError; re-raise
    only when `should_stop()` (shutdown). A store that is down is waited for, never given up on."""
    delay = 0.1
    attempt = 0
    while True:
        try:
            operation()
            return
        except StoreError as exc:
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, exc)
            if should_stop():
                raise
            log.warning("%s failed (attempt %d), retrying in %.1f s: %s", what, attempt, delay, exc)
            sleep(delay)
            delay = min(delay * 2, max_backoff)


class AuditStore:
    def __init__(
        self,
        url: str,
        policy: Policy,
        chain_key: bytes,
        *,
        database: str | None = None,
        log_signer: NoteSigner | None = None,
    ) -> None:
        """`log_signer`: the Merkle log's key (sinks/merkle_log.py); a writer given one keeps the
        chains' Merkle logs and signs a checkpoint per link, a writer without one (tools, old tests)
        only the HMAC chain. A reader never signs."""
        self.url = url
        self.log_signer = log_signer
        self.log: MerkleLog | None = None
        self.policy = policy
        self.key = chain_key
        self.database = database
        self.table = f"{database}.{TABLE}" if database else TABLE
        self.rows = RowBuilder(policy)
        self.heads: dict[str, ChainHead] = {}
        self.released: set[str] = set()  # chains whose partitions another writer owns now
        self.recent = RecentEventIds()
        self.columns: frozenset[str] = frozenset()  # the table's columns, read at connect
        self._client: Any = None

    # --- connection -----------------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    def connect(self, *, writer: bool = True, heads: bool = True) -> None:
        """Open the client and check the table (`sinks.startup`). Raises StoreError.

        A writer (the worker) creates the store if need be (the DDL is idempotent), adds the
        columns of the current row format to a store created before it, loads the chain heads and
        the window of recent event ids, and checks that the chain key is the one the chains were
        written with. A reader (`flowaudit report|verify`) creates nothing: a store that does not
        exist (a mistyped data directory, say) is an error, not an empty store; a store that no
        writer of this version has opened yet is read as it is (`missing_columns` names what it
        lacks: verify reads it, reports need those columns). A reader that does not need the chain
        heads (`heads=False`: a receipt) does not read them: an aggregation over the whole table,
        0.8-1.1 s of a 10 M-row store's 1.5-2 s opening (bench/receipt.py's store, load ~9).
        """
        try:
            if self.embedded:
                path = Path(self.url.split("://", 1)[1])
                if not writer and not path.exists():
                    raise StartupError(f"there is no audit store at {path}")
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(dsn=self.url)
            if writer:
                self.apply_ddl()
            self.columns = check_table(self.client, self.table, ALL_COLUMNS if writer else ALL_COLUMNS_V1)
            self.heads = self.load_heads() if writer or heads else {}
            if writer:
                check_chain_key(self.client, self.table, self.key, self.heads)
                self.recent.add(self._newest_event_ids(2 * self.recent.generation))
                self._open_log()
        except (StoreError, StartupError) as exc:
            self.close()
            raise StoreError(f"audit store {self.masked_url}: {exc}") from None
        except Exception as exc:
            self.close()
            raise StoreError(f"cannot open the audit store {self.masked_url}: {exc}") from exc

    def _open_log(self) -> None:
        """Create the Merkle tables and load (or rebuild: a crash, a migration) every chain's log."""
        if self.log_signer is None:
            return
        from flowaudit.sinks.merkle_log import MerkleLog
        from flowaudit.sinks.merkle_store import MerkleStore, MerkleStoreError

        merkle = MerkleStore(self.client, self.database)
        try:
            merkle.apply_ddl()
            self.log = MerkleLog(merkle, self.log_signer)
            # every chain is repaired at start-up only in an embedded store, which has one writer
            # (chDB: one process per store); on a server another worker may be writing a chain,
            # and a chain is repaired when it is taken (`_take_logs`). Two workers repairing the
            # same link gave it two checkpoints (seen in the killed-worker test, 2 runs in 5).
            self.log.load(self.heads, self.key, self.table, self._head_now, recover=self.embedded)
        except MerkleStoreError as exc:
            raise StoreError(f"the Merkle log: {exc}") from None

    def _head_now(self, chain: str) -> ChainHead | None:
        """The chain's last durable link as the store holds it now."""
        return self.load_heads([chain]).get(chain)

    def latest_checkpoints(self, chains: Sequence[str]) -> list[str]:
        """The latest durable signed checkpoint of each of `chains` (none without a Merkle log)."""
        return self.log.latest_notes(chains) if self.log is not None else []

    @property
    def masked_url(self) -> str:
        return mask_url(self.url) or ""

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError("the audit store is not connected")
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing is best effort
                log.debug("closing the ClickHouse client failed", exc_info=True)

    @property
    def missing_columns(self) -> tuple[str, ...]:
        """The columns of the current row format that the table lacks (none once a writer of this
        version has opened it)."""
        return tuple(column for column in ALL_COLUMNS if column not in self.columns)

    def apply_ddl(self) -> None:
        """Create the tables if need be (audit, consents, the per-subject index); add the current
        row format's columns to the audit table if it lacks any.

        The ALTER statements of the DDL run only when a column is missing, so a store that has them
        needs no ALTER privilege (schemas/sql/roles.sql grants ALTER ADD COLUMN for the migration).
        Raises StartupError when the columns cannot be added."""
        if self.database:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        statements = [qualify(s, self.table) for s in split_statements(DDL_FILE.read_text())]
        alters = [s for s in statements if s.lstrip().upper().startswith("ALTER")]
        for statement in statements:
            if statement not in alters:
                self.client.command(statement)
        for statement in split_statements(CONSENT_DDL_FILE.read_text()):
            self.client.command(qualify(statement, self.table))
        missing = [c for c in ALL_COLUMNS if c not in check_table(self.client, self.table, ())]
        if missing and alters:
            self._migrate(alters, missing)
            missing = [c for c in ALL_COLUMNS if c not in check_table(self.client, self.table, ())]
        if not missing:  # else check_table names what the table lacks (the view needs those columns)
            self.apply_subjects_index()

    def _migrate(self, alters: list[str], missing: list[str]) -> None:
        """Add the columns of the current row format to a table created before it."""
        log.warning(
            "audit table %s predates row format %d: adding the columns %s (older rows keep their format)",
            self.table,
            ROW_FORMAT,
            ", ".join(missing),
        )
        try:
            for statement in alters:
                self.client.command(statement)
        except Exception as exc:
            raise StartupError(
                f"cannot add the columns {', '.join(missing)} to {self.table} ({exc}); the writer needs "
                "ALTER ADD COLUMN on the table (schemas/sql/roles.sql)"
            ) from exc

    def apply_subjects_index(self) -> None:
        """Create the per-subject index of bulk transfers (schemas/sql/subjects.sql) if need be.

        The view only sees rows inserted after it exists, so the rows already in the store are
        copied into the index here, once: when this start-up finds no view. The copy runs before the
        view is created and again after it (rows another writer inserted in between), each time
        only for event ids the index does not hold, so a start-up that crashed before creating the
        view copies nothing twice. A store whose view exists is not read at all."""
        if table_exists(self.client, qualify(SUBJECTS_VIEW, self.table)):
            return
        statements = split_statements(SUBJECTS_DDL_FILE.read_text())
        table_ddl, view_ddl = (qualify(statement, self.table) for statement in statements)
        self.client.command(table_ddl)
        select = view_ddl.split(" AS\n", 1)[1]
        index = qualify("audit_subjects", self.table)
        backfill = f"INSERT INTO {index} {select} AND event_id NOT IN (SELECT event_id FROM {index})"
        self.client.command(backfill)
        self.client.command(view_ddl)
        self.client.command(backfill)
        log.info("created the per-subject index %s of bulk transfers", index)

    def load_heads(self, chains: Sequence[str] | None = None) -> dict[str, ChainHead]:
        """The last durable link of every chain in the store (or of `chains` only)."""
        where = "WHERE chain_id IN {chains:Array(String)} " if chains is not None else ""
        result = self.client.query(
            f"SELECT chain_id, max(chain_seq), argMax(link_hash, chain_seq), max(source_offset) "
            f"FROM {self.table} {where}GROUP BY chain_id",
            parameters={"chains": list(chains)} if chains is not None else None,
        )
        return {
            chain: ChainHead(int(seq), bytes(head), int(offset))
            for chain, seq, head, offset in result.result_rows
        }

    def take_chains(self, chains: Sequence[str]) -> None:
        """This writer now owns `chains` (their partitions were assigned to it): read their heads
        from the store, where the previous owner left them, and accept their records again.
        Raises StoreError when the store cannot be read (the caller retries, as for inserts)."""
        try:
            fresh = self.load_heads(chains)
        except Exception as exc:
            raise StoreError(f"cannot read the chain heads from {self.masked_url}: {exc}") from exc
        for chain in chains:
            self.released.discard(chain)
            self.heads.pop(chain, None)
        self.heads.update(fresh)
        if self.log is not None:
            self._take_logs(chains, fresh)

    def _take_logs(self, chains: Sequence[str], fresh: dict[str, ChainHead]) -> None:
        """Reload the taken chains' Merkle logs from the store (the previous owner's), recovering
        links left without checkpoints. Raises StoreError (the caller retries)."""
        from flowaudit.sinks.merkle_store import MerkleStoreError

        assert self.log is not None
        for chain in chains:
            self.log.compacts.pop(chain, None)
            self.log.notes.pop(chain, None)
        try:
            self.log.load(fresh, self.key, self.table, self._head_now)
        except MerkleStoreError as exc:
            raise StoreError(f"the Merkle log: {exc}") from exc

    def release_chains(self, chains: Sequence[str]) -> None:
        """Another writer will own `chains` (their partitions were revoked): from now on their
        records are not written here (they are read again by the new owner), so one chain never
        has two writers linking onto the same head."""
        self.released.update(chains)

    def _newest_event_ids(self, limit: int) -> list[str]:
        """The event ids of the newest rows (by ingestion), at most `limit`: the identity window's start."""
        result = self.client.query(
            f"SELECT toString(event_id) FROM {self.table} "
            f"WHERE ingested_at >= (SELECT max(ingested_at) FROM {self.table}) - INTERVAL 1 DAY "
            f"ORDER BY ingested_at DESC LIMIT {int(limit)}"
        )
        return [row[0] for row in result.result_rows]

    def stored_event_ids(self, event_ids: list[str], table: str | None = None) -> set[str]:
        """Those of `event_ids` that have a row in `table` (default: the audit table; the
        bloom-filter index on event_id keeps this a few reads)."""
        held: set[str] = set()
        source = qualify(table, self.table) if table else self.table
        for start in range(0, len(event_ids), LOOKUP_CHUNK):
            chunk = event_ids[start : start + LOOKUP_CHUNK]
            _, rows = self.query(
                f"SELECT DISTINCT toString(event_id) FROM {source} WHERE event_id IN {{ids:Array(UUID)}}",
                {"ids": chunk},
            )
            held.update(row[0] for row in rows)
        return held

    # --- writing --------------------------------------------------------------------------------------

    def prepare(
        self,
        records: Sequence[AuditRecord],
        ingested_at_ms: int | None = None,
        *,
        after: PreparedBatch | None = None,
    ) -> PreparedBatch:
        """Build the rows and chain links of a batch; does not change the heads.

        CPU only, unless the batch holds records the store may already hold (see `sinks.identity`):
        then one lookup by event id says which. `after` chains this batch on one that is prepared
        but not inserted yet, so the next batch can be prepared while the previous one is being
        inserted; `insert` keeps them in order.
        """
        ingested = ingested_at_ms if ingested_at_ms is not None else int(time.time() * 1000)
        heads = {**self.heads, **after.heads} if after is not None else self.heads
        pending = set(after.event_ids) if after is not None else set()
        by_partition: dict[tuple[str, int], list[AuditRecord]] = {}
        for record in records:
            by_partition.setdefault((record.topic, record.partition), []).append(record)
        skipped: set[tuple[str, int, int]] = set()
        event_ids: list[str] = []
        encoder = BatchEncoder()
        hashes: list[bytes] = []
        links: list[Link] = []
        decisions: Counter[str] = Counter()
        new_heads: dict[str, ChainHead] = {}
        log_updates: dict[str, LogUpdate] = {}
        build = self.rows.columns
        for (topic, partition), chain_records in by_partition.items():
            chain = chain_id_for(topic, partition)
            if chain in self.released:  # not ours any more: the partition's new owner writes them
                skipped.update((r.topic, r.partition, r.offset) for r in chain_records)
                continue
            head = heads.get(chain, ChainHead())
            fresh, known = split_known(chain_records, head, self.recent, pending, self.stored_event_ids)
            skipped.update((r.topic, r.partition, r.offset) for r in known)
            if not fresh:
                continue
            event_ids += map(_EVENT_ID_OF_RECORD, fresh)
            seq = head.seq + 1
            link_hashes: list[bytes] = []
            for start in range(0, len(fresh), CHUNK_ROWS):  # build, hash, convert while in cache
                columns = build(fresh[start : start + CHUNK_ROWS], ingested)
                link_hashes += row_hashes(zip(*columns, strict=True))
                encoder.add_columns(columns)
                decisions.update(columns[_DECISION])
            link = link_hash(self.key, chain, seq, head.link_hash, link_hashes)
            hashes += link_hashes
            links.append(Link(chain, seq, len(fresh), link))
            if self.log is not None:
                previous = after.log_updates if after is not None else None
                log_updates[chain] = self.log.prepare(chain, seq, link_hashes, ingested, previous)
            # the highest offset seen, even when offsets started again below it (a recreated topic)
            new_heads[chain] = ChainHead(seq, link, max(head.last_offset, fresh[-1].offset))
        token = hashlib.sha256(
            "|".join(f"{c}:{h.seq}:{h.link_hash.hex()}" for c, h in sorted(new_heads.items())).encode()
        )
        return PreparedBatch(
            payload=encoder.finish(hashes, links) if hashes else b"",
            token=token.hexdigest(),
            rows=len(hashes),
            skipped=len(skipped),
            heads=new_heads,
            rows_by_decision=dict(decisions),
            event_ids=event_ids,
            skipped_at=skipped,
            log_updates=log_updates,
        )

    def insert(self, batch: PreparedBatch) -> None:
        """One INSERT of the whole batch; on success the chain heads advance. Raises StoreError."""
        if batch.empty:
            return
        for chain, head in batch.heads.items():
            current = self.heads.get(chain, ChainHead())
            if head.seq != current.seq + 1:
                raise StoreError(f"stale batch for chain {chain}: link {head.seq} after {current.seq}")
        try:
            self.client.raw_insert(
                self.table,
                list(ALL_COLUMNS),
                batch.payload,
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": batch.token},
                fmt=INSERT_FORMAT,
            )
        except Exception as exc:
            raise StoreError(f"insert into {self.table} failed: {exc}") from exc
        if self.log is not None and batch.log_updates:
            updates = list(batch.log_updates.values())
            try:  # after the rows: a crash leaves rows without nodes (recovered), never the reverse
                self.log.insert(updates)
            except Exception as exc:
                raise StoreError(f"the Merkle log: {exc}") from exc
            self.log.commit(updates)
        self.heads.update(batch.heads)
        self.recent.add(batch.event_ids)

    def write(self, records: Sequence[AuditRecord]) -> PreparedBatch:
        batch = self.prepare(records)
        self.insert(batch)
        return batch

    def insert_with_retry(
        self,
        batch: PreparedBatch,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        max_backoff: float = 30.0,
        on_retry: Callable[[int, Exception], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Insert, retrying with bounded exponential back-off until it succeeds (never drops).

        Raises StoreError only when `should_stop()` says the service is shutting down; the batch's
        offsets are then not committed and the records are read again after a restart.
        """
        retry_store(
            lambda: self.insert(batch),
            "audit insert",
            should_stop=should_stop,
            max_backoff=max_backoff,
            on_retry=on_retry,
            sleep=sleep,
        )

    # --- consents (sinks/consents.py) -----------------------------------------------------------------

    def prepare_consents(
        self, records: Sequence[ConsentAuditRecord], ingested_at_ms: int | None = None
    ) -> ConsentBatch:
        """The rows of the records the store does not hold yet (one lookup by event id)."""
        batch, _ = self.prepare_consent_requests([records], ingested_at_ms)
        return batch

    def prepare_consent_requests(
        self, requests: Sequence[Sequence[ConsentAuditRecord]], ingested_at_ms: int | None = None
    ) -> tuple[ConsentBatch, list[tuple[int, int]]]:
        """One batch of the rows of several requests that the store does not hold yet (one lookup
        by event id for all), and each request's (rows written, already present)."""
        ingested = ingested_at_ms if ingested_at_ms is not None else int(time.time() * 1000)
        ids = sorted({record.event.event_id for records in requests for record in records})
        held = self.stored_event_ids(ids, CONSENT_TABLE)
        return build_consent_batches(requests, held, ingested, self.policy.version)

    def insert_consents(self, batch: ConsentBatch) -> None:
        """One INSERT of the batch's consent rows (none: nothing). Raises StoreError."""
        if not batch.rows:
            return
        table = qualify(CONSENT_TABLE, self.table)
        try:
            self.client.insert(
                table,
                batch.rows,
                column_names=list(CONSENT_COLUMNS),
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": batch.token},
            )
        except Exception as exc:
            raise StoreError(f"insert into {table} failed: {exc}") from exc

    def record_withdrawal_notices(self, batch: ConsentBatch, recorded_at_ms: int | None = None) -> None:
        """One INSERT ... SELECT of the notices of every withdrawal of the batch (idempotent:
        sinks/consents.py). Raises StoreError; a retry writes only the notices still missing."""
        if not batch.withdrawals:
            return
        recorded = recorded_at_ms if recorded_at_ms is not None else int(time.time() * 1000)
        sql = qualify(NOTICES_SQL, self.table)
        try:
            self.client.command(sql, parameters=notice_parameters(batch.withdrawals, recorded))
        except Exception as exc:
            first = batch.withdrawals[0].event_id
            count = len(batch.withdrawals)
            raise StoreError(f"notices of {count} withdrawals (from {first}): {exc}") from exc

    def write_consents(self, records: Sequence[ConsentAuditRecord]) -> tuple[int, int]:
        """Blocking: write the consent rows and the withdrawals' notices, no retry; returns (rows
        written, rows already present). Raises StoreError (`ClickHouseSink.write_consents` retries)."""
        batch = self.prepare_consents(records)
        self.insert_consents(batch)
        self.record_withdrawal_notices(batch)
        return batch.written, batch.present

    # --- reading --------------------------------------------------------------------------------------

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            result = self.client.query(sql, parameters=parameters or {})
            names, rows = list(result.column_names), [tuple(row) for row in result.result_rows]
            if not names and not rows and _is_select(sql):
                # an empty result through chDB names no columns: ask the engine for the query's
                # structure, so a report with no rows still prints its header
                described = self.client.query(f"DESCRIBE TABLE (\n{sql}\n)", parameters=parameters or {})
                names = [str(row[0]) for row in described.result_rows]
        except Exception as exc:
            raise StoreError(f"query failed: {exc}") from exc
        return names, rows

    def stream(self, sql: str, parameters: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows as dicts, fetched block by block (memory stays bounded)."""
        with self.client.query_row_block_stream(sql, parameters=parameters or {}) as stream:
            names = stream.source.column_names
            for block in stream:
                for row in block:
                    yield dict(zip(names, row, strict=True))

    def count(self) -> int:
        _, rows = self.query(f"SELECT count() FROM {self.table}")
        return int(rows[0][0])


def _is_select(sql: str) -> bool:
    """A SELECT (or WITH ... SELECT), past leading `--` comment lines and blank lines."""
    for line in sql.splitlines():
        text = line.strip()
        if text and not text.startswith("--"):
            return text.split(None, 1)[0].upper() in ("SELECT", "WITH")
    return False


__all__ = [
    "GENESIS",
    "AuditStore",
    "PreparedBatch",
    "StoreError",
    "load_chain_key",
    "qualify",
    "split_statements",
]
