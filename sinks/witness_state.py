"""A witness's state file (`flowaudit witness --state FILE`): JSON, the witness's own, never in the
audit store. It holds the log's vkey, the witness's vkey, per chain the latest tree the witness
cosigned (size, root, cosigned note, when), and the next offset to read of each partition of the
checkpoints topic. Read by the witness, by `verify --witness`, by receipts and by the worker's
receipt view (FLOWAUDIT_WITNESS_STATE); written by the witness alone, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flowaudit.domain.witness import Witness, WitnessedTree

STATE_FORMAT = 1


class WitnessError(Exception):
    """A witness's file is unusable, or the witness cannot start; one line."""


def load_state(path: Path) -> tuple[dict[str, WitnessedTree], dict[int, int]]:
    """The chains' latest witnessed trees and the topic's next offsets (none: no state file yet).
    Raises WitnessError."""
    if not path.exists():
        return {}, {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {STATE_FORMAT}")
        trees = {str(chain): WitnessedTree.from_json(tree) for chain, tree in data["chains"].items()}
        return trees, {int(p): int(o) for p, o in data.get("offsets", {}).items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WitnessError(f"witness state {path}: {exc}") from None


def save_state(path: Path, witness: Witness, offsets: dict[int, int] | None = None) -> None:
    """Replace the state file atomically (write, fsync, rename)."""
    data = {
        "format": STATE_FORMAT,
        "log": witness.log_key.vkey,
        "witness": witness.signer.verifier().vkey,
        "chains": {chain: tree.as_json() for chain, tree in sorted(witness.trees.items())},
        "offsets": {str(p): o for p, o in sorted((offsets or {}).items())},
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def witnessed_heads(path: Path) -> tuple[tuple[str, int, bytes], ...]:
    """(chain, size, root) of every chain in a witness's state: what `verify --witness` checks."""
    return tuple((chain, tree.size, tree.root) for chain, tree in sorted(load_state(path)[0].items()))


def witnessed_notes(state: Path | None) -> dict[str, tuple[int, str]]:
    """chain -> (size, cosigned note) of a witness's state (none without one)."""
    if state is None:
        return {}
    trees, _ = load_state(state)
    return {chain: (tree.size, tree.note) for chain, tree in trees.items()}
