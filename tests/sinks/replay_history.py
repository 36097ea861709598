"""A known history in an audit store, as a worker would have left it, for the replay tests.

`write_history` decides canonical JSON lines (flows and consents) in input order against the consents
read before them, as the worker and `flowaudit evaluate` do, and writes the flows' audit rows and the
consent rows. Consents are recorded (ingested) at `consents_at_ms`, flows decided at `decided_at_ms`:
consents recorded before the flows are decided is what the worker does when it reads them first.

`python -m tests.sinks.replay_history DATA_DIR [--hold]` writes tests/data/replay/history.jsonl into
`chdb://DATA_DIR/audit` with the key `FLOWAUDIT_CHAIN_KEY` (the CLI tests run replay on it in another
process: chDB opens one store path per process); `--hold` then keeps the store open until killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowaudit.domain.consent import consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import InvalidEvent, event_from_mapping
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore
from flowaudit.sinks.consents import ConsentAuditRecord

HISTORY = Path(__file__).resolve().parent.parent / "data" / "replay" / "history.jsonl"
DECIDED_AT_MS = 1_764_000_000_000  # 2025-11-24: after every flow of the history
CONSENTS_AT_MS = DECIDED_AT_MS - 60_000


def history_lines(path: Path = HISTORY) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_history(
    store: AuditStore,
    policy: Policy,
    lines: Iterable[dict[str, Any]],
    *,
    decided_at_ms: int = DECIDED_AT_MS,
    consents_at_ms: int = CONSENTS_AT_MS,
    topic: str = "flows",
) -> list[AuditRecord]:
    """Decide and store `lines`; returns the flows' records. Invalid lines are skipped (dead letters)."""
    ledger = StreamLedger()
    decider = Decider(policy, ledger)
    flows: list[AuditRecord] = []
    consents: list[ConsentAuditRecord] = []
    for offset, line in enumerate(lines):
        try:
            if line.get("event_type") == "consent":
                consent = consent_from_mapping(line, policy)
                ledger.apply(consent)
                consents.append(ConsentAuditRecord(consent, "consents", 0, offset))
                continue
            event = event_from_mapping(line, policy)
        except InvalidEvent:
            continue
        flows.append(AuditRecord(event, decider.decide(event), topic, 0, offset, decided_at_ms))
    write_consents(store, consents, consents_at_ms)
    for start in range(0, len(flows), 20_000):
        store.write(flows[start : start + 20_000])
    return flows


def write_consents(store: AuditStore, records: list[ConsentAuditRecord], ingested_at_ms: int) -> None:
    batch = store.prepare_consents(records, ingested_at_ms)
    store.insert_consents(batch)
    store.record_withdrawal_notices(batch)


def main() -> None:
    data_dir = Path(sys.argv[1])
    policy = load_policy(DEFAULT_POLICY_DIR)
    store = AuditStore(f"chdb://{data_dir / 'audit'}", policy, os.environ["FLOWAUDIT_CHAIN_KEY"].encode())
    store.connect()
    write_history(store, policy, history_lines())
    print("written", flush=True)
    if "--hold" in sys.argv:
        while True:
            time.sleep(1)
    store.close()


if __name__ == "__main__":
    main()
