"""Fault injection: does every event end up audited exactly once, whatever happens to the worker?

Scenarios (each prints produced, audited, lost, doubled and the verify verdict):
- `kill`: events flow at a steady rate while the worker, or its pipeline process, is killed with
  SIGKILL over and over (--kills times, at random moments) and restarted; a last worker drains.
- `offsets`: a worker runs, stops; a fresh broker (offsets start at 0 again) and a second run on
  the same data directory: both runs' events must be audited.
- `outage`: the store, served over ClickHouse's HTTP interface by another process, goes away for
  --down seconds while events flow, and comes back on the same address; the worker keeps running.
- `moves`: two workers in one consumer group share one store (over HTTP) while partitions move
  between them (real Kafka only).

Lost = produced event ids without an audit row; doubled = audit rows beyond one per event id. The
broker is the embedded mock cluster (in this process) or, with --broker kafka, a real Apache Kafka
broker (scripts/kafka-broker.sh, on 127.0.0.1); workers are `flowaudit worker` subprocesses.

Usage: python bench/faults.py [--broker mock|kafka] [--scenario kill|offsets|all] [--kills 20]
       [--events 30000] [--rate 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flowaudit.broker import EmbeddedBroker  # noqa: E402
from flowaudit.common.settings import Settings  # noqa: E402
from flowaudit.domain.policy import load_policy  # noqa: E402
from tests.helpers import SteadyProducer, WorkerProcess, run_cli, wait_for, worker_env  # noqa: E402

PARTITIONS = 4
# a killed worker's partitions move after its session times out: keep that short (the minimum is 6 s)
_WORKER = {"FLOWAUDIT_TOPIC_PARTITIONS": str(PARTITIONS), "FLOWAUDIT_SESSION_TIMEOUT_SECONDS": "6"}
_CHAIN = {"FLOWAUDIT_CHAIN_KEY": "faults-bench-chain-key-0123456789"}


def _topics(settings: Settings) -> list[str]:
    from flowaudit.runtime import all_topics

    return all_topics(settings)


class _Broker(Protocol):
    url: str
    bootstrap: str

    def stop(self) -> None: ...


BROKER = {"kind": "mock", "work": Path(tempfile.gettempdir())}


def _broker(settings: Settings) -> _Broker:
    """A new broker of the kind asked for, with the worker's topics (a new one's offsets start at 0)."""
    if BROKER["kind"] == "kafka":
        from tests.kafka_broker import RealKafka, fetch_broker

        fetch_broker()
        real = RealKafka(Path(tempfile.mkdtemp(prefix="kafka-", dir=BROKER["work"]))).start()
        real.create_topics(_topics(settings), PARTITIONS)
        return real
    broker = EmbeddedBroker().start()
    broker.create_topics(_topics(settings), PARTITIONS)
    return broker


def _pids(data_dir: Path) -> tuple[int | None, int | None]:
    try:
        info = json.loads((data_dir / "worker.json").read_text())
    except (OSError, ValueError):
        return None, None
    return info.get("pid"), info.get("pipeline_pid")


def _drain(env: dict[str, str], log: Path) -> None:
    """Run a worker until it has consumed nothing new for 5 s (after it started consuming), then stop
    it with SIGTERM: whatever it did not get to shows up as lost."""
    worker = WorkerProcess(env, log).start()
    try:
        last, still_since = -1.0, time.monotonic()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            consumed = worker.metric("flowaudit_records_consumed_total")
            if consumed != last:
                last, still_since = consumed, time.monotonic()
            elif time.monotonic() - still_since >= (5 if consumed else 60):
                break
            time.sleep(0.5)
        worker.stop()
    finally:
        worker.ensure_stopped()


def _count(data_dir: Path, settings: Settings, produced: set[str]) -> dict[str, Any]:
    from flowaudit.sinks.clickhouse import AuditStore, load_chain_key

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env["FLOWAUDIT_DATA_DIR"] = str(data_dir)
    verified = json.loads(run_cli(env, "verify", "--json", timeout=600).stdout or b"{}")
    policy = load_policy(settings.policy_dir)
    store = AuditStore(f"chdb://{(data_dir / 'audit').resolve()}", policy, load_chain_key(None, data_dir))
    store.connect(writer=False)
    try:
        _, rows = store.query(f"SELECT toString(event_id), count() FROM {store.table} GROUP BY event_id")
    finally:
        store.close()
    return _counts(produced, rows, verified)


def _counts(produced: set[str], rows: Any, verified: dict[str, Any]) -> dict[str, Any]:
    """Lost and doubled, from the produced event ids and the store's (event id, rows) pairs."""
    stored = {event_id: int(count) for event_id, count in rows}
    return {
        "produced": len(produced),
        "audited": len(produced & stored.keys()),
        "lost": len(produced - stored.keys()),
        "doubled": sum(count - 1 for count in stored.values()),
        "verify": "OK" if verified.get("ok") else f"BROKEN: {verified}",
    }


def kill_loop(work: Path, kills: int, events: int, rate: float, seed: int) -> dict[str, Any]:
    settings = Settings()
    broker = _broker(settings)
    data_dir = work / "kill"
    env = worker_env(broker.url, data_dir, **_WORKER)
    producer = SteadyProducer(broker.bootstrap, settings, events, rate, seed)
    rng = random.Random(seed)
    killed = {"worker": 0, "pipeline": 0}
    worker: WorkerProcess | None = None
    try:
        producer.start()
        for number in range(kills):
            worker = WorkerProcess(env, work / f"kill-{number}.log").start()
            time.sleep(rng.uniform(1.0, 4.0))
            pid, pipeline_pid = _pids(data_dir)
            target = "pipeline" if pipeline_pid and rng.random() < 0.3 else "worker"
            os.kill(pipeline_pid if target == "pipeline" else pid or 0, signal.SIGKILL)
            killed[target] += 1
            wait_for(worker.exited, 30, "the killed worker to exit")
            worker.ensure_stopped()
            if pipeline_pid:
                gone = Path(f"/proc/{pipeline_pid}")
                wait_for(lambda gone=gone: not gone.exists(), 30, "its pipeline process")
        producer.done.wait()
        _drain(env, work / "drain.log")
        return {"scenario": "kill", "kills": killed, **_count(data_dir, settings, producer.ids)}
    finally:
        if worker is not None:  # a run that failed half-way leaves no worker behind
            worker.ensure_stopped()
        broker.stop()


def offsets_start_again(work: Path, events: int, rate: float, seed: int) -> dict[str, Any]:
    settings = Settings()
    data_dir = work / "offsets"
    produced: set[str] = set()
    for run in range(2):
        broker = _broker(settings)
        try:
            env = worker_env(broker.url, data_dir, **_WORKER)
            producer = SteadyProducer(broker.bootstrap, settings, events, rate, seed + run)
            producer.start()
            producer.done.wait()
            produced |= producer.ids
            _drain(env, work / f"offsets-{run}.log")
        finally:
            broker.stop()
    return {"scenario": "offsets", **_count(data_dir, settings, produced)}


def _count_http(store_url: str, env: dict[str, str], produced: set[str]) -> dict[str, Any]:
    """The counts of `_count` for a store reached over ClickHouse's HTTP interface."""
    import clickhouse_connect

    verified = json.loads(run_cli(env, "verify", "--json", timeout=600).stdout or b"{}")
    client = clickhouse_connect.get_client(dsn=store_url)
    try:
        rows = client.query(
            "SELECT toString(event_id), count() FROM audit_events GROUP BY event_id"
        ).result_rows
    finally:
        client.close()
    return _counts(produced, rows, verified)


def store_outage(work: Path, events: int, rate: float, seed: int, down_seconds: float) -> dict[str, Any]:
    """The store (served over HTTP by another process) goes away for `down_seconds` while events flow,
    then comes back on the same address; the worker keeps running throughout."""
    from tests.clickhouse_http import ClickHouseHTTPServer
    from tests.helpers import free_port

    settings = Settings()
    broker = _broker(settings)
    server = ClickHouseHTTPServer(work / "outage-store", databases=["flowaudit"], port=free_port())
    worker: WorkerProcess | None = None
    try:
        store_url = f"{server.start()}/flowaudit"
        env = worker_env(broker.url, work / "outage", FLOWAUDIT_CLICKHOUSE_URL=store_url, **_CHAIN, **_WORKER)
        worker = WorkerProcess(env, work / "outage.log").start()
        producer = SteadyProducer(broker.bootstrap, settings, events, rate, seed)
        producer.start()
        time.sleep(3)
        server.stop()  # the store is down: inserts fail and are retried, consumption waits
        time.sleep(down_seconds)
        backpressure = worker.metric("flowaudit_backpressure")
        server.start()
        producer.done.wait()
        stored = wait_for(lambda: _audited_ids(store_url) >= len(producer.ids), 180, "every event audited")
        worker.stop()
        result = _count_http(store_url, env, producer.ids)
        return {
            "scenario": "outage",
            "down_seconds": down_seconds,
            "backpressure_during": backpressure,
            "stored": stored,
            **result,
        }
    finally:
        if worker is not None:
            worker.ensure_stopped()
        server.stop()
        broker.stop()


def _audited_ids(store_url: str) -> int:
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(dsn=store_url)
    except Exception:
        return 0
    try:
        return int(client.query("SELECT uniqExact(event_id) FROM audit_events").result_rows[0][0])
    finally:
        client.close()


def partition_moves(work: Path) -> dict[str, Any]:
    """Two workers in one group sharing one store: partitions move from A to both, then to B."""
    from flowaudit.domain.policy import load_policy
    from tests.clickhouse_http import ClickHouseHTTPServer
    from tests.streams.two_workers import run_partition_moves

    settings = Settings()
    broker = _broker(settings)
    workers: list[WorkerProcess] = []
    try:
        (work / "moves").mkdir(parents=True, exist_ok=True)
        with ClickHouseHTTPServer(work / "moves-store", databases=["flowaudit"]) as server:
            result = run_partition_moves(
                broker.url,
                f"{server.url}/flowaudit",
                work / "moves",
                load_policy(settings.policy_dir),
                workers,
            )
    finally:
        for worker in workers:
            worker.ensure_stopped()
        broker.stop()
    return {
        "scenario": "moves",
        "produced": result["sent"],
        "audited": result["distinct"],
        "lost": result["sent"] - result["distinct"],
        "doubled": result["rows"] - result["distinct"],
        "verify": "OK" if result["verify"].get("ok") else f"BROKEN: {result['verify']}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--broker", choices=("mock", "kafka"), default="mock")
    parser.add_argument(
        "--scenario",
        choices=("kill", "offsets", "outage", "moves", "all"),
        default="all",
        help="moves: real Kafka only (the mock cluster refuses a second group member now and then)",
    )
    parser.add_argument("--down", type=float, default=15.0, help="seconds the store is down (outage)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=1500.0, help="events per second produced")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = parser.parse_args()
    results = []
    work = Path(tempfile.mkdtemp(prefix="flowaudit-faults-"))
    BROKER.update(kind=args.broker, work=work)
    print(f"work directory: {work}", file=sys.stderr)
    try:
        if args.scenario in ("kill", "all"):
            results.append(kill_loop(work, args.kills, args.events, args.rate, args.seed))
        if args.scenario in ("offsets", "all"):
            results.append(offsets_start_again(work, min(args.events, 5000), args.rate, args.seed))
        if args.scenario in ("outage", "all"):
            results.append(
                store_outage(work, min(args.events, 6000), min(args.rate, 300), args.seed, args.down)
            )
        if args.scenario == "moves" or (args.scenario == "all" and args.broker == "kafka"):
            results.append(partition_moves(work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for result in results:
        print(json.dumps({"broker": args.broker, **result}))
    if any(r["lost"] or r["doubled"] or r["verify"] != "OK" for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
