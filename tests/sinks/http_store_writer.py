"""A second writer process for tests/sinks/test_clickhouse_http.py: writes generated audit records to
an AuditStore at a ClickHouse HTTP URL, batch by batch, and prints what it wrote as JSON.

    python -m tests.sinks.http_store_writer URL TOPIC COUNT BATCH SEED KEY
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from flowaudit.domain.policy import load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.clickhouse import AuditStore
from tests.sinks.test_clickhouse_store import records_from


def main(argv: Sequence[str]) -> int:
    url, topic, count, batch, seed, key = argv
    policy = load_policy(DEFAULT_POLICY_DIR)
    records = records_from(
        policy, list(EventGenerator(policy, seed=int(seed)).events(int(count))), topic=topic
    )
    store = AuditStore(url, policy, key.encode())
    store.connect()
    try:
        written = 0
        for start in range(0, len(records), int(batch)):
            written += store.write(records[start : start + int(batch)]).rows
        heads = {chain: head.seq for chain, head in store.heads.items()}
    finally:
        store.close()
    print(json.dumps({"rows": written, "heads": heads}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
