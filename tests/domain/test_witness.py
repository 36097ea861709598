"""The witness's judgement (`domain.witness`): every outcome of its table, on trees built in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from flowaudit.domain.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    cosignature_time,
    open_checkpoint,
)
from flowaudit.domain.merkle import consistency_proof, leaf_hashes, root_of, tree_nodes
from flowaudit.domain.witness import (
    BAD_SIGNATURE,
    COSIGNED,
    FORK,
    SHRINK,
    STALE,
    UNCHANGED,
    UNPROVABLE,
    ProofUnavailable,
    Witness,
)

LOG = NoteSigner("audit.test", bytes(range(32)))
WITNESS = CosignatureSigner("witness.test", bytes(range(1, 33)))
CHAIN = "flowaudit.device-sync/0"
ORIGIN = f"audit.test/{CHAIN}"


def _leaves(count: int, tag: bytes = b"") -> list[bytes]:
    return leaf_hashes([hashlib.sha256(tag + str(i).encode()).digest() for i in range(count)])


class Log:
    """A log kept in memory: its leaves, checkpoints signed with LOG, proofs from its own nodes."""

    def __init__(self, leaves: list[bytes], signer: NoteSigner = LOG) -> None:
        self.leaves = leaves
        self.signer = signer.for_name(ORIGIN)

    def note(self, size: int) -> str:
        return Checkpoint(ORIGIN, size, root_of(self.leaves[:size]), 1_000).sign(self.signer)

    def proofs(self, chain: str, old: int, new: int) -> Sequence[bytes]:
        assert chain == CHAIN
        try:  # as the store does: the nodes of a tree larger than this one are not there
            return consistency_proof(old, new, tree_nodes(self.leaves[:new]))
        except KeyError as exc:
            raise ProofUnavailable(f"node {exc} missing") from None


def _witness() -> Witness:
    return Witness(LOG.verifier(), WITNESS)


def test_a_growing_log_is_cosigned_and_its_older_checkpoints_are_stale() -> None:
    log, witness = Log(_leaves(40)), _witness()
    first = witness.observe(log.note(7), 100, log.proofs)
    assert first.outcome == COSIGNED and first.cosigned is not None
    assert cosignature_time(first.cosigned, WITNESS.verifier()) == 100
    assert open_checkpoint(first.cosigned, LOG.verifier(ORIGIN), [WITNESS.verifier()]).size == 7
    for size in (8, 13, 32, 40):
        assert witness.observe(log.note(size), 200 + size, log.proofs).outcome == COSIGNED
    assert witness.trees[CHAIN].size == 40 and witness.trees[CHAIN].advanced_at == 240
    assert witness.observe(log.note(40), 300, log.proofs).outcome == UNCHANGED
    assert witness.observe(log.note(21), 300, log.proofs).outcome == STALE
    assert witness.trees[CHAIN].size == 40


def test_a_rewritten_history_is_a_fork_even_when_signed_with_the_log_key() -> None:
    log, witness = Log(_leaves(40)), _witness()
    witness.observe(log.note(20), 1, log.proofs)
    forged = Log(log.leaves[:5] + _leaves(35, b"forged"))  # row 5 on rewritten, links re-signed
    for size in (20, 30):
        observation = witness.observe(forged.note(size), 2, forged.proofs)
        assert observation.outcome == FORK and observation.cosigned is None
    assert witness.trees[CHAIN].root == root_of(log.leaves[:20])  # the fork never becomes its view


def test_a_truncated_log_is_a_shrink_with_or_without_a_proof() -> None:
    log, witness = Log(_leaves(40)), _witness()
    witness.observe(log.note(30), 1, log.proofs)
    regrown = Log(log.leaves[:12] + _leaves(5, b"after the truncation"))

    def no_nodes(chain: str, old: int, new: int) -> Sequence[bytes]:
        raise ProofUnavailable("nodes missing")

    assert witness.observe(regrown.note(17), 2, regrown.proofs).outcome == SHRINK
    assert witness.observe(regrown.note(17), 2, no_nodes).outcome == SHRINK
    assert witness.observe(log.note(35), 3, no_nodes).outcome == UNPROVABLE
    assert witness.observe(log.note(35), 3, log.proofs).outcome == COSIGNED


@pytest.mark.parametrize(
    "note",
    [
        Log(_leaves(4), NoteSigner("audit.test", bytes(32))).note(4),  # another key
        Checkpoint("other.log/x/0", 1, root_of(_leaves(1)), 0).sign(LOG.for_name("other.log/x/0")),
        "not a note",
    ],
    ids=["another key", "another log", "garbage"],
)
def test_what_the_log_did_not_sign_is_refused(note: str) -> None:
    witness = _witness()
    assert witness.observe(note, 1, Log(_leaves(4)).proofs).outcome == BAD_SIGNATURE
    assert witness.trees == {}
