"""The writer's Merkle log: each audit insert also appends its chains' tree nodes and one signed
checkpoint per link (issue 17; docs/merkle.md has the design, README "Trust model" the keys).

`AuditStore` (sinks/clickhouse.py) drives it on its one store thread:
- `prepare(chain, seq, row_hashes, time_ms, after)`: CPU only. Extends a *copy* of the chain's
  compact range (the one of `after`, a batch prepared but not inserted yet, when it has the chain),
  and signs the checkpoint (origin `<log name>/<chain>`, the tree's size and root, the time) with the
  log's Ed25519 key. Signing here makes a retried insert send the very same note.
- `insert(updates)`: the nodes of every chain of the batch in one INSERT, then the checkpoints in one
  INSERT, each with a deduplication token (a retry doubles nothing). Called after the audit rows'
  INSERT returned, so a crash leaves audit rows without nodes, never nodes without rows.
- `commit(updates)`: once both returned, the compact ranges and the latest notes advance (with the
  chain heads).
- `load(heads, chain key, table)`: at start-up and when chains are taken (a partition assigned
  here), the chains' compact ranges and last checkpoints are read (the last one must open with this
  key and match the stored right edge), and a chain whose last checkpoint is older than its last
  link (a crash between the two inserts, or a store written before the Merkle log: the migration)
  gets the missing leaves, nodes and checkpoints rebuilt from the stored `row_hash` column, link by
  link, each link's HMAC recomputed from those row hashes first (a row hash that does not match its
  link refuses the recovery). Content is not re-hashed here: `flowaudit verify` does that.

Keys (`load_log_signer`): FLOWAUDIT_CHECKPOINT_KEY (a `PRIVATE+KEY+…` signer string) or
`<data dir>/log.key`, created once (mode 0600); its public half goes to `<data dir>/log.pub` as a
verifier key (vkey), which is all `flowaudit verify`, the witness and a receipt's reader need.
Not thread-safe: the store's thread uses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowaudit.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    origin_for,
    parse_skey,
    parse_vkey,
)
from flowaudit.domain.merkle import CompactRange, Extension
from flowaudit.sinks.audit import GENESIS, ChainHead, link_hash
from flowaudit.sinks.merkle_store import (
    MerkleStore,
    MerkleStoreError,
    StoredCheckpoint,
    extend_chain,
)
from flowaudit.sinks.merkle_store import nodes_payload as chain_nodes_payload

log = logging.getLogger(__name__)

DEFAULT_LOG_NAME = "flowaudit"
KEY_FILE = "log.key"
PUBLIC_KEY_FILE = "log.pub"
_INSERT_SETTINGS = {"insert_deduplicate": 1}
# links rebuilt per recovery step (each one read, hashed and inserted): bounded memory on a migration
_RECOVERY_LINKS = 2_000


class LogKeyError(ValueError):
    """The checkpoint key cannot be read or made; the message says which and why."""


def load_log_signer(
    explicit: str | None, data_dir: Path, log_name: str, *, create: bool = True
) -> NoteSigner:
    """The log's signer: FLOWAUDIT_CHECKPOINT_KEY, else `<data dir>/log.key`, made there once when
    `create` (the worker), with the public key written next to it (`log.pub`). Raises LogKeyError."""
    path = data_dir / KEY_FILE
    try:
        if explicit:
            signer = parse_skey(explicit)
        else:
            if not path.exists():
                if not create:
                    raise LogKeyError(f"no checkpoint key: set FLOWAUDIT_CHECKPOINT_KEY (there is no {path})")
                data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(NoteSigner.generate(log_name).skey + "\n")
                log.warning(
                    "created a new checkpoint signing key in %s (public key: %s)",
                    path,
                    path.with_name(PUBLIC_KEY_FILE),
                )
            signer = parse_skey(path.read_text())
    except CheckpointError as exc:
        raise LogKeyError(
            f"checkpoint key {'FLOWAUDIT_CHECKPOINT_KEY' if explicit else path}: {exc}"
        ) from None
    signer = signer.for_name(log_name)
    if create:
        write_public_key(data_dir, signer)
    return signer


def write_public_key(data_dir: Path, signer: NoteSigner) -> Path:
    """`<data dir>/log.pub`: the log's verifier key. It is public, but the data directory's files are
    its owner's alone (umask 077): hand it out with `flowaudit public-key`."""
    path = data_dir / PUBLIC_KEY_FILE
    vkey = signer.verifier().vkey + "\n"
    if not path.exists() or path.read_text() != vkey:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(vkey)
    return path


def read_public_key(value: str) -> NoteVerifier:
    """A log's verifier key from a vkey string or a file holding one (`log.pub`). Raises LogKeyError."""
    text = value.strip()
    if "+" not in text or Path(text).is_file():
        try:
            text = Path(text).read_text().strip()
        except OSError as exc:
            raise LogKeyError(f"cannot read the public key {value}: {exc.strerror}") from None
    try:
        return parse_vkey(text)
    except CheckpointError as exc:
        raise LogKeyError(f"public key {value}: {exc}") from None


def chain_verifier(log_key: NoteVerifier, chain_id: str) -> NoteVerifier:
    """The verifier of one chain's checkpoints: the log's public key under the chain's origin."""
    return NoteVerifier(origin_for(log_key.name, chain_id), log_key.public_key)


@dataclass(frozen=True, slots=True)
class LogUpdate:
    """One link's share of the Merkle log: the nodes it completed, its signed checkpoint, and the
    chain's compact range after it (kept by the writer once the batch is durable)."""

    chain_id: str
    chain_seq: int
    old_size: int
    extension: Extension
    checkpoint: Checkpoint
    note: str
    compact: CompactRange


def nodes_payload(updates: Sequence[LogUpdate]) -> bytes:
    """The nodes of every update as one Arrow stream in NODE_SCHEMA (one INSERT for all the batch's
    chains)."""
    return chain_nodes_payload([(update.chain_id, update.extension) for update in updates])


def updates_token(kind: str, updates: Sequence[LogUpdate]) -> str:
    text = "|".join(f"{u.chain_id}:{u.old_size}:{u.extension.size}:{u.extension.root.hex()}" for u in updates)
    return hashlib.sha256(f"{kind}|{text}".encode()).hexdigest()


class MerkleLog:
    """The Merkle log of every chain of one store, as its writer keeps it (see the module doc)."""

    def __init__(self, merkle: MerkleStore, signer: NoteSigner) -> None:
        self.merkle = merkle
        self.signer = signer  # named after the log: chains sign under `<log name>/<chain>`
        self.compacts: dict[str, CompactRange] = {}
        self.notes: dict[str, str] = {}  # chain -> its latest durable signed checkpoint
        self._signers: dict[str, NoteSigner] = {}

    @property
    def log_name(self) -> str:
        return self.signer.name

    def _chain_signer(self, chain_id: str) -> NoteSigner:
        signer = self._signers.get(chain_id)
        if signer is None:
            signer = self._signers[chain_id] = self.signer.for_name(origin_for(self.log_name, chain_id))
        return signer

    # --- writing --------------------------------------------------------------------------------------

    def prepare(
        self,
        chain_id: str,
        seq: int,
        row_hashes: Sequence[bytes],
        time_ms: int,
        after: Mapping[str, LogUpdate] | None = None,
    ) -> LogUpdate:
        """The link's nodes and signed checkpoint, from a copy of the chain's compact range."""
        pending = after.get(chain_id) if after else None
        base = pending.compact if pending is not None else self.compacts.get(chain_id, CompactRange())
        compact = CompactRange.of(base.size, base.hashes)
        extension = extend_chain(compact, row_hashes)
        checkpoint = Checkpoint(origin_for(self.log_name, chain_id), extension.size, extension.root, time_ms)
        note = checkpoint.sign(self._chain_signer(chain_id))
        return LogUpdate(chain_id, seq, base.size, extension, checkpoint, note, compact)

    def insert(self, updates: Sequence[LogUpdate]) -> None:
        """The updates' nodes in one INSERT, then their checkpoints in one. Raises MerkleStoreError."""
        if not updates:
            return
        client, merkle = self.merkle.client, self.merkle
        if any(u.extension.count for u in updates):
            payload = nodes_payload(updates)
            settings = {**_INSERT_SETTINGS, "insert_deduplication_token": updates_token("nodes", updates)}
            merkle._run(
                lambda: client.raw_insert(
                    merkle.nodes_table,
                    ["chain_id", "level", "node_index", "hash"],
                    payload,
                    settings=settings,
                    fmt="ArrowStream",
                ),
                "insert the Merkle nodes",
            )
        rows = [(u.chain_id, u.chain_seq, u.checkpoint, u.note) for u in updates]
        merkle.insert_checkpoints(rows, updates_token("checkpoints", updates))

    def commit(self, updates: Sequence[LogUpdate]) -> None:
        for update in updates:
            self.compacts[update.chain_id] = update.compact
            self.notes[update.chain_id] = update.note

    def latest_notes(self, chains: Sequence[str]) -> list[str]:
        """The latest durable signed checkpoint of each of `chains` that has one."""
        return [self.notes[chain] for chain in dict.fromkeys(chains) if chain in self.notes]

    # --- start-up, assignment, recovery ---------------------------------------------------------------

    def load(
        self,
        heads: Mapping[str, ChainHead],
        chain_key: bytes,
        audit_table: str,
        head_now: Callable[[str], ChainHead | None] | None = None,
        recover: bool = True,
    ) -> None:
        """Read the chains' compact ranges and latest checkpoints, and rebuild what a crash (or a
        store written before the Merkle log) left without nodes or checkpoints. Raises MerkleStoreError.

        A checkpoint past `heads` may be another writer's, written since the heads were read (its
        rows go in before its checkpoint): the chain's head is read again (`head_now`) before that
        is called an error. Seen at the start of a worker while another wrote the same store.
        With `recover` false, links without checkpoints are left for their writer: a chain another
        writer may be writing (its rows in, its checkpoint not yet) is not this one's to repair."""
        for chain_id, head in sorted(heads.items()):
            stored = self.merkle.checkpoints(chain_id)
            last = stored[-1] if stored else None
            if last is not None and last.chain_seq > head.seq and head_now is not None:
                head = head_now(chain_id) or head
            if last is not None and last.chain_seq > head.seq:
                raise MerkleStoreError(
                    f"chain {chain_id}: a checkpoint of link {last.chain_seq} but the rows end at "
                    f"link {head.seq}"
                )
            size = last.tree_size if last is not None else 0
            self.compacts[chain_id] = self.merkle.load_compact(chain_id, size) if size else CompactRange()
            if last is not None:
                self._check_last(chain_id, last)
                self.notes[chain_id] = last.note
            if recover and (last is None or last.chain_seq < head.seq):
                self._recover(chain_id, last, head, chain_key, audit_table)

    def _check_last(self, chain_id: str, last: StoredCheckpoint) -> None:
        """The stored right edge gives the last checkpoint's root, signed with this key."""
        try:
            checkpoint = open_checkpoint(last.note, self.signer.verifier(origin_for(self.log_name, chain_id)))
        except CheckpointError as exc:
            raise MerkleStoreError(
                f"chain {chain_id}: its last checkpoint does not open with this checkpoint key ({exc}); "
                "set FLOWAUDIT_CHECKPOINT_KEY or keep <data dir>/log.key as when the store was written"
            ) from None
        if (checkpoint.size, checkpoint.root) != (last.tree_size, last.root) or self.compacts[
            chain_id
        ].root() != last.root:
            raise MerkleStoreError(
                f"chain {chain_id}: the stored Merkle nodes do not give its last signed root"
            )

    def _recover(
        self,
        chain_id: str,
        last: StoredCheckpoint | None,
        head: ChainHead,
        chain_key: bytes,
        audit_table: str,
    ) -> None:
        first = (last.chain_seq if last else 0) + 1
        log.warning(
            "chain %s: links %d to %d have no Merkle checkpoint (a crash between the inserts, or a store "
            "written before the Merkle log): rebuilding them from the stored row hashes",
            chain_id,
            first,
            head.seq,
        )
        previous = self._link_hash_of(chain_id, first - 1, audit_table) if first > 1 else GENESIS
        for start in range(first, head.seq + 1, _RECOVERY_LINKS):
            end = min(head.seq, start + _RECOVERY_LINKS - 1)
            updates: list[LogUpdate] = []
            for seq, stored_link, hashes in self._links(chain_id, start, end, audit_table):
                if link_hash(chain_key, chain_id, seq, previous, hashes) != stored_link:
                    raise MerkleStoreError(
                        f"chain {chain_id} link {seq}: its row hashes do not give its HMAC link; "
                        "run `flowaudit verify` (the Merkle log is not rebuilt over a broken chain)"
                    )
                previous = stored_link
                after = {chain_id: updates[-1]} if updates else None
                updates.append(self.prepare(chain_id, seq, hashes, _now_ms(), after))
            self.insert(updates)
            self.commit(updates)

    def _link_hash_of(self, chain_id: str, seq: int, audit_table: str) -> bytes:
        rows = self.merkle.client.query(
            f"SELECT any(link_hash) FROM {audit_table} "
            "WHERE chain_id = {c:String} AND chain_seq = {s:UInt64}",
            parameters={"c": chain_id, "s": seq},
        ).result_rows
        return bytes(rows[0][0]) if rows else GENESIS

    def _links(
        self, chain_id: str, first: int, last: int, audit_table: str
    ) -> list[tuple[int, bytes, list[bytes]]]:
        """(seq, link hash, row hashes in link order) of links first..last, one query."""
        result: Any = self.merkle.client.query(
            "SELECT chain_seq, any(link_hash), "
            "arraySort((h, i) -> i, groupArray(row_hash), groupArray(link_index)) "
            f"FROM {audit_table} WHERE chain_id = {{c:String}} "
            "AND chain_seq BETWEEN {a:UInt64} AND {b:UInt64} "
            "GROUP BY chain_seq ORDER BY chain_seq",
            parameters={"c": chain_id, "a": first, "b": last},
        )
        links = [
            (int(seq), bytes(link), [bytes(h) for h in hashes]) for seq, link, hashes in result.result_rows
        ]
        expected = list(range(first, last + 1))
        if [seq for seq, _, _ in links] != expected:
            raise MerkleStoreError(f"chain {chain_id}: links {first} to {last} are not all in the store")
        return links


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


__all__ = [
    "DEFAULT_LOG_NAME",
    "LogKeyError",
    "LogUpdate",
    "MerkleLog",
    "chain_verifier",
    "load_log_signer",
    "read_public_key",
]
