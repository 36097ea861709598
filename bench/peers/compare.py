"""Is the peer doing the worker's job? Both on the same input; their stores and gate topics compared.

Produces --events records on the embedded broker, runs the worker (`bench/stream.py --role full`)
and the quix-streams peer (`bench/peers/quix_peer.py`, from `.venv-peers`) one after the other,
each with its own consumer group and store, then checks:

- both stores hold the same decisions: a digest of (event id, decision, rules, flags, categories,
  legal basis, source topic, partition, offset) over every row, each store read in a process of
  its own (chDB opens one store per process);
- the peer's store verifies (`flowaudit verify`: row hashes, chain links);
- the gate topics hold, for the two runs together, twice the input: each run forwarded every event
  (approved + blocked + dead letters), every gate record keyed by its event id with the decision
  header.

Exit 0 when all hold, 1 naming the first that does not.

Usage: python bench/peers/compare.py [--events 6000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import stream  # noqa: E402

DIGEST = """
import hashlib, sys
from flowaudit.domain.policy import load_policy
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.clickhouse import AuditStore
store = AuditStore(sys.argv[1], load_policy(DEFAULT_POLICY_DIR), bytes(32))
store.connect(writer=False)
_, rows = store.query(
    "SELECT toString(event_id), decision, rules, flags, data_categories, legal_basis, source_topic, "
    "source_partition, source_offset FROM audit_events ORDER BY 1", {}
)
print(len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
"""


def digest(url: str) -> str:
    result = subprocess.run([sys.executable, "-c", DIGEST, url], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"compare: cannot read {url}: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def verify(data_dir: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env.update(FLOWAUDIT_DATA_DIR=data_dir, FLOWAUDIT_CLICKHOUSE_URL=url)
    command = [sys.executable, "-m", "flowaudit.cli", "verify"]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def gate_records(bootstrap: str, topics: list[str], expected: int) -> dict[str, Any]:
    """Counts per gate topic, and the gate records without their event id's decision header."""
    from confluent_kafka import Consumer

    config = {"bootstrap.servers": bootstrap, "group.id": "compare", "auto.offset.reset": "earliest"}
    consumer = Consumer(config)
    consumer.subscribe(topics)
    counts: dict[str, int] = {}
    unlabelled = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and sum(counts.values()) < expected:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            counts[message.topic()] = counts.get(message.topic(), 0) + 1
            headers = dict(message.headers() or [])
            if "flowaudit-decision" in headers:
                unlabelled += json.loads(headers["flowaudit-decision"])["event_id"] != message.key().decode()
            elif "flowaudit-error-reason" not in headers:
                unlabelled += 1
    finally:
        consumer.close()
    return {"counts": counts, "unlabelled": unlabelled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    from flowaudit.broker import EmbeddedBroker
    from flowaudit.common.settings import Settings
    from flowaudit.runtime import all_topics
    from flowaudit.streams.app import ledger_changelog_topic

    stream.peers_python()
    settings = Settings(metrics_port=0)
    gates = [settings.topic_approved, settings.topic_blocked, settings.topic_dead_letter]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        group = f"compare-full-{os.getpid()}"
        broker.create_topics([*all_topics(settings), ledger_changelog_topic(group)], args.partitions)
        stream.produce(broker.bootstrap, args.events, False)
        full_dir, quix_dir = Path(tmp) / "full", Path(tmp) / "quix"
        full_dir.mkdir()
        quix_dir.mkdir()
        stream.child("full", broker.bootstrap, args.events, str(full_dir), group)
        stream.child("quix", broker.bootstrap, args.events, str(quix_dir), f"compare-quix-{os.getpid()}")
        worker_store, peer_store = f"chdb://{full_dir}/audit", f"chdb://{quix_dir}/quix-audit"
        digests = {"worker": digest(worker_store), "peer": digest(peer_store)}
        verified = verify(str(quix_dir), peer_store)
        gate = gate_records(broker.bootstrap, gates, 2 * args.events)
    print(json.dumps({"digests": digests, "peer_verify": verified.stdout.strip(), "gate": gate}, indent=2))
    failures = [
        "the two stores differ" if digests["worker"] != digests["peer"] else "",
        f"the peer's store does not verify: {verified.stdout.strip()}" if verified.returncode != 0 else "",
        f"the gate topics hold {sum(gate['counts'].values())} records, not {2 * args.events}"
        if sum(gate["counts"].values()) != 2 * args.events
        else "",
        f"{gate['unlabelled']} gate records without their decision header" if gate["unlabelled"] else "",
    ]
    for failure in failures:
        if failure:
            raise SystemExit(f"compare: {failure}")
    print("compare: same decisions in both stores, the peer's store verifies, every event forwarded twice")


if __name__ == "__main__":
    main()
