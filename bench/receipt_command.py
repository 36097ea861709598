"""What `flowaudit receipt --user U --witness STATE --out FILE` does, step by step, timed, on the
store bench/receipt.py built (run by it in fresh processes after its own runs; the CLI itself cannot
name the bench's chDB database). The same imports as the command's, the process tuned as the
command tunes it, the store opened as a reader without chain heads, the receipt built and written.
Prints one JSON line: imports, open, build, write and total seconds since the interpreter started
running this file.

Usage: python bench/receipt_command.py STORE_DIR WITNESS_STATE SUBJECT OUT_FILE
"""

from __future__ import annotations

import time

started = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowaudit.common.tuning import tune_process  # noqa: E402
from flowaudit.domain.policy import load_policy  # noqa: E402
from flowaudit.policy import DEFAULT_POLICY_DIR  # noqa: E402
from flowaudit.receipts import receipt_bytes  # noqa: E402
from flowaudit.sinks.clickhouse import AuditStore, qualify  # noqa: E402
from flowaudit.sinks.receipts import EARLIEST_MS, LATEST_MS, build_receipt  # noqa: E402
from flowaudit.sinks.witness_state import witnessed_notes  # noqa: E402

DATABASE = "bench_receipt"  # bench/receipt.py's


def main() -> None:
    store_dir, state, subject, out = sys.argv[1:5]
    imported = time.perf_counter()
    tune_process()
    witnessed = witnessed_notes(Path(state))
    store = AuditStore(f"chdb://{store_dir}", load_policy(DEFAULT_POLICY_DIR), b"", database=DATABASE)
    store.connect(writer=False, heads=False)
    opened = time.perf_counter()
    receipt = build_receipt(
        lambda sql, parameters: store.query(qualify(sql, store.table), parameters),
        subject,
        EARLIEST_MS,
        LATEST_MS,
        witnessed,
    )
    built = time.perf_counter()
    Path(out).write_bytes(receipt_bytes(receipt))
    written = time.perf_counter()
    store.close()
    steps = {
        "imports": imported - started,
        "open": opened - imported,
        "build": built - opened,
        "write": written - built,
        "total": written - started,
    }
    print(json.dumps({name: round(seconds, 3) for name, seconds in steps.items()}))


if __name__ == "__main__":
    main()
