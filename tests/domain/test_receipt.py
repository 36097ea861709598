"""A receipt's offline check (`domain.receipt`), on receipts built in memory: the proofs, the
witness's link, the subject, and what a forger would change."""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import orjson
import pytest

from flowaudit.domain.checkpoint import Checkpoint, CosignatureSigner, NoteSigner, cosign
from flowaudit.domain.merkle import (
    consistency_proof,
    inclusion_ranges,
    leaf_hashes,
    perfect_subtrees,
    root_of,
    tree_nodes,
)
from flowaudit.domain.receipt import RECEIPT_FORMAT, ReceiptError, node_key, verify_receipt

LOG = NoteSigner("audit.test", bytes(range(32)))
WITNESS = CosignatureSigner("witness.test", bytes(range(5, 37)))
CHAIN = "flowaudit.sharing/1"
COLUMNS = ["event_id", "user_id", "decision", "row_format", "subjects"]
SUBJECT = "u-1"


def _content(i: int) -> list[Any]:
    user = SUBJECT if i % 5 == 0 else f"u-{i + 100}"
    return [f"e-{i}", user, "allowed" if i % 2 else "blocked", 2, ["u-1"] if i == 3 else []]


def _receipt(size: int = 40, witnessed: int = 30) -> dict[str, Any]:
    contents = [_content(i) for i in range(size)]
    leaves = leaf_hashes([hashlib.sha256(orjson.dumps(c)).digest() for c in contents])
    nodes = tree_nodes(leaves)
    origin = f"{LOG.name}/{CHAIN}"
    signer = LOG.for_name(origin)
    note = Checkpoint(origin, size, root_of(leaves), 5).sign(signer)
    old = Checkpoint(origin, witnessed, root_of(leaves[:witnessed]), 4).sign(signer)
    mine = [i for i in range(size) if contents[i][1] == SUBJECT or SUBJECT in contents[i][4]]
    needed = {n for i in mine for s, e in inclusion_ranges(i, size) for n in perfect_subtrees(s, e)}
    return {
        "format": RECEIPT_FORMAT,
        "subject": SUBJECT,
        "columns": {"2": COLUMNS},
        "chains": {
            CHAIN: {
                "checkpoint": note,
                "witnessed": cosign(old, WITNESS, 1_800_000_000),
                "consistency": [
                    base64.b64encode(h).decode() for h in consistency_proof(witnessed, size, nodes)
                ],
                "nodes": {node_key(n): base64.b64encode(nodes[n]).decode() for n in needed},
            }
        },
        "rows": [{"chain": CHAIN, "leaf_index": i, "content": contents[i]} for i in mine],
    }


def test_a_receipt_is_checked_with_the_public_keys_alone() -> None:
    check = verify_receipt(_receipt(), LOG.verifier(), WITNESS.verifier())
    assert check.rows == 9 and check.witnessed_rows == 7  # rows 0, 3, 5, ..., 25 below the witnessed 30
    assert check.witnessed_at == {CHAIN: 1_800_000_000}


def _moved(receipt: dict[str, Any]) -> None:
    receipt["rows"][1]["leaf_index"] = 4


def _changed(receipt: dict[str, Any]) -> None:
    receipt["rows"][0]["content"][2] = "allowed"


def _someone_elses(receipt: dict[str, Any]) -> None:
    receipt["subject"] = "u-2"


def _bad_consistency(receipt: dict[str, Any]) -> None:
    receipt["chains"][CHAIN]["consistency"] = receipt["chains"][CHAIN]["consistency"][1:]


def _another_chain(receipt: dict[str, Any]) -> None:
    receipt["chains"]["flowaudit.sharing/2"] = receipt["chains"].pop(CHAIN)


@pytest.mark.parametrize("alter", [_moved, _changed, _someone_elses, _bad_consistency, _another_chain])
def test_what_a_forger_changes_is_refused(alter: Any) -> None:
    receipt = copy.deepcopy(_receipt())
    alter(receipt)
    with pytest.raises(ReceiptError):
        verify_receipt(receipt, LOG.verifier(), WITNESS.verifier())


def test_not_a_receipt_is_one_error() -> None:
    with pytest.raises(ReceiptError, match="format"):
        verify_receipt({"format": "other"}, LOG.verifier())
    broken = _receipt()
    del broken["rows"]
    with pytest.raises(ReceiptError, match="lacks"):
        verify_receipt(broken, LOG.verifier())
