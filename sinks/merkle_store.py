"""The chains' Merkle logs in ClickHouse: node rows to insert, proofs read by primary key, checks.

Tables (schemas/sql/merkle.sql): `audit_merkle_nodes (chain_id, level, node_index, hash)` holds every
complete subtree of each chain's tree, leaves included; `audit_merkle_checkpoints` one signed
checkpoint per link. What a leaf is: leaf i of a chain is `SHA-256(0x00 || row_hash)` of the chain's
i-th row (chain order: chain_seq, then link_index), the row hash being the SHA-256 of the row's
content that the store already keeps (sinks/audit.py). docs/merkle.md says why it is not
SHA-256(0x00 || row content).

- (a) `extend_chain(compact, row_hashes)`: the leaves and nodes a batch of rows completes, from the
  chain's compact range (its right edge, O(log n) hashes); `node_payload` encodes them as one
  Arrow stream for `MerkleStore.insert_nodes`. CPU only.
- (b) `MerkleStore.read_nodes`: the nodes of one or several proofs in one query, by primary key;
  `inclusion_proof`, `consistency_proof`, `proofs` (both at once) build on it. `node_ranges`: every
  stored node of some index ranges, for verify's comparison with the tree rebuilt from the rows.
- (c) `check_inclusion`, `check_consistency`: a stored row's leaf or a later tree head against a
  checkpoint, with nothing from the store trusted but the proof's nodes (which either lead to the
  signed root or fail: ProofError).

The store never updates or deletes a node. A node stored twice with the same hash (a retried
insert) is read once; with two different hashes it is an error naming the node (MerkleStoreError):
never a silent choice. Not thread-safe: the caller's store thread uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from flowaudit.domain.checkpoint import Checkpoint
from flowaudit.domain.merkle import (
    CompactRange,
    Extension,
    NodeId,
    Nodes,
    consistency_ranges,
    frontier,
    inclusion_ranges,
    leaf_hash,
    leaf_hashes,
    proof_nodes,
    range_hash,
    verify_consistency,
    verify_inclusion,
)
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.ddl import split_statements
from flowaudit.sinks.encoding import hash_array

NODES_TABLE = "audit_merkle_nodes"
CHECKPOINTS_TABLE = "audit_merkle_checkpoints"
DDL_FILE = SCHEMA_DIR / "sql" / "merkle.sql"
NODE_COLUMNS = ("chain_id", "level", "node_index", "hash")
CHECKPOINT_COLUMNS = ("chain_id", "chain_seq", "tree_size", "root_hash", "signed_at", "note")
NODE_SCHEMA = pa.schema(
    [
        ("chain_id", pa.dictionary(pa.int32(), pa.string())),
        ("level", pa.uint8()),
        ("node_index", pa.uint64()),
        ("hash", pa.binary(32)),
    ]
)
CHECKPOINT_SCHEMA = pa.schema(
    [
        ("chain_id", pa.string()),
        ("chain_seq", pa.uint64()),
        ("tree_size", pa.uint64()),
        ("root_hash", pa.binary(32)),
        ("signed_at", pa.timestamp("ms", tz="UTC")),
        ("note", pa.string()),
    ]
)
_INSERT_SETTINGS = {"insert_deduplicate": 1}


class MerkleStoreError(Exception):
    """The Merkle tables could not be read or written, or hold what a tree cannot (conflicting or
    missing nodes)."""


def extend_chain(compact: CompactRange, row_hashes: Sequence[bytes]) -> Extension:
    """Append a batch's rows (their row hashes, in chain order) to a chain's tree: its leaves and
    every node they complete, and the root after. Advances `compact`."""
    return compact.extend(leaf_hashes(row_hashes))


def node_payload(chain_id: str, extension: Extension) -> bytes:
    """The extension's nodes as an Arrow IPC stream in NODE_COLUMNS order (FORMAT ArrowStream)."""
    return nodes_payload([(chain_id, extension)])


def nodes_payload(extensions: Sequence[tuple[str, Extension]]) -> bytes:
    """The nodes of several chains' extensions as one Arrow IPC stream in NODE_SCHEMA (one INSERT
    for a batch's chains; the chain column is a dictionary of their ids)."""
    names = list(dict.fromkeys(chain_id for chain_id, _ in extensions))
    position = {name: index for index, name in enumerate(names)}
    runs = [(position[chain_id], run) for chain_id, extension in extensions for run in extension.runs]
    sizes = [len(run.hashes) for _, run in runs]
    chains = np.repeat(np.array([index for index, _ in runs], dtype=np.int32), sizes)
    levels = np.repeat(np.array([run.level for _, run in runs], dtype=np.uint8), sizes)
    positions = np.concatenate(
        [np.arange(run.first, run.first + len(run.hashes), dtype=np.uint64) for _, run in runs]
    )
    batch = pa.RecordBatch.from_arrays(
        [
            pa.DictionaryArray.from_arrays(chains, pa.array(names)),
            pa.array(levels),
            pa.array(positions),
            hash_array([digest for _, run in runs for digest in run.hashes]),
        ],
        schema=NODE_SCHEMA,
    )
    return _arrow_stream(batch)


def checkpoints_payload(rows: Sequence[tuple[str, int, Checkpoint, str]]) -> bytes:
    """(chain, link, checkpoint, signed note) rows as one Arrow IPC stream in CHECKPOINT_SCHEMA
    (FORMAT ArrowStream), `signed_at` the checkpoint's time (none: the epoch). Sent as the nodes
    are: the generic insert asked the engine for the table's columns first (a DESCRIBE TABLE per
    batch, 0.3-0.5 ms of CPU in chDB) and encoded the rows in Python."""
    chains, seqs, checkpoints, notes = zip(*rows, strict=True) if rows else ((), (), (), ())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(chains, pa.string()),
            pa.array(seqs, pa.uint64()),
            pa.array([checkpoint.size for checkpoint in checkpoints], pa.uint64()),
            pa.array([checkpoint.root for checkpoint in checkpoints], pa.binary(32)),
            pa.array([checkpoint.time_ms or 0 for checkpoint in checkpoints], pa.timestamp("ms", tz="UTC")),
            pa.array(notes, pa.string()),
        ],
        schema=CHECKPOINT_SCHEMA,
    )
    return _arrow_stream(batch)


def _arrow_stream(batch: pa.RecordBatch) -> bytes:
    """One record batch as an Arrow IPC stream (FORMAT ArrowStream)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    payload: bytes = sink.getvalue().to_pybytes()
    return payload


def nodes_token(chain_id: str, old_size: int, extension: Extension) -> str:
    """The deduplication token of one chain's node insert: the same batch gives the same token."""
    text = f"merkle|{chain_id}|{old_size}|{extension.size}|{extension.root.hex()}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    chain_id: str
    chain_seq: int
    tree_size: int
    root: bytes
    signed_at_ms: int
    note: str


class MerkleStore:
    """The Merkle tables of one database, through a clickhouse-connect client (chDB or a server)."""

    def __init__(self, client: Any, database: str | None = None) -> None:
        self.client = client
        prefix = f"{database}." if database else ""
        self.nodes_table = prefix + NODES_TABLE
        self.checkpoints_table = prefix + CHECKPOINTS_TABLE

    def apply_ddl(self) -> None:
        """Create the tables if need be (idempotent)."""
        sql = DDL_FILE.read_text()
        sql = sql.replace(NODES_TABLE, self.nodes_table).replace(CHECKPOINTS_TABLE, self.checkpoints_table)
        for statement in split_statements(sql):
            self._run(lambda s=statement: self.client.command(s), "create the Merkle tables")

    def _run(self, operation: Any, what: str) -> Any:
        try:
            return operation()
        except MerkleStoreError:
            raise
        except Exception as exc:
            raise MerkleStoreError(f"cannot {what}: {exc}") from exc

    # --- writing --------------------------------------------------------------------------------------

    def insert_nodes(self, chain_id: str, old_size: int, extension: Extension) -> None:
        """One INSERT of the nodes a batch completed (idempotent on retry: deduplication token)."""
        if not extension.count:
            return
        payload = node_payload(chain_id, extension)
        settings = {
            **_INSERT_SETTINGS,
            "insert_deduplication_token": nodes_token(chain_id, old_size, extension),
        }
        self._run(
            lambda: self.client.raw_insert(
                self.nodes_table, list(NODE_COLUMNS), payload, settings=settings, fmt="ArrowStream"
            ),
            f"insert the Merkle nodes of {chain_id}",
        )

    def insert_checkpoint(self, chain_id: str, chain_seq: int, checkpoint: Checkpoint, note: str) -> None:
        token = hashlib.sha256(f"checkpoint|{chain_id}|{chain_seq}|{checkpoint.size}".encode()).hexdigest()
        self.insert_checkpoints([(chain_id, chain_seq, checkpoint, note)], token)

    def insert_checkpoints(self, rows: Sequence[tuple[str, int, Checkpoint, str]], token: str) -> None:
        """One INSERT of (chain, link, checkpoint, signed note) rows, deduplicated by `token`."""
        payload = checkpoints_payload(rows)
        self._run(
            lambda: self.client.raw_insert(
                self.checkpoints_table,
                list(CHECKPOINT_COLUMNS),
                payload,
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
                fmt="ArrowStream",
            ),
            "insert the signed checkpoints of " + ", ".join(dict.fromkeys(row[0] for row in rows)),
        )

    # --- reading --------------------------------------------------------------------------------------

    def nodes_query(self, chain_id: str, nodes: Sequence[NodeId]) -> tuple[str, dict[str, Any]]:
        """The SELECT of `nodes` by primary key (chain_id, level, node_index), and its parameters."""
        wanted = ",".join(f"({int(node.level)},{int(node.position)})" for node in nodes)
        sql = (
            f"SELECT DISTINCT level, node_index, hash FROM {self.nodes_table} "
            f"WHERE chain_id = {{chain:String}} AND (level, node_index) IN ({wanted})"
        )
        return sql, {"chain": chain_id}

    def read_nodes(self, chain_id: str, nodes: Sequence[NodeId]) -> dict[NodeId, bytes]:
        """The hashes of `nodes` of a chain's tree, in one query by primary key. Raises
        MerkleStoreError naming a node that is missing or stored with two hashes."""
        if not nodes:
            return {}
        sql, parameters = self.nodes_query(chain_id, nodes)
        result = self._run(
            lambda: self.client.query(sql, parameters=parameters), f"read the Merkle nodes of {chain_id}"
        )
        found: dict[NodeId, bytes] = {}
        for level, position, digest in result.result_rows:
            node = NodeId(int(level), int(position))
            value = digest if isinstance(digest, bytes) else bytes(digest, "latin-1")
            if found.setdefault(node, value) != value:
                raise MerkleStoreError(f"chain {chain_id}: node {node} is stored with two different hashes")
        missing = [node for node in nodes if node not in found]
        if missing:
            raise MerkleStoreError(
                f"chain {chain_id}: {len(missing)} Merkle nodes missing, first {missing[0]}"
            )
        return found

    def node_ranges(
        self, chain_id: str, ranges: Mapping[int, tuple[int, int]]
    ) -> list[tuple[int, int, bytes]]:
        """(level, node_index, hash) of every stored node of a chain with `start <= node_index < end`
        for its level's (start, end), in (level, node_index) order, a node stored twice returned
        twice (`verify` compares them all with the tree it rebuilds). One query, by primary key."""
        if not ranges:
            return []
        where = " OR ".join(
            f"(level = {int(level)} AND node_index >= {int(start)} AND node_index < {int(end)})"
            for level, (start, end) in sorted(ranges.items())
        )
        result = self._run(
            lambda: self.client.query(
                f"SELECT level, node_index, hash FROM {self.nodes_table} "
                f"WHERE chain_id = {{chain:String}} AND ({where}) ORDER BY level, node_index",
                parameters={"chain": chain_id},
            ),
            f"read the Merkle nodes of {chain_id}",
        )
        return [
            (int(level), int(index), digest if isinstance(digest, bytes) else bytes(digest, "latin-1"))
            for level, index, digest in result.result_rows
        ]

    def stored_size(self, chain_id: str) -> int:
        """How many leaves the chain's tree has in the store (0: none), from its last leaf."""
        result = self._run(
            lambda: self.client.query(
                f"SELECT node_index FROM {self.nodes_table} WHERE chain_id = {{chain:String}} AND level = 0 "
                "ORDER BY level DESC, node_index DESC LIMIT 1",
                parameters={"chain": chain_id},
            ),
            f"read the Merkle tree size of {chain_id}",
        )
        rows = result.result_rows
        return int(rows[0][0]) + 1 if rows else 0

    def load_compact(self, chain_id: str, size: int | None = None) -> CompactRange:
        """The chain's compact range at `size` leaves (default: all stored), to append to."""
        size = self.stored_size(chain_id) if size is None else size
        edge = frontier(size)
        nodes = self.read_nodes(chain_id, edge)
        return CompactRange.of(size, [nodes[node] for node in edge])

    def proofs(
        self, chain_id: str, index: int | None, size: int, old_size: int | None = None
    ) -> tuple[list[bytes], list[bytes]]:
        """The inclusion proof of leaf `index` and the consistency proof from `old_size`, both in a
        tree of `size` leaves, from one query (either may be None: an empty proof)."""
        inclusion = inclusion_ranges(index, size) if index is not None else []
        consistency = consistency_ranges(old_size, size) if old_size is not None else []
        nodes: Nodes = self.read_nodes(chain_id, proof_nodes(inclusion + consistency))
        return (
            [range_hash(start, end, nodes) for start, end in inclusion],
            [range_hash(start, end, nodes) for start, end in consistency],
        )

    def inclusion_proof(self, chain_id: str, index: int, size: int) -> list[bytes]:
        return self.proofs(chain_id, index, size)[0]

    def consistency_proof(self, chain_id: str, old_size: int, size: int) -> list[bytes]:
        return self.proofs(chain_id, None, size, old_size)[1]

    def checkpoints(self, chain_id: str, chain_seq: int | None = None) -> list[StoredCheckpoint]:
        """The chain's stored checkpoints (of one link, or all), in link order."""
        where = " AND chain_seq = {seq:UInt64}" if chain_seq is not None else ""
        result = self._run(
            lambda: self.client.query(
                "SELECT DISTINCT chain_id, chain_seq, tree_size, root_hash, "
                f"toUnixTimestamp64Milli(signed_at), note FROM {self.checkpoints_table} "
                f"WHERE chain_id = {{chain:String}}{where} "
                "ORDER BY chain_seq",
                parameters={"chain": chain_id, "seq": chain_seq},
            ),
            f"read the checkpoints of {chain_id}",
        )
        return [
            StoredCheckpoint(
                str(c),
                int(s),
                int(n),
                bytes(r) if isinstance(r, bytes) else r.encode("latin-1"),
                int(t),
                str(note),
            )
            for c, s, n, r, t, note in result.result_rows
        ]

    # --- checking -------------------------------------------------------------------------------------

    def check_inclusion(self, chain_id: str, index: int, row_hash: bytes, checkpoint: Checkpoint) -> None:
        """The row whose row hash is `row_hash` is leaf `index` of the tree the checkpoint signed.
        The leaf is computed here from the row hash; only the proof's nodes come from the table.
        Raises ProofError (or MerkleStoreError when nodes are missing)."""
        proof = self.inclusion_proof(chain_id, index, checkpoint.size)
        verify_inclusion(index, checkpoint.size, leaf_hash(row_hash), proof, checkpoint.root)

    def check_consistency(self, chain_id: str, old: Checkpoint, new: Checkpoint) -> None:
        """The tree of `new` extends the tree of `old` (both signed). Raises ProofError."""
        proof = self.consistency_proof(chain_id, old.size, new.size)
        verify_consistency(old.size, new.size, old.root, new.root, proof)
