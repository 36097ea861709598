"""The Merkle part of `flowaudit verify`: with the log's public key only, and a witness's state if given.

`sinks.verify` streams every chain's links in order and hands this check each link's row hashes
once it has recomputed them from the rows' content. Here they become leaves (SHA-256(0x00 ||
row_hash)) of a tree rebuilt in memory (a compact range: O(log n)), and after each link:
- the link has a stored checkpoint, whose signed note opens with the log's public key under the
  chain's origin, says the size, root and time of the stored columns, and equals the tree rebuilt
  from the rows: a row rewritten (even with the HMAC chain key, links recomputed) breaks it;
- when the witness cosigned a tree of that size for the chain, its root is the rebuilt one: a
  rewrite by a holder of the writer's keys (the HMAC and the Ed25519 key, checkpoints re-signed)
  breaks this one.
Every node the rebuilt tree completes (leaves included) is compared with the stored node table,
window by window (`NODES_WINDOW` nodes, one query by primary key ranges): none missing, none with
another hash, so every proof a receipt or the witness reads from the table is sound (an inner node
altered made a genuine receipt fail; it is now named). At the end of each chain: no checkpoint
beyond its last link (newest links deleted, their signed checkpoints left), the witness's tree is
not larger (truncated), the last nodes compared, and the stored right edge gives the last root.
Chains that have checkpoints but no rows, or that the witness saw but the store lacks (a chain
deleted, a partition or the table dropped or truncated), are problems too. Nodes outside the signed
trees are not read (no proof reads them), and a node stored twice with the same hash is harmless.

Reads: every stored checkpoint once (one row per link), every node of each chain's tree (about two
per row, in windows), and the right edge of each chain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from flowaudit.domain.checkpoint import CheckpointError, NoteVerifier, open_checkpoint
from flowaudit.domain.merkle import CompactRange, LevelRun, NodeId, leaf_hashes
from flowaudit.sinks.clickhouse import AuditStore
from flowaudit.sinks.merkle_log import LogKeyError, chain_verifier, read_public_key
from flowaudit.sinks.merkle_store import MerkleStore, MerkleStoreError, StoredCheckpoint
from flowaudit.sinks.startup import table_exists
from flowaudit.sinks.verify import VerifyReport, verification

# rebuilt nodes compared with the stored ones in one query each (about two per row: a window of
# verify's 200,000 rows)
NODES_WINDOW = 400_000


@dataclass
class WitnessedHead:
    """A chain's latest tree the witness cosigned: all verify needs of the witness's state."""

    size: int
    root: bytes


@dataclass
class MerkleCheck:
    """Fed link by link by `sinks.verify`; each method returns a problem (one line) or None."""

    log_key: NoteVerifier
    checkpoints: dict[str, dict[int, StoredCheckpoint]]
    witnessed: Mapping[str, WitnessedHead] = field(default_factory=dict)
    merkle: MerkleStore | None = None
    compacts: dict[str, CompactRange] = field(default_factory=dict)
    checked_links: int = 0
    # the nodes the links read since the last comparison completed, per level: (first index, hashes)
    rebuilt: dict[int, tuple[int, list[bytes]]] = field(default_factory=dict)
    rebuilt_count: int = 0

    @classmethod
    def load(
        cls, merkle: MerkleStore, log_key: NoteVerifier, witnessed: Mapping[str, WitnessedHead] | None = None
    ) -> MerkleCheck:
        """Every stored checkpoint, by chain and link. Raises MerkleStoreError."""
        rows = merkle._run(
            lambda: (
                merkle.client.query(
                    "SELECT DISTINCT chain_id, chain_seq, tree_size, root_hash, "
                    "toUnixTimestamp64Milli(signed_at), note "
                    f"FROM {merkle.checkpoints_table} ORDER BY chain_id, chain_seq"
                ).result_rows
            ),
            "read the signed checkpoints",
        )
        by_chain: dict[str, dict[int, StoredCheckpoint]] = {}
        for chain, seq, size, root, signed, note in rows:
            stored = StoredCheckpoint(str(chain), int(seq), int(size), _raw(root), int(signed), str(note))
            links = by_chain.setdefault(stored.chain_id, {})
            if int(seq) in links and links[int(seq)] != stored:
                raise MerkleStoreError(f"chain {chain} link {seq} has two different checkpoints")
            links[int(seq)] = stored
        return cls(log_key, by_chain, dict(witnessed or {}), merkle)

    def link(self, chain: str, seq: int, row_hashes: Sequence[bytes]) -> str | None:
        compact = self.compacts.setdefault(chain, CompactRange())
        before = compact.size
        self._rebuilt(compact.extend(leaf_hashes(row_hashes)).runs)
        where = f"chain {chain} link {seq}"
        head = self.witnessed.get(chain)
        if head is not None and before < head.size < compact.size:
            return (
                f"{where}: the witness cosigned a tree of {head.size} leaves, which ends inside this "
                "link: the links were rewritten"
            )
        stored = self.checkpoints.get(chain, {}).get(seq)
        if stored is None:
            return f"{where}: no signed checkpoint (the Merkle log lacks it: tampered, or written without it)"
        try:
            checkpoint = open_checkpoint(stored.note, chain_verifier(self.log_key, chain))
        except CheckpointError as exc:
            return f"{where}: its checkpoint does not verify with the log's public key ({exc})"
        if (checkpoint.size, checkpoint.root) != (stored.tree_size, stored.root) or (
            checkpoint.time_ms is not None and checkpoint.time_ms != stored.signed_at_ms
        ):
            return f"{where}: the checkpoint's columns differ from its signed note (altered)"
        if (checkpoint.size, checkpoint.root) != (compact.size, compact.root()):
            return (
                f"{where}: the rows do not give the signed tree ({compact.size} leaves rebuilt, "
                f"{checkpoint.size} signed): rows rewritten, added or deleted, links recomputed"
            )
        self.checked_links += 1
        problem = self._against_witness(chain, compact)
        if problem is None and self.rebuilt_count >= NODES_WINDOW:
            problem = self.compare_nodes(chain)
        return problem

    def _rebuilt(self, runs: Sequence[LevelRun]) -> None:
        for run in runs:
            first, hashes = self.rebuilt.setdefault(run.level, (run.first, []))
            if run.first != first + len(hashes):  # links complete the nodes of a level in order
                raise ValueError(f"Merkle nodes of level {run.level} rebuilt out of order")
            hashes.extend(run.hashes)
            self.rebuilt_count += len(run.hashes)

    def compare_nodes(self, chain: str) -> str | None:
        """The stored nodes of the links read since the last comparison are exactly the nodes the
        rows give (none missing, none with another hash, a copy with the same hash harmless): every
        inclusion or consistency proof a receipt or the witness reads is then sound. Forgets them."""
        rebuilt, self.rebuilt, self.rebuilt_count = self.rebuilt, {}, 0
        if self.merkle is None or not rebuilt:
            return None
        ranges = {level: (first, first + len(hashes)) for level, (first, hashes) in rebuilt.items()}
        try:
            stored = self.merkle.node_ranges(chain, ranges)
        except MerkleStoreError as exc:
            return f"chain {chain}: the Merkle node table cannot be read ({exc})"
        found, previous = 0, (-1, -1)
        for level, index, digest in stored:
            first, hashes = rebuilt[level]
            if digest != hashes[index - first]:
                node = NodeId(level, index)
                return f"chain {chain}: Merkle node {node} is not the one its rows give (node table altered)"
            found += (level, index) != previous  # rows come in order: a copy follows its original
            previous = (level, index)
        if found < sum(len(hashes) for _, hashes in rebuilt.values()):
            present = {(level, index) for level, index, _ in stored}
            node = next(
                NodeId(level, first + offset)
                for level, (first, hashes) in sorted(rebuilt.items())
                for offset in range(len(hashes))
                if (level, first + offset) not in present
            )
            return f"chain {chain}: Merkle node {node} is missing (node table altered)"
        return None

    def _against_witness(self, chain: str, compact: CompactRange) -> str | None:
        head = self.witnessed.get(chain)
        if head is not None and head.size == compact.size and head.root != compact.root():
            return (
                f"chain {chain}: the witness cosigned another tree of {head.size} leaves: the history "
                "was rewritten and re-signed (by a holder of the writer's keys)"
            )
        return None

    def end_chain(self, chain: str, last_seq: int) -> str | None:
        compact = self.compacts.get(chain, CompactRange())
        later = [seq for seq in self.checkpoints.get(chain, {}) if seq > last_seq]
        if later:
            return (
                f"chain {chain}: signed checkpoints up to link {max(later)}, but its rows end at link "
                f"{last_seq}: the newest links were deleted"
            )
        head = self.witnessed.get(chain)
        if head is not None and head.size > compact.size:
            return (
                f"chain {chain}: the witness cosigned {head.size} leaves, the store holds {compact.size}: "
                "the chain was truncated (its newest links deleted with their checkpoints)"
            )
        problem = self.compare_nodes(chain)
        if problem:
            return problem
        if self.merkle is not None and compact.size:
            try:
                stored_root = self.merkle.load_compact(chain, compact.size).root()
            except MerkleStoreError as exc:
                return f"chain {chain}: the Merkle node table is incomplete ({exc})"
            if stored_root != compact.root():
                return (
                    f"chain {chain}: the stored Merkle nodes do not give the signed root (node table altered)"
                )
        return None

    def missing_chains(self, chains_with_rows: Sequence[str]) -> str | None:
        """Chains the checkpoints or the witness know, which have no rows in the store."""
        present = set(chains_with_rows)
        for chain in sorted(set(self.checkpoints) - present):
            last = max(self.checkpoints[chain].values(), key=lambda c: c.chain_seq)
            return (
                f"chain {chain}: signed checkpoints up to {last.tree_size} leaves but no rows: "
                "the chain was deleted"
            )
        for chain in sorted(set(self.witnessed) - present):
            head = self.witnessed[chain]
            return (
                f"chain {chain}: the witness cosigned {head.size} leaves, the store has no rows of it: "
                "the chain, its partition or the table was deleted"
            )
        return None


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass(frozen=True)
class VerifyOptions:
    """What `flowaudit verify` asks for beyond the HMAC chain (sent to a worker as it is: picklable).

    `public_key`: the log's vkey (None: the writer's own, when it keeps a Merkle log; else no Merkle
    check); `witnessed`: (chain, size, root) of the trees a witness cosigned."""

    public_key: str | None = None
    witnessed: tuple[tuple[str, int, bytes], ...] = ()


def merkle_check(store: AuditStore, options: VerifyOptions) -> MerkleCheck | None:
    """The Merkle check `options` ask for on this store, or None. Raises MerkleStoreError (the store
    has no Merkle log, or it cannot be read) or LogKeyError (a bad public key)."""
    if options.public_key:
        key: NoteVerifier | None = read_public_key(options.public_key)
    else:
        key = store.log_signer.verifier() if store.log_signer is not None else None
    if key is None:
        if options.witnessed:
            raise MerkleStoreError("the check against a witness needs the log's public key (--public-key)")
        return None
    database = store.table.rpartition(".")[0] or None
    merkle = MerkleStore(store.client, database)
    if not table_exists(store.client, merkle.checkpoints_table):
        raise MerkleStoreError(
            "the store has no Merkle log (written before it: a worker of this version builds it at start-up)"
        )
    heads = {chain: WitnessedHead(size, root) for chain, size, root in options.witnessed}
    return MerkleCheck.load(merkle, key, heads)


def full_verification(
    store: AuditStore, report: VerifyReport, window_rows: int, options: VerifyOptions
) -> Iterator[None]:
    """`sinks.verify.verification` with the Merkle check `options` ask for (its first step loads it)."""
    try:
        check = merkle_check(store, options)
    except (MerkleStoreError, LogKeyError) as exc:
        report.problems.append(str(exc))
        return
    except Exception as exc:  # the store failed: no verdict
        report.error = f"the store could not be read: {type(exc).__name__}: {exc}"
        return
    yield
    yield from verification(store, report, window_rows, check)


def verify_with(store: AuditStore, options: VerifyOptions, window_rows: int = 200_000) -> VerifyReport:
    report = VerifyReport()
    for _ in full_verification(store, report, window_rows, options):
        pass
    return report


__all__ = [
    "MerkleCheck",
    "VerifyOptions",
    "WitnessedHead",
    "full_verification",
    "merkle_check",
    "verify_with",
]
