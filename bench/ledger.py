"""Memory of the consent ledger per consent: both copies the worker keeps, measured with tracemalloc.

The worker holds the ledger twice: the Faust table in its own process (per user, the JSON value of
`domain.ledger.table_value`), and the `StreamLedger` the flows are decided with (in the pipeline
process). This builds `--consents` consents (`--per-user` per user, each granted, a share of them
withdrawn), measures the bytes each copy allocates per consent, the changelog bytes per consent (the
serialized table values, what Kafka stores after compaction), and the figure for 10 million consents.

Usage: python bench/ledger.py [--consents N] [--per-user K] [--withdrawn-share S] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

from flowaudit.domain.consent import ConsentEvent
from flowaudit.domain.ledger import Entry, StreamLedger, table_value

PURPOSES = ("marketing", "ecg_review", "research_program", "third_party_sharing", "ai_personalization")
TEN_MILLION = 10_000_000


def consent_events(count: int, per_user: int, withdrawn_share: float) -> list[ConsentEvent]:
    events = []
    withdraw_every = round(1 / withdrawn_share) if withdrawn_share > 0 else 0
    for number in range(count):
        user = f"u-{number // per_user:08x}"
        consent_id = f"consent-{number:08x}"
        purpose = PURPOSES[number % len(PURPOSES)]
        at_ms = 1_700_000_000_000 + number * 1_000
        events.append(ConsentEvent(f"{number:032x}", at_ms, user, consent_id, purpose, "granted"))
        if withdraw_every and number % withdraw_every == 0:
            events.append(
                ConsentEvent(f"w{number:031x}", at_ms + 500, user, consent_id, purpose, "withdrawn")
            )
    return events


def allocated(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated by what `build` returns (kept alive), measured by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consents", type=int, default=500_000)
    parser.add_argument("--per-user", type=int, default=3)
    parser.add_argument("--withdrawn-share", type=float, default=0.2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    events = consent_events(args.consents, args.per_user, args.withdrawn_share)

    def ledger() -> StreamLedger:
        built = StreamLedger()
        for offset, event in enumerate(events):
            built.apply(event, offset)
        return built

    ledger_bytes, built = allocated(ledger)
    by_user: dict[str, list[Entry]] = {}
    for offset, record in enumerate(built.records()):  # offsets as the table keeps them
        by_user.setdefault(record.user_id, []).append((record, offset))
    users = sorted(by_user)

    def table() -> dict[str, Any]:
        return {user: table_value(by_user[user]) for user in users}

    table_bytes, values = allocated(table)
    changelog_bytes = sum(len(user) + 2 + len(json.dumps(value)) for user, value in values.items())
    consents = len(built)
    result = {
        "consents": consents,
        "users": len(users),
        "events": len(events),
        "ledger_bytes_per_consent": round(ledger_bytes / consents, 1),
        "table_bytes_per_consent": round(table_bytes / consents, 1),
        "changelog_bytes_per_consent": round(changelog_bytes / consents, 1),
        "ledger_gib_for_10m": round(ledger_bytes / consents * TEN_MILLION / 2**30, 2),
        "table_gib_for_10m": round(table_bytes / consents * TEN_MILLION / 2**30, 2),
        "changelog_gib_for_10m": round(changelog_bytes / consents * TEN_MILLION / 2**30, 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{consents:,} consents of {len(users):,} users ({len(events):,} events)")
    for copy in ("ledger", "table", "changelog"):
        print(
            f"  {copy:<9} {result[f'{copy}_bytes_per_consent']:>7} bytes/consent  "
            f"{result[f'{copy}_gib_for_10m']:>6} GiB for 10 million"
        )


if __name__ == "__main__":
    main()
