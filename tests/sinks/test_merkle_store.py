"""The Merkle tables on chDB (`sinks.merkle_store`): node rows per batch, proofs read by primary key
in one query, checks against signed checkpoints, and what a rewritten or damaged table looks like."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pytest

from flowaudit.domain.checkpoint import Checkpoint, NoteSigner, open_checkpoint
from flowaudit.domain.merkle import (
    CompactRange,
    NodeId,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hashes,
    root_of,
    tree_nodes,
)
from flowaudit.sinks.merkle_store import (
    CHECKPOINT_COLUMNS,
    MerkleStore,
    MerkleStoreError,
    checkpoints_payload,
    extend_chain,
)

pytestmark = pytest.mark.integration

CHAIN = "flowaudit.device-sync/0"
ORIGIN = f"audit.flowaudit.test/{CHAIN}"
BATCHES = [1, 2, 5, 64, 100, 333, 1, 500]  # 1,006 rows, batches of every parity


def _row_hashes(count: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"row {i}{salt}".encode()).digest() for i in range(count)]


class CountingClient:
    """The store's client, counting the queries that go through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queries = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.client.query(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _write(merkle: MerkleStore, chain: str, rows: list[bytes]) -> list[Checkpoint]:
    """Rows appended batch by batch; the checkpoint after each batch (unsigned here)."""
    compact, position, checkpoints = CompactRange(), 0, []
    for size in BATCHES:
        old = compact.size
        extension = extend_chain(compact, rows[position : position + size])
        merkle.insert_nodes(chain, old, extension)
        position += size
        checkpoints.append(Checkpoint(f"audit.flowaudit.test/{chain}", extension.size, extension.root))
    return checkpoints


@pytest.fixture
def merkle(store_factory: Any) -> MerkleStore:
    store = store_factory()
    merkle = MerkleStore(CountingClient(store.client), store.database)
    merkle.apply_ddl()
    merkle.apply_ddl()  # idempotent
    return merkle


def test_batches_store_every_complete_subtree_and_proofs_match_the_whole_tree(merkle: MerkleStore) -> None:
    rows = _row_hashes(sum(BATCHES))
    checkpoints = _write(merkle, CHAIN, rows)
    size = len(rows)
    nodes = tree_nodes(leaf_hashes(rows))
    count = merkle.client.client.query(f"SELECT count() FROM {merkle.nodes_table}").result_rows[0][0]
    assert count == len(nodes) == 2 * size - bin(size).count("1")  # every complete subtree, once
    assert merkle.stored_size(CHAIN) == size
    assert merkle.load_compact(CHAIN).root() == root_of(leaf_hashes(rows)) == checkpoints[-1].root
    for index in [0, 1, 2, 7, 8, 63, 64, 500, 1004, 1005]:
        before = merkle.client.queries
        assert merkle.inclusion_proof(CHAIN, index, size) == inclusion_proof(index, size, nodes)
        assert merkle.client.queries == before + 1  # one query per proof
        merkle.check_inclusion(CHAIN, index, rows[index], checkpoints[-1])
    for old in checkpoints:
        for new in checkpoints:
            if old.size <= new.size:
                assert merkle.consistency_proof(CHAIN, old.size, new.size) == consistency_proof(
                    old.size, new.size, tree_nodes(leaf_hashes(rows[: new.size]))
                )
                merkle.check_consistency(CHAIN, old, new)
    # a proof in an older tree reads the same table: nodes are never changed by later leaves
    merkle.check_inclusion(CHAIN, 3, rows[3], checkpoints[2])
    before = merkle.client.queries
    inclusion, consistency = merkle.proofs(CHAIN, 5, size, old_size=8)
    assert merkle.client.queries == before + 1 and inclusion and consistency


def test_a_wrong_row_or_a_rewritten_history_fails_against_the_signed_checkpoint(merkle: MerkleStore) -> None:
    rows = _row_hashes(sum(BATCHES))
    signer = NoteSigner(ORIGIN, hashlib.sha256(b"log key").digest())
    signed = _write(merkle, CHAIN, rows)[-1]
    note = Checkpoint(ORIGIN, signed.size, signed.root, time_ms=1_762_336_800_000).sign(signer)
    checkpoint = open_checkpoint(note, signer.verifier())  # the public key is all it takes
    with pytest.raises(ProofError):
        merkle.check_inclusion(CHAIN, 10, rows[11], checkpoint)  # another row's hash
    # whoever rewrites a row and recomputes every node of the tree still cannot reach the signed root
    forged = list(rows)
    forged[10] = hashlib.sha256(b"altered row").digest()
    _write(merkle, "forged/0", forged)
    merkle.check_inclusion("forged/0", 11, forged[11], Checkpoint("x", *_head(forged)))
    with pytest.raises(ProofError):
        merkle.check_inclusion("forged/0", 10, forged[10], checkpoint)
    with pytest.raises(ProofError):
        merkle.check_inclusion("forged/0", 900, forged[900], checkpoint)  # far from the altered row too


def _head(rows: list[bytes]) -> tuple[int, bytes]:
    return len(rows), root_of(leaf_hashes(rows))


def test_a_retried_insert_is_deduplicated_and_a_conflicting_node_is_refused(merkle: MerkleStore) -> None:
    rows = _row_hashes(40)
    compact = CompactRange()
    extension = extend_chain(compact, rows)
    merkle.insert_nodes(CHAIN, 0, extension)
    merkle.insert_nodes(CHAIN, 0, extension)  # a retry of an insert that had succeeded
    count = merkle.client.client.query(f"SELECT count() FROM {merkle.nodes_table}").result_rows[0][0]
    assert count == extension.count
    merkle.client.client.command(
        f"INSERT INTO {merkle.nodes_table} VALUES ('{CHAIN}', 1, 3, unhex('{'00' * 32}'))"
    )
    with pytest.raises(MerkleStoreError, match=r"node NodeId\(level=1, position=3\) is stored with two"):
        merkle.inclusion_proof(CHAIN, 4, 40)  # reads (1, 3): leaves 6 and 7
    with pytest.raises(MerkleStoreError, match="missing"):
        merkle.inclusion_proof(CHAIN, 6, 41)  # leaf 40 was never written
    assert merkle.read_nodes(CHAIN, [NodeId(0, 0)]) == {NodeId(0, 0): leaf_hashes(rows[:1])[0]}


def test_checkpoints_are_stored_per_link_and_open_with_the_public_key(merkle: MerkleStore) -> None:
    signer = NoteSigner(ORIGIN, hashlib.sha256(b"log key").digest())
    for seq, checkpoint in enumerate(_write(merkle, CHAIN, _row_hashes(sum(BATCHES))), start=1):
        stamped = Checkpoint(ORIGIN, checkpoint.size, checkpoint.root, time_ms=1_762_336_800_000 + seq)
        merkle.insert_checkpoint(CHAIN, seq, stamped, stamped.sign(signer))
        merkle.insert_checkpoint(CHAIN, seq, stamped, stamped.sign(signer))  # a retry
    stored = merkle.checkpoints(CHAIN)
    assert [c.chain_seq for c in stored] == list(range(1, len(BATCHES) + 1))
    last = stored[-1]
    assert last.tree_size == sum(BATCHES) and last.signed_at_ms == 1_762_336_800_000 + len(BATCHES)
    opened = open_checkpoint(last.note, signer.verifier())
    assert (opened.size, opened.root) == (last.tree_size, last.root)
    assert merkle.checkpoints(CHAIN, chain_seq=3)[0].tree_size == sum(BATCHES[:3])


def test_checkpoint_rows_of_several_chains_go_in_one_insert_exactly(merkle: MerkleStore) -> None:
    """`insert_checkpoints` (the writer: every chain of a batch in one INSERT, as an Arrow stream):
    what is read back is what was signed, a checkpoint without a time stored at the epoch, and a
    retry with the same token adds nothing."""
    signer = NoteSigner(ORIGIN, hashlib.sha256(b"log key").digest())
    other = NoteSigner(ORIGIN.replace("/0", "/1"), hashlib.sha256(b"log key").digest())
    first = Checkpoint(ORIGIN, 5, hashlib.sha256(b"a").digest(), time_ms=1_762_336_800_123)
    second = Checkpoint(other.name, 7, hashlib.sha256(b"b").digest())
    rows = [(CHAIN, 4, first, first.sign(signer)), (CHAIN[:-1] + "1", 9, second, second.sign(other))]
    table = pa.ipc.open_stream(checkpoints_payload(rows)).read_all()
    assert table.schema.names == list(CHECKPOINT_COLUMNS)
    assert table.column("tree_size").to_pylist() == [5, 7]
    merkle.insert_checkpoints(rows, "token-1")
    merkle.insert_checkpoints(rows, "token-1")  # a retry of an insert that had succeeded
    (one,) = merkle.checkpoints(CHAIN)
    (two,) = merkle.checkpoints(CHAIN[:-1] + "1")
    assert (one.chain_seq, one.tree_size, one.root, one.signed_at_ms, one.note) == (
        4,
        5,
        first.root,
        1_762_336_800_123,
        rows[0][3],
    )
    assert (two.chain_seq, two.tree_size, two.root, two.signed_at_ms, two.note) == (
        9,
        7,
        second.root,
        0,
        rows[1][3],
    )
    assert merkle.client.query(f"SELECT count() FROM {merkle.checkpoints_table}").result_rows == [(2,)]
