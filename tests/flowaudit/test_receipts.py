"""The receipt file `flowaudit receipt` writes (flowaudit/receipts.py): the bytes json.dumps gave."""

from __future__ import annotations

import json

from flowaudit.receipts import receipt_bytes
from tests.conftest import DATA_DIR


def test_the_receipt_file_is_compact_utf8_json_as_before() -> None:
    """Non-ASCII text, escapes, control characters, a UInt64 at its maximum, a float, nulls."""
    receipt = json.loads((DATA_DIR / "receipts" / "file_values.json").read_text())
    data = receipt_bytes(receipt)
    assert data == (json.dumps(receipt, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    assert json.loads(data) == receipt and "Zürich".encode() in data and data.endswith(b"}\n")
