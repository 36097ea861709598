"""The writer's Merkle log on chDB (`sinks.merkle_log`, wired into `AuditStore`): nodes and a signed
checkpoint per link, recovery after a crash between the inserts, the migration of an older store,
and the Merkle part of verify with the public key only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.checkpoint import NoteSigner, open_checkpoint
from flowaudit.domain.merkle import leaf_hashes, root_of
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore, StoreError
from flowaudit.sinks.merkle_log import (
    LogKeyError,
    chain_verifier,
    load_log_signer,
    read_public_key,
)
from flowaudit.sinks.merkle_store import MerkleStore
from flowaudit.sinks.merkle_verify import MerkleCheck
from flowaudit.sinks.verify import verify_store
from tests.sinks.test_clickhouse_store import generated

pytestmark = pytest.mark.integration

SIGNER = NoteSigner("audit.test", bytes(range(32)))


def _write(store: AuditStore, records: list[AuditRecord], batch: int) -> None:
    for start in range(0, len(records), batch):
        store.write(records[start : start + batch])


def _check(store: AuditStore, **kwargs: Any) -> MerkleCheck:
    return MerkleCheck.load(MerkleStore(store.client, store.database), SIGNER.verifier(), **kwargs)


def _row_hashes(store: AuditStore, chain: str) -> list[bytes]:
    _, rows = store.query(
        f"SELECT row_hash FROM {store.table} WHERE chain_id = {{c:String}} ORDER BY chain_seq, link_index",
        {"c": chain},
    )
    return [bytes(row[0]) for row in rows]


def test_every_link_gets_its_nodes_and_a_signed_checkpoint(store_factory: Any, policy: Any) -> None:
    store = store_factory(log_signer=SIGNER)
    records = generated(policy, 900)
    _write(store, records, 200)
    merkle = MerkleStore(store.client, store.database)
    for chain, head in store.heads.items():
        stored = merkle.checkpoints(chain)
        assert [c.chain_seq for c in stored] == list(range(1, head.seq + 1))
        hashes = _row_hashes(store, chain)
        last = open_checkpoint(stored[-1].note, chain_verifier(SIGNER.verifier(), chain))
        assert last.origin == f"audit.test/{chain}"
        assert (last.size, last.root) == (len(hashes), root_of(leaf_hashes(hashes)))
        assert merkle.stored_size(chain) == len(hashes)
        assert store.latest_checkpoints([chain]) == [stored[-1].note]
    report = verify_store(store, merkle=_check(store))
    assert report.ok, report.problems
    assert report.checks == ["hmac", "merkle"] and report.checkpoints == report.links


def test_a_batch_prepared_after_another_extends_its_tree(store_factory: Any, policy: Any) -> None:
    store = store_factory(log_signer=SIGNER)
    records = generated(policy, 400)
    first = store.prepare(records[:200])
    second = store.prepare(records[200:], after=first)
    store.insert(first)
    store.insert(second)
    assert verify_store(store, merkle=_check(store)).ok


def test_a_crash_between_the_row_insert_and_the_node_insert_is_recovered(
    store_factory: Any, policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory(log_signer=SIGNER)
    records = generated(policy, 600)
    _write(store, records[:300], 150)
    assert store.log is not None

    def crash(updates: Any) -> None:
        raise RuntimeError("killed between the inserts")

    monkeypatch.setattr(store.log, "insert", crash)
    with pytest.raises(StoreError):
        store.write(records[300:450])  # the rows are in, their nodes and checkpoints are not
    monkeypatch.undo()
    assert not verify_store(store, merkle=_check(store)).ok
    restarted = store_factory(log_signer=SIGNER)  # start-up rebuilds the missing checkpoints
    _write(restarted, records[450:], 150)
    report = verify_store(restarted, merkle=_check(restarted))
    assert report.ok, report.problems
    assert report.rows == 600


def test_an_older_store_migrates_at_start_up_and_a_wrong_key_is_refused(
    store_factory: Any, policy: Any
) -> None:
    old = store_factory()  # a writer without the Merkle log: HMAC chain only
    _write(old, generated(policy, 500), 100)
    assert verify_store(old).ok
    migrated = store_factory(log_signer=SIGNER)
    report = verify_store(migrated, merkle=_check(migrated))
    assert report.ok and report.checkpoints == report.links == 10, report.problems
    with pytest.raises(StoreError, match="checkpoint key"):
        store_factory(log_signer=NoteSigner("audit.test", bytes(32)))


def test_the_public_key_alone_verifies(store_factory: Any, policy: Any) -> None:
    store = store_factory(log_signer=SIGNER)
    _write(store, generated(policy, 300), 100)
    keyless = AuditStore(store.url, policy, b"", database=store.database)  # a reader without the chain key
    keyless.connect(writer=False)
    try:
        report = verify_store(keyless, merkle=_check(keyless))
    finally:
        keyless.close()
    assert report.ok and report.checks == ["merkle"], report.problems


def test_keys_in_the_data_directory(tmp_path: Path) -> None:
    signer = load_log_signer(None, tmp_path, "audit.example")
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600
    again = load_log_signer(None, tmp_path, "audit.example")
    assert again.public_key == signer.public_key
    public = read_public_key(str(tmp_path / "log.pub"))
    assert (public.name, public.public_key) == ("audit.example", signer.public_key)
    assert read_public_key(public.vkey).key_id == public.key_id
    with pytest.raises(LogKeyError, match="no checkpoint key"):
        load_log_signer(None, tmp_path / "elsewhere", "audit.example", create=False)
    with pytest.raises(LogKeyError, match="FLOWAUDIT_CHECKPOINT_KEY"):
        load_log_signer("PRIVATE+KEY+x+00000000+AAAA", tmp_path, "audit.example")


def test_a_chain_taken_over_continues_the_previous_owners_tree(store_factory: Any, policy: Any) -> None:
    """One writer per chain (rebalance): the new owner reads the tree where the old one left it."""
    records = generated(policy, 800)
    first, second = store_factory(log_signer=SIGNER), store_factory(log_signer=SIGNER)
    _write(first, records[:400], 100)
    chains = sorted(first.heads)
    first.release_chains(chains)
    second.take_chains(chains)
    _write(second, records[400:], 100)
    assert second.log is not None and {c.size for c in second.log.compacts.values()} == {400}
    report = verify_store(second, merkle=_check(second))
    assert report.ok and report.checkpoints == report.links == 16, report.problems


def test_a_checkpoint_written_after_the_heads_were_read_is_another_writers_not_an_error(
    store_factory: Any, policy: Any
) -> None:
    """Seen in the killed-worker test on the real broker: a worker starting while another wrote the
    store read the chains' heads, then the other wrote a link (rows, then its checkpoint), then the
    starting worker read that checkpoint, past the heads it held, and refused to start."""
    from flowaudit.sinks.merkle_log import MerkleLog
    from flowaudit.sinks.merkle_store import MerkleStoreError

    store = store_factory(log_signer=SIGNER)
    _write(store, generated(policy, 400), 200)
    chain, head = next(iter(store.heads.items()))
    stale = {chain: dataclasses.replace(head, seq=head.seq - 1)}  # as read before the last link
    fresh = MerkleLog(MerkleStore(store.client, store.database), SIGNER)
    with pytest.raises(MerkleStoreError, match="but the rows end at"):
        fresh.load(stale, store.key, store.table)
    fresh.load(stale, store.key, store.table, lambda c: store.load_heads([c]).get(c))
    assert fresh.notes[chain] == store.latest_checkpoints([chain])[0]
