"""A data subject's receipt: their audit rows, each proved included in the log's signed tree, checked
offline with the log's public key (and a witness's, if given). Pure: the receipt is a parsed JSON
object; sinks/receipts.py builds it from the store.

The receipt (format `flowaudit-receipt/1`), one JSON object:

    {"format": "flowaudit-receipt/1", "subject": "u-…", "since": …, "until": …, "generated_at": …,
     "columns": {"1": [...], "2": [...]},              # content columns of each row format
     "chains": {"<chain>": {
         "checkpoint": "<signed note>",                 # the latest tree, signed by the log
         "witnessed": "<cosigned note>" | null,         # the latest tree a witness cosigned
         "consistency": ["<base64>", ...],             # witnessed -> checkpoint (RFC 9162)
         "nodes": {"<level>/<position>": "<base64>"}}}, # every node the rows' proofs need, once
     "rows": [{"chain": "<chain>", "leaf_index": i, "content": [...]}]}

Verification: each chain's checkpoint opens with the log's key under the chain's origin; its
witnessed note (when a witness key is given, required) carries the witness's cosignature and the
log's signature, and the consistency proof shows the checkpoint's tree extends it; each row's
content, serialized as the writer did (compact JSON), hashes to its row hash, whose leaf is proved
at its index against the checkpoint's root with the chain's nodes. A row at an index below the
witnessed size is in a tree the witness saw: whoever holds the writer's keys cannot take it back
without the witness noticing. Every row must name the subject (as `user_id`, or in `subjects`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from flowaudit.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureVerifier,
    NoteVerifier,
    cosignature_time,
    open_checkpoint,
    origin_for,
)
from flowaudit.domain.merkle import (
    NodeId,
    ProofError,
    inclusion_ranges,
    leaf_hash,
    range_hash,
    verify_consistency,
    verify_inclusion,
)

RECEIPT_FORMAT = "flowaudit-receipt/1"


class ReceiptError(ValueError):
    """The receipt does not prove what it claims; the message names the chain or row."""


@dataclass
class ReceiptCheck:
    subject: str
    rows: int = 0
    witnessed_rows: int = 0  # rows in a tree the witness cosigned
    chains: list[str] = field(default_factory=list)
    witnessed_at: dict[str, int] = field(default_factory=dict)  # chain -> cosignature time (POSIX s)


def node_key(node: NodeId) -> str:
    return f"{node.level}/{node.position}"


def _hash(text: Any, what: str) -> bytes:
    try:
        value = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError(f"{what} is not base64") from None
    if len(value) != 32:
        raise ReceiptError(f"{what} is {len(value)} bytes, not 32")
    return value


def _open_chain(
    chain: str, entry: Mapping[str, Any], log_key: NoteVerifier, witness: CosignatureVerifier | None
) -> tuple[Checkpoint, int]:
    """The chain's checkpoint, and the size the witness cosigned (0: none, or no witness key)."""
    verifier = NoteVerifier(origin_for(log_key.name, chain), log_key.public_key)
    try:
        checkpoint = open_checkpoint(str(entry["checkpoint"]), verifier)
    except CheckpointError as exc:
        raise ReceiptError(f"chain {chain}: the checkpoint is not the log's ({exc})") from None
    if witness is None:
        return checkpoint, 0
    if not entry.get("witnessed"):
        raise ReceiptError(f"chain {chain}: no checkpoint cosigned by the witness")
    try:
        witnessed = open_checkpoint(str(entry["witnessed"]), verifier, [witness])
        cosignature_time(str(entry["witnessed"]), witness)
    except CheckpointError as exc:
        raise ReceiptError(f"chain {chain}: the witnessed checkpoint does not verify ({exc})") from None
    proof = [_hash(item, f"chain {chain}: consistency element") for item in entry.get("consistency") or []]
    try:
        verify_consistency(witnessed.size, checkpoint.size, witnessed.root, checkpoint.root, proof)
    except ProofError as exc:
        raise ReceiptError(
            f"chain {chain}: the checkpoint does not extend the witnessed tree ({exc})"
        ) from None
    return checkpoint, witnessed.size


def verify_receipt(
    receipt: Mapping[str, Any], log_key: NoteVerifier, witness: CosignatureVerifier | None = None
) -> ReceiptCheck:
    """Check everything the receipt claims (see the module doc). Raises ReceiptError."""
    if not isinstance(receipt, Mapping) or receipt.get("format") != RECEIPT_FORMAT:
        raise ReceiptError(f"not a receipt of format {RECEIPT_FORMAT}")
    try:
        subject = str(receipt["subject"])
        columns = {int(f): list(names) for f, names in receipt["columns"].items()}
        chains = dict(receipt["chains"])
        rows = list(receipt["rows"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReceiptError(f"the receipt lacks {exc}") from None
    check = ReceiptCheck(subject, chains=sorted(chains))
    opened: dict[str, tuple[Checkpoint, int, dict[str, Any]]] = {}
    for chain, entry in chains.items():
        checkpoint, witnessed_size = _open_chain(chain, entry, log_key, witness)
        opened[chain] = (checkpoint, witnessed_size, dict(entry.get("nodes") or {}))
        if witness is not None:
            check.witnessed_at[chain] = cosignature_time(str(entry["witnessed"]), witness)
    for number, row in enumerate(rows, start=1):
        witnessed = _check_row(number, row, subject, columns, opened)
        check.rows += 1
        check.witnessed_rows += witnessed
    return check


def _check_row(
    number: int,
    row: Mapping[str, Any],
    subject: str,
    columns: Mapping[int, list[str]],
    opened: Mapping[str, tuple[Checkpoint, int, dict[str, Any]]],
) -> bool:
    """One row proved; True when it is in the witnessed tree."""
    try:
        chain, index, content = str(row["chain"]), int(row["leaf_index"]), list(row["content"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptError(f"row {number}: lacks {exc}") from None
    where = f"row {number} (chain {chain}, leaf {index})"
    if chain not in opened:
        raise ReceiptError(f"{where}: no checkpoint for its chain")
    checkpoint, witnessed_size, nodes = opened[chain]
    _check_subject(where, content, subject, columns)
    leaf = leaf_hash(hashlib.sha256(orjson.dumps(content)).digest())
    try:
        lookup = _Nodes(nodes, where)
        proof = [range_hash(start, end, lookup) for start, end in inclusion_ranges(index, checkpoint.size)]
        verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root)
    except (ProofError, ValueError) as exc:
        raise ReceiptError(f"{where}: not included in the signed tree ({exc})") from None
    return index < witnessed_size


def _check_subject(where: str, content: list[Any], subject: str, columns: Mapping[int, list[str]]) -> None:
    names = columns.get(_row_format(content, columns))
    if names is None or len(names) != len(content):
        raise ReceiptError(f"{where}: its content matches no row format of the receipt")
    values = dict(zip(names, content, strict=True))
    if values.get("user_id") != subject and subject not in (values.get("subjects") or []):
        raise ReceiptError(f"{where}: the row is not the subject's")


def _row_format(content: list[Any], columns: Mapping[int, list[str]]) -> int:
    """A row's format: the one whose column list has the row's length and, if it has the column,
    the same `row_format` value."""
    for number, names in columns.items():
        if len(names) == len(content) and (
            "row_format" not in names or content[names.index("row_format")] == number
        ):
            return number
    return -1


class _Nodes(Mapping[NodeId, bytes]):
    """The receipt's nodes, looked up by id (KeyError naming the node a proof lacks)."""

    def __init__(self, nodes: Mapping[str, Any], where: str) -> None:
        self.nodes, self.where = nodes, where

    def __getitem__(self, node: NodeId) -> bytes:
        value = self.nodes.get(node_key(node))
        if value is None:
            raise ProofError(f"the receipt lacks node {node_key(node)}")
        return _hash(value, f"{self.where}: node {node_key(node)}")

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return len(self.nodes)


__all__ = ["RECEIPT_FORMAT", "ReceiptCheck", "ReceiptError", "node_key", "verify_receipt"]
