"""Latency: from producing an event to its audit row being queryable, at a steady rate.

The parent starts the embedded broker (librdkafka's mock cluster) with the input topics, serves
an audit store over ClickHouse's HTTP interface from a process of its own (`tests/clickhouse_http.py`,
chDB behind it), and starts `flowaudit worker` on them (its defaults: two processes, 0.25 s
batches; the store on the production client path, clickhouse-connect over HTTP). After a warm-up
(the first rows queryable: the group joined, the first batches written) it produces --rate events
a second for --seconds with `flowaudit produce`'s producer, keeping each event's send time, and
polls the store every --poll seconds for the rows that appeared since the last poll: per chain
(source partition), the links above the highest one seen (`chain_seq`; a link's rows are inserted
together, and a chain's links in order). An event's latency is the start of the first poll whose
answer holds its row, less its send time, so it is exact to within one poll interval (upwards).

Why a store over HTTP and not the worker's own chDB: chDB opens a store in one process only, and
the other way in, the worker's web API, answers named reports only, none of which lists rows as
they arrive; reading through the API would also queue the polls behind the inserts on the store's
thread. The HTTP shim is what the two-worker tests and `bench/faults.py` use, and the worker's
insert path is then the production one.

With --system quix the same is measured for the quix-streams peer (`bench/peers/quix_peer.py`, from
`.venv-peers`), writing to the same kind of store.

Usage: python bench/latency.py [--rate 2000] [--seconds 60] [--partitions 8] [--poll 0.1]
       [--system worker|quix]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from flowaudit.broker import EmbeddedBroker  # noqa: E402
from flowaudit.common.settings import Settings  # noqa: E402
from tests.clickhouse_http import ClickHouseHTTPServer  # noqa: E402
from tests.helpers import WorkerProcess, free_port, wait_for, worker_env  # noqa: E402

WARMUP_EVENTS = 400


class RowWatcher(threading.Thread):
    """Polls the store for new audit rows and notes when each event id first became queryable."""

    def __init__(self, store_url: str, interval: float) -> None:
        super().__init__(daemon=True)
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(dsn=store_url)
        self.interval = interval
        self.heads: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self.polls = 0
        self.poll_seconds: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.time()
            self.poll(started)
            self.poll_seconds.append(time.time() - started)
            self.stopping.wait(max(0.0, started + self.interval - time.time()))

    def poll(self, started: float) -> None:
        heads = ", ".join(f"'{chain}', {seq}" for chain, seq in self.heads.items())
        above = f"map({heads})[chain_id]" if heads else "0"
        rows = self.client.query(
            f"SELECT toString(event_id), chain_id, chain_seq FROM audit_events WHERE chain_seq > {above}"
        ).result_rows
        self.polls += 1
        for event_id, chain, seq in rows:
            self.seen.setdefault(event_id, started)
            if seq > self.heads.get(chain, 0):
                self.heads[chain] = int(seq)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.client.close()


class PacedProducer:
    """Sends generated events at a steady rate with `flowaudit produce`'s producer; notes send times."""

    def __init__(self, bootstrap: str, settings: Settings, seed: int) -> None:
        from flowaudit.domain.policy import load_policy
        from flowaudit.generator import EventGenerator
        from flowaudit.produce import EventProducer

        policy = load_policy(settings.policy_dir)
        self.producer = EventProducer(bootstrap, settings, policy)
        self.generator = EventGenerator(policy, seed=seed)
        self.sent: dict[str, float] = {}

    def send(self, count: int, rate: float) -> float:
        """Send `count` events at `rate` a second; return the seconds it took."""
        events = list(self.generator.events(count))
        started = time.monotonic()
        for number, raw in enumerate(events, start=1):
            sent_at = time.time()
            self.sent[self.producer.send(raw).event_id] = sent_at
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.producer.producer.flush()
        return time.monotonic() - started

    def close(self) -> None:
        self.producer.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def start_system(system: str, broker: EmbeddedBroker, store_url: str, work: Path, group: str) -> Any:
    """`flowaudit worker` (a WorkerProcess) or the quix peer (a Popen) on the broker and store."""
    if system == "worker":
        env = worker_env(broker.url, work / "worker", FLOWAUDIT_CLICKHOUSE_URL=store_url)
        env.pop("FLOWAUDIT_BATCH_MAX_SECONDS")  # the tests' setting: measure the worker's default
        env["FLOWAUDIT_CONSUMER_GROUP"] = group
        return WorkerProcess(env, work / "worker.log").start()
    sys.path.insert(0, str(HERE.parent))
    from stream import PEER_SCRIPT, peers_python

    command = [peers_python(), str(PEER_SCRIPT), "--bootstrap", broker.bootstrap, "--events", "0"]
    command += ["--data-dir", str(work / "quix"), "--group", group, "--store-url", store_url]
    log = open(work / "quix.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=log, cwd=REPO)


def stop_system(process: Any) -> None:
    if isinstance(process, WorkerProcess):
        process.stop()
        process.ensure_stopped()
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from flowaudit.runtime import all_topics

    group = f"bench-latency-{os.getpid()}"
    settings = Settings(metrics_port=0, consumer_group=group)
    server = ClickHouseHTTPServer(work / "store", databases=["flowaudit"], port=free_port())
    with EmbeddedBroker() as broker:
        broker.create_topics(all_topics(settings), args.partitions)  # the group's ledger changelog too
        store_url = f"{server.start()}/flowaudit"
        system = None
        watcher: RowWatcher | None = None
        try:
            system = start_system(args.system, broker, store_url, work, group)
            producer = PacedProducer(broker.bootstrap, settings, seed=11)
            producer.send(WARMUP_EVENTS, 500)
            watcher = wait_for(lambda: _watcher_once(store_url, args.poll), 120, "the first audit rows")
            watcher.start()
            warm = set(producer.sent)
            time.sleep(2)
            seconds = producer.send(int(args.rate * args.seconds), args.rate)
            timed = {event: at for event, at in producer.sent.items() if event not in warm}
            _settle(watcher, timed)
            producer.close()
            inserts = _inserts(system, len(producer.sent), seconds) if args.system == "worker" else None
        finally:
            if watcher is not None:
                watcher.stop()
            if system is not None:
                stop_system(system)
            server.stop()
    return summary(args, timed, watcher, seconds, inserts)


def _inserts(worker: WorkerProcess, rows: int, seconds: float) -> dict[str, Any]:
    """The worker's own account of its inserts over the whole run (warm-up included): how many, how
    long each took, the rows per insert, and the dead letters."""
    count = worker.metric("flowaudit_audit_insert_seconds_count")
    spent = worker.metric("flowaudit_audit_insert_seconds_sum")
    return {
        "inserts": int(count),
        "mean_insert_seconds": round(spent / count, 3) if count else None,
        "rows_per_insert": round(rows / count) if count else None,
        "insert_seconds_per_second_of_sending": round(spent / seconds, 2),
        "dead_lettered": worker.metric("flowaudit_dead_letters_total"),
    }


def _watcher_once(store_url: str, poll: float) -> RowWatcher | None:
    """A watcher that has seen the first rows (the warm-up written), else None (closed)."""
    watcher = RowWatcher(store_url, poll)
    try:
        watcher.poll(time.time())
    except Exception:  # the store is still being created
        watcher.client.close()
        return None
    if watcher.seen:
        return watcher
    watcher.client.close()
    return None


def _settle(watcher: RowWatcher, timed: dict[str, float], quiet: float = 5.0, limit: float = 120.0) -> None:
    """Wait until every timed event has a row, or no row came for `quiet` seconds (dead letters)."""
    deadline = time.monotonic() + limit
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(1 for event in timed if event in watcher.seen)
        if count == len(timed):
            return
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        time.sleep(0.2)


def summary(
    args: argparse.Namespace,
    timed: dict[str, float],
    watcher: RowWatcher | None,
    seconds: float,
    inserts: dict[str, Any] | None,
) -> dict[str, Any]:
    seen = watcher.seen if watcher is not None else {}
    latencies = [seen[event] - at for event, at in timed.items() if event in seen]
    if not latencies:
        raise SystemExit("latency: no timed event reached the store")
    start = min(timed.values())
    windows: dict[int, list[float]] = {}
    for event, at in timed.items():
        if event in seen:
            windows.setdefault(int((at - start) // 10), []).append(seen[event] - at)
    return {
        "system": args.system,
        "rate_asked": args.rate,
        "rate_sent": round(len(timed) / seconds),
        "seconds": round(seconds, 1),
        "events": len(timed),
        "audited": len(latencies),
        "without_row": len(timed) - len(latencies),
        "worker_store": inserts,
        "poll_interval_seconds": args.poll,
        "poll_median_seconds": round(statistics.median(watcher.poll_seconds), 3) if watcher else None,
        "latency_seconds": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
        },
        "p99_by_10_seconds": [round(percentile(values, 0.99), 2) for _, values in sorted(windows.items())],
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events a second (default 2000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce (default 60)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--poll", type=float, default=0.1, help="store poll interval, seconds")
    parser.add_argument("--system", choices=("worker", "quix"), default="worker")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.poll <= 0:
        parser.error("--rate, --seconds and --poll must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(args, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
