"""Issue 17's examination, as tests: every single modification an outside examiner would make to a
store written by the real writer (`ClickHouseSink` over `AuditStore` with the Merkle log on), each
on a copy of that store, each with the checks that catch it named exactly.

The store: 3,000 generated records on two chains, written in 12 batches (one link per chain each),
and a witness that read every signed checkpoint as it was published (`domain.witness`, proofs from
the store). Each test copies the three tables into a database of its own, makes one modification,
and runs the three checks of `flowaudit verify`, each on its own:

- `hmac`: with the chain key only (`verify_store`: row hashes and HMAC links, what verify did before);
- `merkle`: with the log's public key only (`verify --public-key`, no chain key: row hashes, link
  sizes and positions, every signed checkpoint against the tree rebuilt from the rows, the stored
  right edge of each tree);
- `witness`: the public key and the trees the witness cosigned (`verify --public-key --witness`).

Each verdict is the first problem (a fragment of it is asserted) or None (it verifies). For the node
table, `receipt` is a fourth check: the inclusion proof of a row whose proof reads the node touched,
against the witness's cosigned root (what `verify-receipt` checks).

The catalogue (`CATALOGUE`; the README's "What each check catches" table lists the same kinds with
the same verdicts, and `test_the_readme_lists_the_catalogue` keeps them equal):
- audit_events: an UPDATE of each of its 43 columns in one row (the 37 hashed content columns, and
  the 6 link columns: chain, link, link size, position, link hash, row hash), `row_format` set back to
  1; a row deleted, duplicated, forged at a taken or a new position; two rows of a link swapped, two
  links' order swapped; a link forged and appended without and with the chain key, a chain forged
  with the chain key; the oldest, a middle and the newest link deleted, the newest with its
  checkpoint, the newest three with their checkpoints and nodes;
- audit_merkle_nodes: each column of a node of the right edge altered, an inner node's hash altered,
  a node of the edge or an inner one deleted, a node added at a taken position or outside the tree,
  a node duplicated (the inner ones and the copy again with the nodes compared in small windows);
- audit_merkle_checkpoints: each column altered (chain, link, size, root, time, note text, signature
  bytes), a checkpoint deleted, duplicated, an older one replayed as the newest or as a newer link;
- DROP PARTITION, TRUNCATE and DROP TABLE of each table, and all three truncated;
- a whole chain deleted (its rows, then all its tables); a rewrite with the chain key (links
  recomputed) and with both of the writer's keys (HMAC and Ed25519, checkpoints re-signed), which
  only the witness catches.

The eight modifications the issue found missed by the HMAC check alone are here, and it still
passes them (or gives no verdict), now caught by the public key or the witness: "a rewrite with the
chain key"; "the newest link deleted", "... with its checkpoint", "the newest 3 links deleted with
their checkpoints and nodes"; "a whole chain's rows deleted" (and "... from all tables"); "DROP
PARTITION audit_events"; "TRUNCATE audit_events"; "DROP TABLE audit_events".

What verify does not catch, each tested for what it changes for a DPO: a node outside the signed
tree, a node or a checkpoint stored twice (no proof reads past the signed size, a copy is read
once or compared equal: every check and receipt still verifies). What only the witness catches: a
log consistent in itself but shorter than, or other than, what was published (truncated with its
checkpoints, a chain or every table emptied, a rewrite re-signed with both of the writer's keys).
An inner node altered or deleted passed verify before this examination (it read each tree's right
edge only); it compares every node with the tree the rows give now, window by window.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.checkpoint import CosignatureSigner, NoteSigner
from flowaudit.domain.merkle import NodeId, ProofError, verify_inclusion
from flowaudit.domain.policy import Policy
from flowaudit.domain.witness import COSIGNED, FORK, SHRINK, Witness
from flowaudit.integrity import missing_store_verdict
from flowaudit.sinks.audit import (
    CONTENT_COLUMNS,
    GENESIS,
    ChainHead,
    content_bytes,
    content_from_stored,
    link_hash,
    row_hash,
)
from flowaudit.sinks.clickhouse import AuditStore, StoreError
from flowaudit.sinks.merkle_log import MerkleLog
from flowaudit.sinks.merkle_store import MerkleStore, MerkleStoreError
from flowaudit.sinks.merkle_verify import VerifyOptions, verify_with
from flowaudit.sinks.verify import verify_store
from flowaudit.sinks.writer import ClickHouseSink
from flowaudit.witness import StoreProofs, observe_all
from tests.sinks.test_clickhouse_store import generated

pytestmark = pytest.mark.integration

KEY = b"tamper-test-key!" * 2
SIGNER = NoteSigner("audit.tamper", bytes(range(32)))
WITNESS_SIGNER = CosignatureSigner("witness.tamper", bytes(range(2, 34)))
TABLES = ("audit_events", "audit_merkle_nodes", "audit_merkle_checkpoints")
CHAIN, OTHER = "in/0", "in/1"
VICTIM = (6, 40)  # the row modified: link 6 (of 12) of CHAIN, position 40
README = Path(__file__).resolve().parents[2] / "README.md"
_COPIES = itertools.count()


@dataclass
class Original:
    url: str
    database: str
    policy: Policy
    witness: Witness
    types: dict[str, dict[str, str]]  # table -> column -> ClickHouse type
    client: Any  # one client for every copy (opening one per copy was a sixth of the module's time)

    @property
    def witnessed(self) -> tuple[tuple[str, int, bytes], ...]:
        return tuple((chain, tree.size, tree.root) for chain, tree in sorted(self.witness.trees.items()))


@pytest.fixture(scope="module")
def original(chdb_path: Path, policy: Policy) -> Iterator[Original]:
    """The store as the worker writes it, and a witness that saw each checkpoint as it came."""
    database = "tamper_original"
    store = AuditStore(f"chdb://{chdb_path}", policy, KEY, database=database, log_signer=SIGNER)
    store.connect()
    witness = Witness(SIGNER.verifier(), WITNESS_SIGNER)
    proofs = StoreProofs(MerkleStore(store.client, database))
    records = generated(policy, 3000, seed=17)

    async def write() -> None:
        sink = ClickHouseSink(store)
        for start in range(0, len(records), 250):
            batch = records[start : start + 250]
            await sink.write(batch)
            notes = sink.latest_checkpoints(sorted({r.chain_id for r in batch}))
            observe_all(witness, notes, proofs)  # as published before the batch is acknowledged
        sink.executor.shutdown(wait=True)

    asyncio.run(write())
    assert {tree.size for tree in witness.trees.values()} == {1500} and len(witness.trees) == 2
    types = {
        table: {
            str(name): str(kind) for name, kind, *_ in store.query(f"DESCRIBE TABLE {database}.{table}")[1]
        }
        for table in TABLES
    }
    reader = AuditStore(store.url, policy, KEY, database=database)
    reader.connect(writer=False)
    yield Original(store.url, database, policy, witness, types, reader.client)
    reader.close()
    store.close()


class Copy:
    """A copy of the original's tables in a database of its own, with helpers to tamper with it."""

    def __init__(self, original: Original) -> None:
        self.original = original
        self.database = f"tamper_copy_{next(_COPIES)}"
        self.store = AuditStore(original.url, original.policy, KEY, database=self.database)
        self.store._client = original.client
        self.client = self.store.client
        self.client.command(f"CREATE DATABASE {self.database}")
        for table in TABLES:
            self.client.command(f"CREATE TABLE {self.database}.{table} AS {original.database}.{table}")
            self.client.command(
                f"INSERT INTO {self.database}.{table} SELECT * FROM {original.database}.{table}"
            )
        self.table = f"{self.database}.audit_events"
        self.merkle = MerkleStore(self.client, self.database)

    def run(self, sql: str) -> None:
        self.client.command(sql.format(db=self.database), settings={"mutations_sync": 2})

    def last_seq(self, chain: str = CHAIN) -> int:
        _, rows = self.store.query(f"SELECT max(chain_seq) FROM {self.table} WHERE chain_id = '{chain}'")
        return int(rows[0][0])

    def rows(self, table: str, where: str) -> list[dict[str, Any]]:
        order = "chain_seq, link_index" if table == "audit_events" else "tuple()"
        return list(
            self.store.stream(f"SELECT * FROM {self.database}.{table} WHERE {where} ORDER BY {order}")
        )

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.client.insert(
            f"{self.database}.{table}", [list(r.values()) for r in rows], column_names=list(rows[0])
        )

    def replace(self, table: str, where: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Rows rewritten in place: deleted and inserted again changed (key columns cannot be UPDATEd)."""
        rows = self.rows(table, where)
        assert rows, where
        for row in rows:
            change(row)
        self.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE {where}")
        self.insert(table, rows)

    def reader(self, key: bytes) -> AuditStore:
        store = AuditStore(self.original.url, self.original.policy, key, database=self.database)
        store.connect(writer=False)
        return store

    def verdicts(self) -> dict[str, str | None]:
        """The first problem (None: it verifies) of each check, each run on its own: hmac (chain key
        only), merkle (public key only), witness (public key and the witness's trees)."""
        vkey = SIGNER.verifier().vkey
        try:
            keyed = self.reader(KEY)
        except StoreError as exc:  # the table is gone: only the witness's state can say it was there
            verdict = missing_store_verdict(exc, self.original.witnessed)
            return {"hmac": "no store", "merkle": "no store", "witness": verdict and verdict["problems"][0]}
        # what `verify --public-key` opens without the chain key (on the same connection)
        keyless = AuditStore(self.original.url, self.original.policy, b"", database=self.database)
        keyless._client, keyless.columns, keyless.heads = keyed.client, keyed.columns, keyed.heads
        try:
            checks = {
                "hmac": verify_store(keyed),
                "merkle": verify_with(keyless, VerifyOptions(vkey)),
                "witness": verify_with(keyless, VerifyOptions(vkey, self.original.witnessed)),
            }
        finally:
            keyed.close()
        for name, report in checks.items():
            assert report.error is None, (name, report.error)
        return {name: (report.problems[0] if report.problems else None) for name, report in checks.items()}

    def receipt(self, leaf: int, chain: str = CHAIN) -> str | None:
        """The inclusion proof of leaf `leaf` (its hash from the untouched original) against the
        witness's cosigned tree, read from this copy's nodes: None if it verifies, else why not."""
        tree = self.original.witness.trees[chain]
        original = MerkleStore(self.client, self.original.database)
        leaf_node = original.read_nodes(chain, [NodeId(0, leaf)])[NodeId(0, leaf)]
        try:
            proof = self.merkle.inclusion_proof(chain, leaf, tree.size)
            verify_inclusion(leaf, tree.size, leaf_node, proof, tree.root)
        except (ProofError, MerkleStoreError) as exc:
            return str(exc) or type(exc).__name__
        return None

    def relink(self, chain: str, rows: list[dict[str, Any]], key: bytes, previous: bytes) -> None:
        """Rows (in chain order) given their row hashes and HMAC links again, with `key`."""
        for seq, link_rows in itertools.groupby(rows, key=lambda row: int(row["chain_seq"])):
            members = list(link_rows)
            for row in members:
                row["chain_id"] = chain
                row["row_hash"] = row_hash(content_bytes(content_from_stored(row)))
            link = link_hash(key, chain, seq, previous, [row["row_hash"] for row in members])
            for row in members:
                row["link_hash"] = link
            previous = link

    def rewrite_chain(self, chain: str, change: Callable[[dict[str, Any]], None], *, resign: bool) -> None:
        """Alter a row and recompute, with the chain key, its row hash and every link of the chain
        after it; with `resign`, also rebuild the chain's Merkle nodes and re-sign its checkpoints
        with the writer's Ed25519 key (a holder of both of the writer's keys)."""
        rows = self.rows("audit_events", f"chain_id = '{chain}'")
        change(rows[len(rows) // 3])
        self.relink(chain, rows, KEY, GENESIS)
        self.run(f"ALTER TABLE {{db}}.audit_events DELETE WHERE chain_id = '{chain}'")
        self.insert("audit_events", rows)
        if resign:
            for table in TABLES[1:]:
                self.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{chain}'")
            log = MerkleLog(self.merkle, SIGNER)
            log.load({chain: ChainHead(int(rows[-1]["chain_seq"]))}, KEY, self.table)


@pytest.fixture
def copy(original: Original) -> Iterator[Copy]:
    made = Copy(original)
    yield made
    made.client.command(f"DROP DATABASE IF EXISTS {made.database}")


# --- how each column is changed -------------------------------------------------------------------


def _a_value(kind: str) -> Any:
    """Some value of a column type (for a NULL made non-NULL, an array given one more element)."""
    inner = re.fullmatch(r"(?:LowCardinality|Nullable)\((.*)\)", kind)
    if inner:
        return _a_value(inner.group(1))
    return {"String": "~", "Bool": True}[kind]


def changed(kind: str, value: Any) -> Any:
    """Another value of the column type `kind` than `value` (a one-step change: what an examiner does)."""
    if kind.startswith("LowCardinality("):
        return changed(kind[len("LowCardinality(") : -1], value)
    if kind.startswith("Nullable("):
        inner = kind[len("Nullable(") : -1]
        return _a_value(inner) if value is None else changed(inner, value)
    if kind.startswith("Array("):
        return [*value, _a_value(kind[len("Array(") : -1])]
    if kind.startswith("Enum8("):
        return "blocked" if value == "allowed" else "allowed"
    if kind.startswith("FixedString("):
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        return bytes([raw[0] ^ 1]) + raw[1:]
    if kind.startswith("DateTime64("):
        return value + timedelta(milliseconds=1)
    if kind.startswith("UInt"):
        return value + 1
    return {
        "String": lambda: value + "~",
        "UUID": lambda: uuid.UUID(int=value.int ^ 1),
        "Bool": lambda: not value,
    }[kind]()


def _victim(seq: int = VICTIM[0], index: int = VICTIM[1]) -> str:
    return f"chain_id = '{CHAIN}' AND chain_seq = {seq} AND link_index = {index}"


def _column_altered(column: str) -> Callable[[Copy], None]:
    def tamper(copy: Copy) -> None:
        kind = copy.original.types["audit_events"][column]

        def change(row: dict[str, Any]) -> None:  # chain_id: the row moved to the other chain
            row[column] = OTHER if column == "chain_id" else changed(kind, row[column])

        copy.replace("audit_events", _victim(), change)

    return tamper


# --- the modifications ----------------------------------------------------------------------------


def _allow_everything(row: dict[str, Any]) -> None:
    """A blocked flow made allowed (an allowed one gets another purpose: the row changes either way)."""
    if row["decision"] == "blocked":
        row["decision"], row["rules"] = "allowed", []
    else:
        row["purpose"] = "marketing" if row["purpose"] != "marketing" else "backup"


def _forged_row(copy: Copy, position: int | None) -> None:
    """A row of the victim's link copied, its decision changed and its row hash recomputed (no chain
    key needed), at the victim's position or at a new one past the link's end."""
    forged = copy.rows("audit_events", _victim())[0]
    _allow_everything(forged)
    forged["event_id"] = uuid.uuid4()
    if position is not None:
        forged["link_index"] = position
    forged["row_hash"] = row_hash(content_bytes(content_from_stored(forged)))
    copy.insert("audit_events", [forged])


def _forged_link(copy: Copy, chain: str, key: bytes) -> None:
    """A link appended after CHAIN's last (or a chain of its own), rows hashed, links made with `key`."""
    last = copy.last_seq()
    rows = copy.rows("audit_events", f"chain_id = '{CHAIN}' AND chain_seq = {VICTIM[0]}")
    for row in rows:
        row["event_id"] = uuid.uuid4()
        _allow_everything(row)
    if chain == CHAIN:
        previous = bytes(
            copy.rows("audit_events", f"chain_id = '{CHAIN}' AND chain_seq = {last}")[0]["link_hash"]
        )
        for row in rows:
            row["chain_seq"] = last + 1
    else:
        previous = GENESIS
        for row in rows:
            row["chain_seq"] = 1
    copy.relink(chain, rows, key, previous)
    copy.insert("audit_events", rows)


def _newest_dropped(copy: Copy, links: int, tables: tuple[str, ...]) -> None:
    """The newest `links` links of CHAIN deleted from `tables`; with the nodes, every node that has a
    leaf past the new end too (what a careful truncation leaves: a smaller, complete tree)."""
    last = copy.last_seq()
    size = copy.merkle.checkpoints(CHAIN, last - links)[0].tree_size
    for table in (t for t in tables if t != "audit_merkle_nodes"):
        copy.run(
            f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}' AND chain_seq > {last - links}"
        )
    if "audit_merkle_nodes" in tables:
        copy.run(
            f"ALTER TABLE {{db}}.audit_merkle_nodes DELETE WHERE chain_id = '{CHAIN}' "
            f"AND (node_index + 1) * pow(2, level) > {size}"
        )


def _links_swapped(copy: Copy) -> None:
    copy.run(
        f"ALTER TABLE {{db}}.audit_events UPDATE chain_seq = if(chain_seq = 5, 6, 5) "
        f"WHERE chain_id = '{CHAIN}' AND chain_seq IN (5, 6)"
    )


def _rows_swapped(copy: Copy) -> None:
    seq, index = VICTIM
    copy.run(
        f"ALTER TABLE {{db}}.audit_events UPDATE link_index = if(link_index = {index}, {index + 1}, {index}) "
        f"WHERE chain_id = '{CHAIN}' AND chain_seq = {seq} AND link_index IN ({index}, {index + 1})"
    )


# the tree has 1,500 leaves per chain (1024 + 256 + 128 + 64 + 16 + 8 + 4): its right edge is the
# nodes (10, 0), (8, 4), (7, 10), (6, 22), (4, 92), (3, 186), (2, 374); (3, 10) is an inner node
EDGE_NODE = "chain_id = 'in/0' AND level = 2 AND node_index = 374"
INNER_NODE = "chain_id = 'in/0' AND level = 3 AND node_index = 10"
INNER_LEAF = 88  # the proof of leaf 88 reads the inner node (3, 10), its sibling at level 3
EDGE_LEAF = 1400  # the proof of leaf 1400 reads the edge node (2, 374)


def _node_altered(column: str, where: str = EDGE_NODE) -> Callable[[Copy], None]:
    def tamper(copy: Copy) -> None:
        kind = copy.original.types["audit_merkle_nodes"][column]

        def change(row: dict[str, Any]) -> None:
            row[column] = OTHER if column == "chain_id" else changed(kind, row[column])

        copy.replace("audit_merkle_nodes", where, change)

    return tamper


def _node_added(copy: Copy, level: int, index: int) -> None:
    copy.insert(
        "audit_merkle_nodes",
        [{"chain_id": CHAIN, "level": level, "node_index": index, "hash": bytes(range(32))}],
    )


CKPT = f"chain_id = '{CHAIN}' AND chain_seq = {VICTIM[0]}"


def _checkpoint_altered(column: str) -> Callable[[Copy], None]:
    def tamper(copy: Copy) -> None:
        kind = copy.original.types["audit_merkle_checkpoints"][column]

        def change(row: dict[str, Any]) -> None:
            if column == "chain_id":
                row[column] = OTHER
            elif column == "note":  # a line added to the signed text
                row[column] = row[column].replace("\n— ", "\nextra\n— ", 1)
            else:
                row[column] = changed(kind, row[column])

        copy.replace("audit_merkle_checkpoints", CKPT, change)

    return tamper


def _signature_altered(copy: Copy) -> None:
    def change(row: dict[str, Any]) -> None:
        body, _, signature = row["note"].rpartition("\n— ")
        name, _, value = signature.rstrip("\n").partition(" ")
        flipped = ("B" if value[10] == "A" else "A").join((value[:10], value[11:]))
        row["note"] = f"{body}\n— {name} {flipped}\n"

    copy.replace("audit_merkle_checkpoints", CKPT, change)


def _link(seq: int) -> str:
    return f"chain_id = '{CHAIN}' AND chain_seq = {seq}"


def _checkpoint_replayed(copy: Copy, as_seq: int | None) -> None:
    """The checkpoint before the newest stored again as the newest link's (that one deleted) or as a
    link after the newest (`as_seq`)."""
    last = copy.last_seq()
    older = copy.rows("audit_merkle_checkpoints", f"chain_id = '{CHAIN}' AND chain_seq = {last - 1}")[0]
    if as_seq is None:
        copy.run(f"ALTER TABLE {{db}}.audit_merkle_checkpoints DELETE WHERE {_link(last)}")
    older["chain_seq"] = as_seq or last
    copy.insert("audit_merkle_checkpoints", [older])


def _dropped(table: str, how: str) -> Callable[[Copy], None]:
    def tamper(copy: Copy) -> None:
        if how == "DROP PARTITION":
            _, partitions = copy.store.query(f"SELECT DISTINCT _partition_id FROM {copy.database}.{table}")
            assert len(partitions) == 1  # every row was ingested this month (the Merkle tables: 'all')
            copy.run(f"ALTER TABLE {{db}}.{table} DROP PARTITION ID '{partitions[0][0]}'")
        else:
            copy.run(f"{how.removesuffix(' TABLE')} TABLE {{db}}.{table}")

    return tamper


def _chain_deleted(tables: tuple[str, ...]) -> Callable[[Copy], None]:
    def tamper(copy: Copy) -> None:
        for table in tables:
            copy.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}'")

    return tamper


@dataclass(frozen=True)
class Kind:
    """A modification and its verdicts: per check, a fragment of the first problem (None: it
    verifies; parts of a fragment separated by " … " appear in that order)."""

    tamper: Callable[[Copy], None]
    hmac: str | None
    merkle: str | None
    witness: str | None
    receipt: tuple[int, str | None] | None = None  # (leaf proved, fragment of why it fails or None)


def _everywhere(fragment: str | None, receipt: tuple[int, str | None] | None = None) -> Callable[..., Kind]:
    return lambda tamper: Kind(tamper, fragment, fragment, fragment, receipt)


def _keyless(fragment: str) -> Callable[[Callable[[Copy], None]], Kind]:
    """Caught by the public key (and so by the witness), not by the chain key."""
    return lambda tamper: Kind(tamper, None, fragment, fragment)


def _merkle_kind(
    fragment: str | None, leaf: int = EDGE_LEAF, receipt: str | None = None
) -> Callable[..., Kind]:
    return lambda tamper: Kind(tamper, None, fragment, fragment, (leaf, receipt))


ALTERED = "chain in/0 link 6: row event_id= … was altered (its content no longer matches its hash)"
ROW_40_GONE = "chain in/0 link 6: row #40 of 125 was deleted"
SECOND_AT = "chain in/0 link 6: forged row event_id= … (a second row claims position {})"
TWO_AT = "chain in/0 link 6: two rows claim position {}, one of them forged"
NOT_THE_TREE = "chain in/{} link {}: the rows do not give the signed tree"
LINK_MISMATCH = "chain in/0 link {}: link hash does not match"
NO_CHECKPOINT = "chain in/{} link {}: no signed checkpoint"
NODE_374_MISSING = "chain in/0: 1 Merkle nodes missing, first NodeId(level=2, position=374)"
NODE_MISSING = "chain in/0: Merkle node NodeId(level={}, position={}) is missing (node table altered)"
NODE_OTHER = "chain in/0: Merkle node NodeId(level={}, position={}) is not the one its rows give"
COLUMNS_DIFFER = "chain in/0 link 6: the checkpoint's columns differ from its signed note"
BAD_SIGNATURE = "chain in/0 link 6: its checkpoint does not verify with the log's public key"
NO_ROWS = "chain in/0: signed checkpoints up to 1500 leaves but no rows: the chain was deleted"
WITNESS_NO_ROWS = "chain in/0: the witness cosigned 1500 leaves, the store has no rows of it"


CONTENT_KINDS = frozenset(f"audit_events.{column} altered" for column in CONTENT_COLUMNS)


def _content_column_kinds() -> dict[str, Kind]:
    kinds = {
        f"audit_events.{column} altered": _everywhere(ALTERED)(_column_altered(column))
        for column in CONTENT_COLUMNS
    }
    unknown = "chain in/0 link 6: row event_id= … was altered (unknown row format 3)"
    kinds["audit_events.row_format altered"] = _everywhere(unknown)(_column_altered("row_format"))
    return kinds


def _delete(table: str, where: str) -> Callable[[Copy], None]:
    return lambda c: c.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE {where}")


CATALOGUE: dict[str, Kind] = {
    # audit_events, one row: every column (content, then the link columns)
    **_content_column_kinds(),
    "audit_events.chain_id altered (moved to the other chain)": _everywhere(ROW_40_GONE)(
        _column_altered("chain_id")
    ),
    # the next link's rows are checked first: the moved row does not carry that link's hash
    "audit_events.chain_seq altered (moved to the next link)": _everywhere(
        "chain in/0 link 7: rows disagree on the link's hash"
    )(_column_altered("chain_seq")),
    "audit_events.link_rows altered": _everywhere("chain in/0 link 6: rows disagree on the link's size")(
        _column_altered("link_rows")
    ),
    "audit_events.link_index altered": Kind(
        _column_altered("link_index"), SECOND_AT.format(41), TWO_AT.format(41), TWO_AT.format(41)
    ),
    "audit_events.link_hash altered": _everywhere("chain in/0 link 6: rows disagree on the link's hash")(
        _column_altered("link_hash")
    ),
    "audit_events.row_hash altered": _everywhere(ALTERED)(_column_altered("row_hash")),
    "row_format set back to 1": _everywhere(ALTERED)(
        lambda c: c.run(f"ALTER TABLE {{db}}.audit_events UPDATE row_format = 1 WHERE {_victim()}")
    ),
    # audit_events: rows and links
    "a row deleted": _everywhere(ROW_40_GONE)(_delete("audit_events", _victim())),
    "a row duplicated": Kind(
        lambda c: c.insert("audit_events", c.rows("audit_events", _victim())),
        SECOND_AT.format(40),
        TWO_AT.format(40),
        TWO_AT.format(40),
    ),
    "a row forged at a taken position": Kind(
        lambda c: _forged_row(c, None), SECOND_AT.format(40), TWO_AT.format(40), TWO_AT.format(40)
    ),
    "a row forged at a new position": _everywhere(
        "chain in/0 link 6: forged row event_id= … (the link was written with 125 rows)"
    )(lambda c: _forged_row(c, 10_000)),
    "two rows of a link swapped": Kind(
        _rows_swapped, LINK_MISMATCH.format(6), NOT_THE_TREE.format(0, 6), NOT_THE_TREE.format(0, 6)
    ),
    "two links swapped": Kind(
        _links_swapped, LINK_MISMATCH.format(5), NOT_THE_TREE.format(0, 5), NOT_THE_TREE.format(0, 5)
    ),
    "a link forged without the chain key": Kind(
        lambda c: _forged_link(c, CHAIN, b"not-the-key"),
        LINK_MISMATCH.format(13),
        NO_CHECKPOINT.format(0, 13),
        NO_CHECKPOINT.format(0, 13),
    ),
    "a link forged with the chain key": _keyless(NO_CHECKPOINT.format(0, 13))(
        lambda c: _forged_link(c, CHAIN, KEY)
    ),
    "a chain forged with the chain key": _keyless(NO_CHECKPOINT.format(9, 1))(
        lambda c: _forged_link(c, "in/9", KEY)
    ),
    "the oldest link deleted": _everywhere("chain in/0: link 1 is missing (the next link is 2)")(
        _delete("audit_events", f"chain_id = '{CHAIN}' AND chain_seq = 1")
    ),
    "a middle link deleted": _everywhere("chain in/0: link 6 is missing (the next link is 7)")(
        _delete("audit_events", f"chain_id = '{CHAIN}' AND chain_seq = 6")
    ),
    "the newest link deleted": _keyless(
        "chain in/0: signed checkpoints up to link 12, but its rows end at link 11"
    )(lambda c: _newest_dropped(c, 1, ("audit_events",))),
    "the newest link deleted with its checkpoint": Kind(
        lambda c: _newest_dropped(c, 1, ("audit_events", "audit_merkle_checkpoints")),
        None,
        None,
        "chain in/0: the witness cosigned 1500 leaves, the store holds 1375: the chain was truncated",
    ),
    "the newest 3 links deleted with their checkpoints and nodes": Kind(
        lambda c: _newest_dropped(c, 3, TABLES),
        None,
        None,
        "chain in/0: the witness cosigned 1500 leaves, the store holds 1125: the chain was truncated",
    ),
    # audit_merkle_nodes
    "a node's chain_id altered": _merkle_kind(NODE_MISSING.format(2, 374), receipt=NODE_374_MISSING)(
        _node_altered("chain_id")
    ),
    "a node's level altered": _merkle_kind(NODE_MISSING.format(2, 374), receipt=NODE_374_MISSING)(
        _node_altered("level")
    ),
    "a node's node_index altered": _merkle_kind(NODE_MISSING.format(2, 374), receipt=NODE_374_MISSING)(
        _node_altered("node_index")
    ),
    "a node's hash altered": _merkle_kind(
        NODE_OTHER.format(2, 374), receipt="the inclusion proof of leaf 1400 does not lead to the tree's root"
    )(_node_altered("hash")),
    "an inner node's hash altered": _merkle_kind(
        NODE_OTHER.format(3, 10),
        INNER_LEAF,
        "the inclusion proof of leaf 88 does not lead to the tree's root",
    )(_node_altered("hash", INNER_NODE)),
    "a node deleted": _merkle_kind(NODE_MISSING.format(2, 374), receipt=NODE_374_MISSING)(
        _delete("audit_merkle_nodes", EDGE_NODE)
    ),
    "an inner node deleted": _merkle_kind(
        NODE_MISSING.format(3, 10),
        INNER_LEAF,
        "chain in/0: 1 Merkle nodes missing, first NodeId(level=3, position=10)",
    )(_delete("audit_merkle_nodes", INNER_NODE)),
    "a node added at a taken position": _merkle_kind(
        NODE_OTHER.format(2, 374),
        receipt="node NodeId(level=2, position=374) is stored with two different hashes",
    )(lambda c: _node_added(c, 2, 374)),
    "a node added outside the tree": _merkle_kind(None)(lambda c: _node_added(c, 0, 1500)),
    "a node duplicated": _merkle_kind(None)(
        lambda c: c.insert("audit_merkle_nodes", c.rows("audit_merkle_nodes", EDGE_NODE))
    ),
    # audit_merkle_checkpoints
    "a checkpoint's chain_id altered": _keyless("chain in/1 link 6 has two different checkpoints")(
        _checkpoint_altered("chain_id")
    ),
    "a checkpoint's chain_seq altered": _keyless("chain in/0 link 7 has two different checkpoints")(
        _checkpoint_altered("chain_seq")
    ),
    "a checkpoint's tree_size altered": _keyless(COLUMNS_DIFFER)(_checkpoint_altered("tree_size")),
    "a checkpoint's root_hash altered": _keyless(COLUMNS_DIFFER)(_checkpoint_altered("root_hash")),
    "a checkpoint's signed_at altered": _keyless(COLUMNS_DIFFER)(_checkpoint_altered("signed_at")),
    "a checkpoint's note text altered": _keyless(BAD_SIGNATURE + " (not a signature line")(
        _checkpoint_altered("note")
    ),
    "a checkpoint's signature bytes altered": _keyless(BAD_SIGNATURE + " (invalid signature")(
        _signature_altered
    ),
    "a checkpoint deleted": _keyless(NO_CHECKPOINT.format(0, 6))(_delete("audit_merkle_checkpoints", CKPT)),
    "a checkpoint duplicated": _everywhere(None)(
        lambda c: c.insert("audit_merkle_checkpoints", c.rows("audit_merkle_checkpoints", CKPT))
    ),
    "an older checkpoint replayed as the newest": _keyless(
        "chain in/0 link 12: the rows do not give the signed tree (1500 leaves rebuilt, 1375 signed)"
    )(lambda c: _checkpoint_replayed(c, None)),
    "an older checkpoint replayed as a newer link": _keyless(
        "chain in/0: signed checkpoints up to link 99, but its rows end at link 12"
    )(lambda c: _checkpoint_replayed(c, 99)),
    # whole tables
    "DROP PARTITION audit_events": _keyless(NO_ROWS)(_dropped("audit_events", "DROP PARTITION")),
    "TRUNCATE audit_events": _keyless(NO_ROWS)(_dropped("audit_events", "TRUNCATE")),
    "DROP TABLE audit_events": Kind(
        _dropped("audit_events", "DROP TABLE"), "no store", "no store", "the audit table is gone"
    ),
    **{
        f"{how} audit_merkle_nodes": _merkle_kind(NODE_MISSING.format(0, 0), receipt="Merkle nodes")(
            _dropped("audit_merkle_nodes", how)
        )
        for how in ("DROP PARTITION", "TRUNCATE")
    },
    "DROP TABLE audit_merkle_nodes": _merkle_kind(
        "chain in/0: the Merkle node table cannot be read", receipt="cannot read the Merkle nodes"
    )(_dropped("audit_merkle_nodes", "DROP TABLE")),
    "DROP PARTITION audit_merkle_checkpoints": _keyless(NO_CHECKPOINT.format(0, 1))(
        _dropped("audit_merkle_checkpoints", "DROP PARTITION")
    ),
    "TRUNCATE audit_merkle_checkpoints": _keyless(NO_CHECKPOINT.format(0, 1))(
        _dropped("audit_merkle_checkpoints", "TRUNCATE")
    ),
    "DROP TABLE audit_merkle_checkpoints": _keyless("the store has no Merkle log")(
        _dropped("audit_merkle_checkpoints", "DROP TABLE")
    ),
    "all three tables truncated": Kind(
        lambda c: [c.run(f"TRUNCATE TABLE {{db}}.{table}") for table in TABLES] and None,
        None,
        None,
        WITNESS_NO_ROWS,
    ),
    # a chain, and rewrites
    "a whole chain's rows deleted": _keyless(NO_ROWS)(_chain_deleted(("audit_events",))),
    "a whole chain deleted from all tables": Kind(_chain_deleted(TABLES), None, None, WITNESS_NO_ROWS),
    "a rewrite with the chain key": _keyless(NOT_THE_TREE.format(0, 5))(
        lambda c: c.rewrite_chain(CHAIN, _allow_everything, resign=False)
    ),
    "a rewrite with both of the writer's keys": Kind(
        lambda c: c.rewrite_chain(CHAIN, _allow_everything, resign=True),
        None,
        None,
        "chain in/0: the witness cosigned another tree of 1500 leaves: the history was rewritten"
        " and re-signed (by a holder of the writer's keys)",
    ),
}


def _matches(fragment: str | None, verdict: str | None) -> bool:
    if fragment is None or verdict is None:
        return fragment is verdict
    return re.search(".*".join(map(re.escape, fragment.split(" … "))), verdict) is not None


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_modification_is_caught_by_the_checks_named(copy: Copy, name: str) -> None:
    kind = CATALOGUE[name]
    kind.tamper(copy)
    verdicts = copy.verdicts()
    expected = {"hmac": kind.hmac, "merkle": kind.merkle, "witness": kind.witness}
    assert all(_matches(expected[check], verdicts[check]) for check in expected), (expected, verdicts)
    if kind.receipt is not None:
        leaf, fragment = kind.receipt
        assert _matches(fragment, copy.receipt(leaf)), (fragment, copy.receipt(leaf))


# --- what the catalogue's verdicts do not show ------------------------------------------------------


def test_the_witness_refuses_the_next_checkpoint_of_a_log_rewritten_with_the_writers_keys(
    copy: Copy, original: Original
) -> None:
    copy.rewrite_chain(CHAIN, _allow_everything, resign=True)
    forged = copy.merkle.checkpoints(CHAIN)[-1].note
    witness = Witness(original.witness.log_key, WITNESS_SIGNER, dict(original.witness.trees))
    seen = observe_all(witness, [forged], StoreProofs(copy.merkle))
    assert seen[0].outcome == FORK
    assert witness.trees == original.witness.trees  # a fork never becomes the witness's view


def test_a_truncated_log_that_grows_again_is_a_shrink_to_the_witness(copy: Copy, original: Original) -> None:
    _newest_dropped(copy, 2, ("audit_events", "audit_merkle_checkpoints"))
    shorter = copy.merkle.checkpoints(CHAIN)[-1].note
    witness = Witness(original.witness.log_key, WITNESS_SIGNER, dict(original.witness.trees))
    seen = observe_all(witness, [shorter], StoreProofs(copy.merkle))
    assert seen[0].outcome in (SHRINK, "stale")  # a prefix: an old checkpoint, not cosigned again
    assert witness.trees == original.witness.trees


def test_the_copies_verify_untouched(copy: Copy) -> None:
    assert copy.verdicts() == {"hmac": None, "merkle": None, "witness": None}
    assert copy.receipt(INNER_LEAF) is None and copy.receipt(EDGE_LEAF) is None
    assert COSIGNED  # the witness cosigned every checkpoint of the original (see the fixture)


def test_the_catalogue_covers_every_column_of_the_three_tables(original: Original) -> None:
    altered = {name.split()[0] for name in CATALOGUE if name.startswith("audit_events.")}
    assert altered == {f"audit_events.{column}" for column in original.types["audit_events"]}
    for table, prefix in (
        ("audit_merkle_nodes", "a node's "),
        ("audit_merkle_checkpoints", "a checkpoint's "),
    ):
        named = {name.removeprefix(prefix).split()[0] for name in CATALOGUE if name.startswith(prefix)}
        assert named >= set(original.types[table]) - {"note"}, table  # the note: its text and its signature
    assert len(CATALOGUE) >= 71


def _mark(verdict: str | None) -> str:
    return "passes" if verdict is None else "no verdict" if verdict == "no store" else "caught"


def test_the_readme_lists_the_catalogue() -> None:
    """The README's table (kind | HMAC | public key | witness | receipt) says what the tests assert."""
    text = README.read_text()
    table = text[text.index("<!-- tamper catalogue -->") : text.index("<!-- /tamper catalogue -->")]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("modification", "") and not set(cells[0]) <= set("-: "):
            rows[cells[0].replace("`", "")] = cells[1:]
    expected: dict[str, list[str]] = {}
    for name, kind in CATALOGUE.items():
        if name in CONTENT_KINDS:  # one row of the README for the 37 content columns
            name = "audit_events.<content column> altered"
        marks = [
            _mark(kind.hmac),
            _mark(kind.merkle),
            _mark(kind.witness),
            "—" if kind.receipt is None else "passes" if kind.receipt[1] is None else "fails",
        ]
        assert expected.setdefault(name, marks) == marks, name
    assert rows == expected


@pytest.mark.parametrize(
    "name", ["an inner node's hash altered", "an inner node deleted", "a node duplicated"]
)
def test_the_nodes_are_compared_window_by_window_with_the_same_verdict(
    copy: Copy, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify compares the stored nodes with the rebuilt tree every NODES_WINDOW nodes (a window of
    its rows), not only at the end of a chain: the same verdicts with a window of a few links."""
    from flowaudit.sinks import merkle_verify

    monkeypatch.setattr(merkle_verify, "NODES_WINDOW", 300)  # about 150 rows: every second link
    reads: list[dict[int, tuple[int, int]]] = []
    node_ranges = MerkleStore.node_ranges

    def counted(self: MerkleStore, chain: str, ranges: dict[int, tuple[int, int]]) -> Any:
        reads.append(ranges)
        return node_ranges(self, chain, ranges)

    monkeypatch.setattr(MerkleStore, "node_ranges", counted)
    kind = CATALOGUE[name]
    kind.tamper(copy)
    verdicts = copy.verdicts()
    assert _matches(kind.merkle, verdicts["merkle"]) and _matches(kind.witness, verdicts["witness"]), verdicts
    # one read per two links (250 leaves and their nodes) of each check (public key, witness): the
    # inner node, under link 1, is found by the first, before the chain ends; untouched, 2 x 12 reads
    assert reads[0][0] == (0, 250) and len(reads) == 2 * (1 if "inner" in name else 12), reads[:2]


def test_a_node_stored_twice_does_not_hide_a_deleted_one(copy: Copy) -> None:
    """Two modifications at once: the comparison counts positions, not rows."""
    copy.insert("audit_merkle_nodes", copy.rows("audit_merkle_nodes", EDGE_NODE))
    copy.run(f"ALTER TABLE {{db}}.audit_merkle_nodes DELETE WHERE {INNER_NODE}")
    verdicts = copy.verdicts()
    assert _matches(NODE_MISSING.format(3, 10), verdicts["merkle"]), verdicts
