"""The witness's judgement of a log's checkpoints: pure (no files, no Kafka, no store).

A witness keeps, per chain, the latest tree it cosigned (`WitnessedTree`). For each checkpoint read
from the checkpoints topic, `Witness.observe` opens it with the log's public key under the chain's
origin, then compares it with that tree, with a consistency proof between the two sizes obtained
from `proofs(chain, smaller, larger)` (read from the store by the caller: the proof is checked
against the two signed roots, so the store is not trusted):

| the new checkpoint's tree | proof holds | outcome |
|---|---|---|
| first one seen for the chain | (none needed) | `cosigned` (trust on first use) |
| same size, same root | (none needed) | `unchanged` |
| same size, another root | (none possible) | `fork` |
| larger | yes / no | `cosigned` / `fork` |
| smaller | yes / no, or no proof at all | `stale` (an older checkpoint arriving late) / `shrink` |
| larger, but no proof could be read | | `unprovable` (tried again with the next checkpoint) |
| not signed by the log's key for its origin | | `bad_signature` |

Only `cosigned` changes the state: a fork or a shrink never becomes the witness's view, so every
later checkpoint of a rewritten log keeps failing against the tree witnessed before the rewrite.
The cosignature is C2SP tlog-cosignature (Ed25519, timestamped) over the checkpoint body.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowaudit.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    NoteVerifier,
    cosign,
    open_checkpoint,
    parse_checkpoint,
    split_note,
)
from flowaudit.domain.merkle import ProofError, verify_consistency

COSIGNED, UNCHANGED, STALE, FORK, SHRINK, BAD_SIGNATURE, UNPROVABLE = (
    "cosigned",
    "unchanged",
    "stale",
    "fork",
    "shrink",
    "bad_signature",
    "unprovable",
)
ALARMS = frozenset({FORK, SHRINK})


class ProofUnavailable(Exception):
    """The consistency proof could not be read (the store is down, or lacks the nodes)."""


# (chain, smaller size, larger size) -> the consistency proof between them
ProofSource = Callable[[str, int, int], Sequence[bytes]]


@dataclass(frozen=True, slots=True)
class WitnessedTree:
    """A chain's latest tree the witness cosigned: size, root, the cosigned note, and when (POSIX s)."""

    size: int
    root: bytes
    note: str
    advanced_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "note": self.note,
            "advanced_at": self.advanced_at,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> WitnessedTree:
        return cls(
            int(value["size"]), base64.b64decode(value["root"]), str(value["note"]), int(value["advanced_at"])
        )


@dataclass(frozen=True, slots=True)
class Observation:
    chain: str | None
    outcome: str
    message: str
    cosigned: str | None = None  # the note with the witness's cosignature, when cosigned


@dataclass
class Witness:
    """One log's witness: its public key, the witness's own signer, and the state (per chain)."""

    log_key: NoteVerifier
    signer: CosignatureSigner
    trees: dict[str, WitnessedTree] = field(default_factory=dict)

    def chain_of(self, origin: str) -> str | None:
        prefix = self.log_key.name + "/"
        return origin[len(prefix) :] if origin.startswith(prefix) and len(origin) > len(prefix) else None

    def observe(self, note: str, now: int, proofs: ProofSource) -> Observation:
        """Judge one published checkpoint (see the module's table); cosign and keep it when it
        extends the chain's latest witnessed tree."""
        try:
            origin = parse_checkpoint(split_note(note)[0]).origin
            chain = self.chain_of(origin)
            if chain is None:
                return Observation(
                    None, BAD_SIGNATURE, f"origin {origin} is not of the log {self.log_key.name}"
                )
            checkpoint = open_checkpoint(note, NoteVerifier(origin, self.log_key.public_key))
        except CheckpointError as exc:
            return Observation(None, BAD_SIGNATURE, f"not a checkpoint signed by the log: {exc}")
        latest = self.trees.get(chain)
        outcome, message = self._judge(chain, latest, checkpoint, proofs)
        if outcome != COSIGNED:
            return Observation(chain, outcome, message)
        cosigned = cosign(note, self.signer, now)
        self.trees[chain] = WitnessedTree(checkpoint.size, checkpoint.root, cosigned, now)
        return Observation(chain, outcome, message, cosigned)

    def _judge(
        self, chain: str, latest: WitnessedTree | None, new: Checkpoint, proofs: ProofSource
    ) -> tuple[str, str]:
        where = f"chain {chain}"
        if latest is None:
            return COSIGNED, f"{where}: first checkpoint, {new.size} leaves"
        if new.size == latest.size:
            if new.root == latest.root:
                return UNCHANGED, f"{where}: {new.size} leaves, as witnessed"
            return FORK, f"{where}: another tree of {new.size} leaves than the one witnessed (a fork)"
        small, large = sorted((new.size, latest.size))
        try:
            proof = proofs(chain, small, large)
        except ProofUnavailable as exc:
            if new.size < latest.size:
                return (
                    SHRINK,
                    f"{where}: {new.size} leaves after {latest.size} witnessed, "
                    f"not provably a prefix ({exc})",
                )
            return UNPROVABLE, f"{where}: no consistency proof from {small} to {large} leaves ({exc})"
        old_root, new_root = (new.root, latest.root) if new.size < latest.size else (latest.root, new.root)
        try:
            verify_consistency(small, large, old_root, new_root, proof)
        except ProofError as exc:
            if new.size < latest.size:
                return (
                    SHRINK,
                    f"{where}: {new.size} leaves after {latest.size} witnessed, not a prefix ({exc})",
                )
            return FORK, f"{where}: {new.size} leaves do not extend the {latest.size} witnessed ({exc})"
        if new.size < latest.size:
            return STALE, f"{where}: an older checkpoint ({new.size} leaves, {latest.size} witnessed)"
        return COSIGNED, f"{where}: {latest.size} -> {new.size} leaves, consistent"


__all__ = [
    "ALARMS",
    "BAD_SIGNATURE",
    "COSIGNED",
    "FORK",
    "SHRINK",
    "STALE",
    "UNCHANGED",
    "UNPROVABLE",
    "Observation",
    "ProofSource",
    "ProofUnavailable",
    "Witness",
    "WitnessedTree",
]
