"""Replay benchmark: `flowaudit replay` over a 10,000,000-row store, rows/s and memory.

1. The store (built once, cached in .flowaudit/bench-replay/, reused while it has --rows rows):
   --seed-records generated records (the project's generator: flows and consents, in order) are
   decided with the worker's ledger and written as a worker writes them (`AuditStore.write`, consent
   rows recorded before the flows are decided), source topic `seed`. The store then grows inside
   chDB (INSERT ... SELECT) with copies of the seed rows, copy k renaming every user, consent id and
   bulk-transfer subject with the suffix `~k` and taking a fresh event id, and the same copies of the
   consent rows: each copy is another population of subjects with the same history, so every stored
   decision stays the one its own policy gives (the replay under the same policy must find no change).
   Chain columns of the copies are not valid: this store is for replay only.
2. Replay runs in a child process (so the build's memory does not count), twice: under the shipped
   policy (expect 0 changes, 0 not reproduced) and under tests/data/policies/gb-adequacy-ended. The
   child reports its resident memory (VmRSS) every 1,000,000 rows and its peak (VmHWM): flat memory
   means the same RSS at 1 M rows and at 10 M.

Usage: python bench/replay.py [--rows 10000000] [--seed-records 550000] [--dir .flowaudit/bench-replay]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flowaudit.domain.policy import Policy, load_policy  # noqa: E402
from flowaudit.generator import EventGenerator  # noqa: E402
from flowaudit.policy import DEFAULT_POLICY_DIR  # noqa: E402
from flowaudit.sinks.clickhouse import AuditStore, qualify  # noqa: E402
from flowaudit.sinks.replay import replay  # noqa: E402
from flowaudit.sinks.reports import DEFAULT_SINCE, DEFAULT_UNTIL  # noqa: E402
from tests.sinks.replay_history import write_history  # noqa: E402

KEY = b"bench-replay-key"
WHAT_IF = REPO / "tests" / "data" / "policies" / "gb-adequacy-ended"

_COPY_FLOWS = """INSERT INTO audit_events
SELECT * EXCEPT (number, copy) REPLACE (
    generateUUIDv4(cityHash64(event_id, copy)) AS event_id,
    if(isNull(user_id), NULL, concat(user_id, '~', toString(copy))) AS user_id,
    if(isNull(consent_id), NULL, concat(consent_id, '~', toString(copy))) AS consent_id,
    arrayMap(s -> concat(s, '~', toString(copy)), subjects) AS subjects,
    'copy' AS source_topic
)
FROM (SELECT *, number AS copy FROM audit_events AS seed CROSS JOIN numbers({first}, {count}) AS copies
      WHERE seed.source_topic = 'seed')
SETTINGS max_insert_threads = 2"""
_COPY_CONSENTS = """INSERT INTO consent_events
SELECT * EXCEPT (number, copy) REPLACE (
    generateUUIDv4(cityHash64(event_id, copy)) AS event_id,
    concat(user_id, '~', toString(copy)) AS user_id,
    concat(consent_id, '~', toString(copy)) AS consent_id,
    'copy' AS source_topic
)
FROM (SELECT *, number AS copy FROM consent_events AS seed CROSS JOIN numbers({first}, {count}) AS copies
      WHERE seed.source_topic = 'consents')"""


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def build(path: Path, rows: int, seed_records: int, policy: Policy) -> dict[str, Any]:
    store = AuditStore(f"chdb://{path}", policy, KEY)
    store.connect()
    try:
        if store.count() >= rows:
            return {"reused": True, "rows": store.count()}
        if store.count():
            raise SystemExit(f"{path} holds a smaller store: remove it to build {rows:,} rows")
        started = time.perf_counter()
        flows = write_history(
            store, policy, EventGenerator(policy, seed=42).records(seed_records), topic="seed"
        )
        seeded = time.perf_counter() - started
        copies = -(-rows // len(flows))
        per_insert = max(1, 1_000_000 // len(flows))
        for first in range(1, copies, per_insert):
            count = min(per_insert, copies - first)
            for sql in (_COPY_FLOWS, _COPY_CONSENTS):
                store.client.command(qualify(sql, store.table).format(first=first, count=count))
        _, [(consents,)] = store.query("SELECT count() FROM consent_events")
        return {
            "reused": False,
            "rows": store.count(),
            "consent_rows": int(consents),
            "seed_flows": len(flows),
            "copies": copies,
            "seed_seconds": round(seeded, 1),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        store.close()


def replay_child(path: Path, policy_dir: Path) -> None:
    """Run in the child: one replay, its figures as JSON on standard output."""
    baseline, whatif = load_policy(DEFAULT_POLICY_DIR), load_policy(policy_dir)
    store = AuditStore(f"chdb://{path}", baseline, KEY)
    store.connect(writer=False)
    rss: list[float] = []
    result = replay(
        store, baseline, whatif, DEFAULT_SINCE, DEFAULT_UNTIL, lambda _: rss.append(_rss_mib("VmRSS"))
    )
    store.close()
    summary = result.summary()
    print(
        json.dumps(
            {
                "policy": policy_dir.name,
                "rows": result.rows,
                "seconds": round(result.seconds, 1),
                "rows_per_second": summary["rows_per_second"],
                "changed": summary["changed"],
                "allowed_to_blocked": summary["allowed_to_blocked"],
                "not_reproduced": summary["not_reproduced"],
                "not_exact": summary["not_exact"],
                "consent_events": summary["consent_events"],
                "rss_mib_every_million_rows": [round(value) for value in rss],
                "peak_rss_mib": round(_rss_mib("VmHWM")),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed-records", type=int, default=550_000)
    parser.add_argument("--dir", type=Path, default=REPO / ".flowaudit" / "bench-replay")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.dir / f"audit-{args.rows}"
    if args.child:
        replay_child(path, args.child)
        return
    built = build(path, args.rows, args.seed_records, load_policy(DEFAULT_POLICY_DIR))
    runs = []
    for policy_dir in (DEFAULT_POLICY_DIR, WHAT_IF):
        command = [sys.executable, __file__, "--rows", str(args.rows), "--dir", str(args.dir)]
        done = subprocess.run([*command, "--child", str(policy_dir)], capture_output=True, check=True)
        runs.append(json.loads(done.stdout))
    print(json.dumps({"store": built, "replays": runs}, indent=2))


if __name__ == "__main__":
    main()
