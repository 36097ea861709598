"""`flowaudit verify` (HMAC chain, Merkle log, witness), `flowaudit public-key`, `flowaudit
checkpoint-key` and `flowaudit witness`: the command-line side of tamper evidence. The checks are
sinks/verify.py and sinks/merkle_verify.py; the witness is flowaudit/witness.py.

Which key checks what (README "Trust model"): the chain key (FLOWAUDIT_CHAIN_KEY or <data
dir>/chain.key) recomputes the HMAC links; the log's public key (`--public-key`, default <data
dir>/log.pub when it exists) checks every signed checkpoint against the rows; a witness's state
(`--witness STATE`) adds the trees it cosigned, which catch what a holder of the writer's keys can
do: truncate, drop, rewrite and re-sign. Without the chain key, `--public-key` alone verifies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flowaudit.common.settings import Settings


def _public_key(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.public_key:
        return str(args.public_key)
    default = settings.data_dir / "log.pub"
    return str(default) if default.exists() else None


def _open_for_verify(settings: Settings, public_key: str | None) -> Any:
    """The store to verify (nothing created): with the chain key if there is one, else (a public key
    given) without, and the HMAC links are not checked. Raises StoreError."""
    from flowaudit.domain.policy import load_policy
    from flowaudit.sinks.clickhouse import AuditStore, StoreError, load_chain_key

    try:
        key = load_chain_key(settings.chain_key_value, settings.data_dir, create=False)
    except StoreError:
        if public_key is None:
            raise
        key = b""
    store = AuditStore(settings.resolved_clickhouse_url, load_policy(settings.policy_dir), key)
    store.connect(writer=False)
    return store


def missing_store_verdict(
    exc: Exception, witnessed: tuple[tuple[str, int, bytes], ...]
) -> dict[str, Any] | None:
    """With a witness's state, a store or table that is not there is tampering, not a missing input."""
    text = str(exc)
    if witnessed and ("there is no table" in text or "there is no audit store" in text):
        chains = ", ".join(f"{chain} ({size} leaves)" for chain, size, _ in witnessed)
        problem = f"the audit table is gone ({text.rsplit(': ', 1)[-1]}); the witness cosigned {chains}"
        return {"ok": False, "chains": 0, "links": 0, "rows": 0, "problems": [problem], "error": None}
    return None


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    from flowaudit.sinks.clickhouse import StoreError
    from flowaudit.sinks.merkle_verify import VerifyOptions, verify_with
    from flowaudit.sinks.witness_state import WitnessError, witnessed_heads
    from flowaudit.webapi import fetch_json, running_worker

    public_key = _public_key(args, settings)
    try:
        witnessed = witnessed_heads(Path(args.witness)) if args.witness else ()
        if args.witness and not witnessed:
            raise WitnessError(f"the witness state {args.witness} holds no chain")
    except WitnessError as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    options = VerifyOptions(_vkey_text(public_key), witnessed)
    try:
        try:
            store = _open_for_verify(settings, public_key)
        except StoreError as exc:
            worker = (
                running_worker(settings) if settings.resolved_clickhouse_url.startswith("chdb:") else None
            )
            result = missing_store_verdict(exc, witnessed)
            if result is None:
                if worker is None:
                    raise
                url, token = worker
                print(
                    f"flowaudit: the embedded store is held by the running worker; asking it at {url}",
                    file=sys.stderr,
                )
                result = fetch_json(f"{url}/flowaudit/verify/", _web_parameters(options), token)
        else:
            try:
                result = verify_with(store, options).as_dict()
            finally:
                store.close()
    except StoreError as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    return _print_verdict(result, args.json)


def _vkey_text(public_key: str | None) -> str | None:
    """The vkey itself (a file's content), so that a worker asked to verify needs no file of ours."""
    if public_key is None:
        return None
    path = Path(public_key)
    return path.read_text().strip() if path.is_file() else public_key


def _web_parameters(options: Any) -> dict[str, str]:
    import base64

    parameters = {}
    if options.public_key:
        parameters["public_key"] = options.public_key
    if options.witnessed:
        parameters["witnessed"] = json.dumps(
            [[chain, size, base64.b64encode(root).decode()] for chain, size, root in options.witnessed]
        )
    return parameters


def _print_verdict(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    elif result["problems"]:
        print(f"BROKEN: {result['problems'][0]}")
    elif result.get("error"):
        print(f"flowaudit: verify did not finish: {result['error']}", file=sys.stderr)
    else:
        checks = result.get("checks") or ["hmac"]
        signed = f", {result.get('checkpoints', 0)} signed checkpoints" if "merkle" in checks else ""
        print(
            f"OK: {result['rows']} rows in {result['links']} links of {result['chains']} chains verify"
            f"{signed} (checked: {', '.join(checks)})"
        )
    # 1 = tampered (a problem found), 2 = no verdict (the store could not be read)
    return 1 if result["problems"] else 2 if result.get("error") else 0


def run_public_key(args: argparse.Namespace, settings: Settings) -> int:
    """Print the log's verifier key (what verify, the witness and receipt readers need)."""
    from flowaudit.sinks.merkle_log import LogKeyError, load_log_signer

    try:
        signer = load_log_signer(
            settings.checkpoint_key_value, settings.data_dir, settings.log_name, create=False
        )
    except LogKeyError as exc:
        print(f"flowaudit: {exc} (a worker makes <data dir>/log.key at its first start)", file=sys.stderr)
        return 2
    print(signer.verifier().vkey)
    return 0


def run_checkpoint_key(args: argparse.Namespace, settings: Settings) -> int:
    """A new signing key for the log's checkpoints and its public key, as two lines `NAME=value`:
    the signer for the workers' secret store (FLOWAUDIT_CHECKPOINT_KEY), the public key for the
    witness and the verifiers. Given to both before either starts, so the witness never has to take
    the key from the writer's data directory (docker-compose.yml needs both)."""
    from flowaudit.domain.checkpoint import NoteSigner

    signer = NoteSigner.generate(settings.log_name)
    print(f"FLOWAUDIT_CHECKPOINT_KEY={signer.skey}")
    print(f"FLOWAUDIT_LOG_PUBLIC_KEY={signer.verifier().vkey}")
    return 0


def run_witness_command(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from flowaudit.witness import run_witness

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # one line per connection otherwise
    if args.metrics_port:
        from prometheus_client import start_http_server

        from flowaudit.common import metrics

        start_http_server(args.metrics_port, addr=settings.metrics_bind, registry=metrics.WITNESS_REGISTRY)
    return run_witness(settings, Path(args.state), args.public_key, args.idle_exit)


def add_integrity_commands(sub: Any) -> None:
    """The parsers of verify, public-key and witness (their handlers are here)."""
    verify = sub.add_parser("verify", help="recompute the audit chain; exit 1 naming the first broken link")
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--public-key", help="the Merkle log's public key (vkey or file; default <data dir>/log.pub)"
    )
    verify.add_argument("--witness", metavar="STATE", help="a witness's state file: check its trees too")
    verify.set_defaults(handler=run_verify)

    public_key = sub.add_parser("public-key", help="print the Merkle log's public key (a vkey)")
    public_key.set_defaults(handler=run_public_key)

    new_key = sub.add_parser(
        "checkpoint-key", help="make a new checkpoint signing key: print it and its public key"
    )
    new_key.set_defaults(handler=run_checkpoint_key)

    witness = sub.add_parser("witness", help="witness the signed checkpoints: check, cosign, alert")
    witness.add_argument("--state", required=True, help="the witness's own state file (not the audit store)")
    witness.add_argument(
        "--public-key", help="the log's public key (default: the state's, or <data dir>/log.pub)"
    )
    witness.add_argument("--metrics-port", type=int, default=0, help="its metrics endpoint's port (0: off)")
    witness.add_argument("--idle-exit", type=float, help="exit after this many seconds with no checkpoint")
    witness.set_defaults(handler=run_witness_command)

    from flowaudit.receipts import add_receipt_commands

    add_receipt_commands(sub)
