"""`flowaudit receipt` and `flowaudit verify-receipt`: a data subject's audit rows with proofs
(sinks/receipts.py builds, domain/receipt.py checks).

`receipt --user U [--since] [--until] [--out FILE] [--witness STATE]` reads the store (or asks the
running worker that holds the embedded store, `/flowaudit/receipt/`) and writes one JSON file; the
rows are proved against each chain's latest signed checkpoint, linked by a consistency proof to the
latest tree the witness cosigned (`--witness`, default FLOWAUDIT_WITNESS_STATE). `verify-receipt
FILE --public-key K [--witness-key W]` needs neither the store nor the network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flowaudit.common.settings import Settings


def _receipt(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Raises StoreError, ReceiptBuildError, WitnessError, ValueError (bad dates)."""
    from flowaudit.domain.policy import load_policy
    from flowaudit.sinks.clickhouse import AuditStore, StoreError
    from flowaudit.sinks.receipts import EARLIEST_MS, LATEST_MS, build_receipt, parse_moment
    from flowaudit.sinks.witness_state import witnessed_notes
    from flowaudit.webapi import fetch_json, running_worker

    since = parse_moment(args.since, EARLIEST_MS, "--since")
    until = parse_moment(args.until, LATEST_MS, "--until")
    state = Path(args.witness) if args.witness else settings.witness_state
    witnessed = witnessed_notes(state)
    store = AuditStore(settings.resolved_clickhouse_url, load_policy(settings.policy_dir), b"")
    try:
        store.connect(writer=False, heads=False)  # a receipt needs no chain head
    except StoreError:
        worker = running_worker(settings) if settings.resolved_clickhouse_url.startswith("chdb:") else None
        if worker is None:
            raise
        parameters = {"user": args.user, "since": args.since or "", "until": args.until or ""}
        if witnessed:
            parameters["witnessed"] = json.dumps([[c, size, note] for c, (size, note) in witnessed.items()])
        answer: dict[str, Any] = fetch_json(f"{worker[0]}/flowaudit/receipt/", parameters, worker[1])
        return answer
    try:
        return build_receipt(store.query, args.user, since, until, witnessed)
    finally:
        store.close()


def run_receipt(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.common.tuning import tune_process
    from flowaudit.sinks.clickhouse import StoreError
    from flowaudit.sinks.receipts import ReceiptBuildError
    from flowaudit.sinks.witness_state import WitnessError

    # a 10,000-row receipt allocates hundreds of thousands of short-lived objects: with the default
    # GC thresholds the collector rescans them over and over, ~0.1 s of CPU of ~0.7 (the bench
    # store, 4 builds each: 0.54-0.60 s tuned, 0.64-0.73 not; bench/receipt.py has always run
    # tuned, as the worker does)
    tune_process()

    try:
        receipt = _receipt(args, settings)
    except (StoreError, ReceiptBuildError, WitnessError, ValueError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    data = receipt_bytes(receipt)
    if args.out:
        Path(args.out).write_bytes(data)
        witnessed = sum(1 for entry in receipt["chains"].values() if entry.get("witnessed"))
        print(
            f"{args.out}: {len(receipt['rows'])} rows of {args.user} in {len(receipt['chains'])} chains "
            f"({witnessed} with a witnessed checkpoint)",
            file=sys.stderr,
        )
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def receipt_bytes(receipt: dict[str, Any]) -> bytes:
    """The receipt file: compact JSON in UTF-8 and a newline, the bytes json.dumps(separators=(",",
    ":"), ensure_ascii=False) gives (the same 10,591,260 bytes for the bench's receipt), written by
    orjson: 15 ms instead of 0.24-0.47 s for that 10 MB receipt (bench/receipt.py, write_seconds)."""
    import orjson

    return orjson.dumps(receipt, option=orjson.OPT_APPEND_NEWLINE)


def run_verify_receipt(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.common.tuning import tune_process
    from flowaudit.domain.checkpoint import CosignatureVerifier
    from flowaudit.domain.receipt import ReceiptError, verify_receipt
    from flowaudit.sinks.merkle_log import LogKeyError, read_public_key
    from flowaudit.sinks.witness_state import WitnessError
    from flowaudit.witness import parse_witness_key

    tune_process()  # as for `receipt`: a large receipt's check allocates as much
    try:
        receipt = json.loads(Path(args.file).read_text())
        log_key = read_public_key(args.public_key)
        witness = parse_witness_key(args.witness_key) if args.witness_key else None
        if witness is not None and not isinstance(witness, CosignatureVerifier):
            raise WitnessError(f"{args.witness_key} is not a witness's (cosignature) key")
    except (OSError, ValueError, LogKeyError, WitnessError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    try:
        check = verify_receipt(receipt, log_key, witness)
    except ReceiptError as exc:
        print(f"INVALID: {exc}")
        return 1
    witnessed = f"; {check.witnessed_rows} of them in trees the witness cosigned" if witness else ""
    print(
        f"OK: {check.rows} rows of {check.subject} in {len(check.chains)} chains, each included in the "
        f"log's signed tree{witnessed}"
    )
    return 0


def add_receipt_commands(sub: Any) -> None:
    receipt = sub.add_parser(
        "receipt", help="a data subject's audit rows with inclusion proofs, as one JSON file"
    )
    receipt.add_argument("--user", required=True, help="the data subject's user id")
    receipt.add_argument("--since", help="from this day or moment (UTC), included")
    receipt.add_argument("--until", help="until this day or moment (UTC), excluded")
    receipt.add_argument("--out", help="write it here (default: standard output)")
    receipt.add_argument(
        "--witness", metavar="STATE", help="a witness's state (default FLOWAUDIT_WITNESS_STATE)"
    )
    receipt.set_defaults(handler=run_receipt)
    check = sub.add_parser("verify-receipt", help="check a receipt offline with the log's public key")
    check.add_argument("file")
    check.add_argument("--public-key", required=True, help="the log's public key (vkey or file)")
    check.add_argument("--witness-key", help="the witness's public key (vkey or <state>.pub)")
    check.set_defaults(handler=run_verify_receipt)
