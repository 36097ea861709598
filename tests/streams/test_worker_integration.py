"""The worker through the Kafka protocol, against the embedded broker (librdkafka's mock cluster).

Each test runs `flowaudit worker` in a subprocess pointed at a mock cluster started by the test,
produces with `flowaudit produce` (kafka-python) or raw records, and reads the output topics back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from flowaudit.broker import EmbeddedBroker
from flowaudit.common.settings import Settings
from flowaudit.domain.codec import MAGIC, AvroCodec
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.produce import KAFKA_API_VERSION, avro_record
from flowaudit.runtime import all_topics
from flowaudit.schemas import SCHEMA_DIR
from tests.conftest import DATA_DIR
from tests.helpers import REPO, WorkerProcess, read_topic, run_cli, wait_for, worker_env

pytestmark = pytest.mark.integration
SETTINGS = Settings()
TOPICS = all_topics(SETTINGS)


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as started:
        started.create_topics(TOPICS, 2)
        yield started


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.ensure_stopped()


def _start(
    workers: list[WorkerProcess],
    env: dict[str, str],
    tmp_path: Path,
    name: str,
    command: list[str] | None = None,
) -> WorkerProcess:
    worker = WorkerProcess(env, tmp_path / f"{name}.log", command)
    workers.append(worker)
    return worker.start()


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie, killed but not yet reaped by init, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _raw_producer(broker: EmbeddedBroker) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=KAFKA_API_VERSION, acks="all")


@pytest.mark.parametrize("pipeline_process", ["true", "false"])
def test_events_flow_through_the_gate_with_correct_decisions(
    broker: EmbeddedBroker,
    workers: list[WorkerProcess],
    tmp_path: Path,
    policy: Policy,
    pipeline_process: str,
) -> None:
    env = worker_env(broker.url, tmp_path / "data", FLOWAUDIT_PIPELINE_PROCESS=pipeline_process)
    worker = _start(workers, env, tmp_path, "worker")
    pipeline_pid = json.loads((tmp_path / "data" / "worker.json").read_text())["pipeline_pid"]
    assert (pipeline_pid is not None) == (pipeline_process == "true")

    # canonical JSON events: the shipped examples and a generated mix, sent with `flowaudit produce`
    events = [json.loads(line) for line in (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()]
    events += list(EventGenerator(policy, seed=21).events(400))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    produced = run_cli(env, "produce", str(source))
    assert produced.returncode == 0, produced.stderr

    # raw records: one corrupt, one with an unknown writer schema, one written with device_sync v1
    codec = AvroCodec(SCHEMA_DIR)
    sample = next(e for e in events if e["event_type"] == "device_sync")
    old = dict(sample, event_id="1f000000-0000-4000-8000-000000000001", destination_country="US")
    raw = _raw_producer(broker)
    good = codec.encode("device_sync", avro_record(event_from_mapping(sample, policy)))
    raw.send(SETTINGS.topic_device_sync, value=good[:12])
    raw.send(SETTINGS.topic_device_sync, value=MAGIC + bytes(8) + b"\x02")
    raw.send(
        SETTINGS.topic_device_sync,
        value=codec.encode("device_sync", avro_record(event_from_mapping(old, policy)), version=1),
    )
    raw.flush()
    raw.close()
    events.append(old)

    decider = Decider(policy)
    expected = {e["event_id"]: decider.decide(event_from_mapping(e, policy)) for e in events}
    allowed = {k for k, d in expected.items() if d.decision == "allowed"}
    blocked = set(expected) - allowed

    approved_records = read_topic(broker.bootstrap, SETTINGS.topic_approved, len(allowed))
    blocked_records = read_topic(broker.bootstrap, SETTINGS.topic_blocked, len(blocked))
    dead = read_topic(broker.bootstrap, SETTINGS.topic_dead_letter, 2)
    assert {r.key.decode() for r in approved_records} == allowed
    assert {r.key.decode() for r in blocked_records} == blocked
    for record in approved_records + blocked_records:
        header = json.loads(dict(record.headers)["flowaudit-decision"])
        decision = expected[record.key.decode()]
        assert header["decision"] == decision.decision and header["rules"] == list(decision.rules)
        assert header["data_categories"] == list(decision.data_categories)
        assert header["legal_basis"] == decision.legal_basis
    assert "health-data-leaves-eea" in expected[old["event_id"]].rules  # a device sync moved to the US

    reasons = sorted(dict(r.headers)["flowaudit-error-reason"].decode() for r in dead)
    assert reasons == ["corrupt_body", "unknown_schema"]
    for record in dead:
        headers = dict(record.headers)
        assert headers["flowaudit-source-topic"].decode() == SETTINGS.topic_device_sync
        assert int(headers["flowaudit-source-offset"]) >= 0 and headers["flowaudit-error"]

    # metrics match what was sent, by kind, decision and rule
    wait_for(lambda: worker.metric("flowaudit_audit_rows_total") == len(expected), 30, "all audit rows")
    for kind in ("device_sync", "sharing", "subcontractor_transfer"):
        for verdict in ("allowed", "blocked"):
            want = sum(
                1 for e in events if e["event_type"] == kind and expected[e["event_id"]].decision == verdict
            )
            assert worker.metric("flowaudit_events_total", kind=kind, decision=verdict) == want, (
                kind,
                verdict,
            )
    for rule in {r for d in expected.values() for r in d.rules}:
        want = sum(1 for d in expected.values() if rule in d.rules)
        assert worker.metric("flowaudit_blocked_events_total", rule=rule) == want, rule
    assert worker.metric("flowaudit_dead_letters_total", reason="corrupt_body") == 1
    assert worker.metric("flowaudit_dead_letters_total", reason="unknown_schema") == 1
    assert worker.metric("flowaudit_backpressure") == 0
    assert worker.metric("flowaudit_last_audit_write_timestamp_seconds") > 0
    assert worker.metric("flowaudit_forwarded_total", role="approved") == len(allowed)
    assert worker.metric("flowaudit_forwarded_total", role="blocked") == len(blocked)
    assert worker.metric("flowaudit_policy_info", version=policy.version) == 1

    # reports and verify while the worker holds the embedded store are answered by the worker
    report = run_cli(env, "report", "user-disclosures", "--user", events[0]["user_id"], "--format", "json")
    assert report.returncode == 0, report.stderr
    assert b"held by the running worker" in report.stderr
    disclosed = json.loads(report.stdout)
    assert any(row["recipient"] == "(platform: device sync)" for row in disclosed)
    # the retention comes from the worker's policy (the CLI sends only its flags)
    assert [r["retention"] for r in disclosed] == [policy.purposes[r["purpose"]].retention for r in disclosed]
    record = run_cli(env, "ropa", "--format", "csv")  # the Art. 30 record, its rows from the worker
    assert record.returncode == 0 and b"held by the running worker" in record.stderr, record.stderr
    lines = list(csv.DictReader(io.StringIO(record.stdout.decode())))
    assert sum(int(r["events"]) for r in lines if r["record"] in ("purpose", "unassigned")) == len(expected)
    verify = run_cli(env, "verify")
    assert verify.returncode == 0 and b"OK" in verify.stdout, verify.stdout + verify.stderr
    _web_api_refuses_strangers(env)

    assert worker.stop(signal.SIGTERM) == 0, worker.log()
    if pipeline_pid is not None:
        assert not _alive(pipeline_pid), "the pipeline process outlived the worker"
    after = run_cli(env, "verify", "--json")
    result = json.loads(after.stdout)
    assert after.returncode == 0 and result["ok"] and result["rows"] == len(expected)


def _web_api_refuses_strangers(env: dict[str, str]) -> None:
    """Without the token, or through another host name, the web API answers nothing."""
    base = f"http://127.0.0.1:{env['FLOWAUDIT_WEB_PORT']}"
    token = json.loads((Path(env["FLOWAUDIT_DATA_DIR"]) / "worker.json").read_text())["web_token"]
    attempts = {
        "no token": ({}, 401),
        "wrong token": ({"Authorization": "Bearer " + "x" * len(token)}, 401),
        "rebinding host": ({"Authorization": f"Bearer {token}", "Host": "attacker.example:80"}, 421),
    }
    for what, (headers, status) in attempts.items():
        request = urllib.request.Request(f"{base}/flowaudit/verify/", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status, what
    ok = urllib.request.Request(f"{base}/flowaudit/health/")
    with urllib.request.urlopen(ok, timeout=10) as response:
        assert json.loads(response.read()) == {"ok": True}  # no store address for strangers


def test_a_worker_whose_pipeline_process_dies_while_idle_stops_at_once(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """With no batch pending the death used to go unnoticed until the next batch, which may never come."""
    worker = _start(workers, worker_env(broker.url, tmp_path / "data"), tmp_path, "idle")
    pipeline_pid = json.loads((tmp_path / "data" / "worker.json").read_text())["pipeline_pid"]
    os.kill(pipeline_pid, signal.SIGKILL)
    wait_for(worker.exited, 30, "the worker to stop after its pipeline process died")
    assert worker.process is not None and worker.process.returncode == 3, worker.log()


def test_a_topic_missing_on_the_cluster_stops_the_worker_at_once(tmp_path: Path) -> None:
    with EmbeddedBroker() as partial:
        partial.create_topics([t for t in TOPICS if t != SETTINGS.topic_dead_letter], 2)
        env = worker_env(partial.url, tmp_path / "data")
        done = run_cli(env, "worker", timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.decode().strip().splitlines()[-1:]
    assert SETTINGS.topic_dead_letter in line and "missing" in line, done.stderr


def test_evolved_schema_record_is_decided(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy
) -> None:
    env = worker_env(broker.url, tmp_path / "data")
    _start(workers, env, tmp_path, "worker")
    codec = AvroCodec(SCHEMA_DIR)
    sample = json.loads((DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()[1])  # ECG to the US
    record = avro_record(event_from_mapping(sample, policy)) | {"firmware_version": "3.1.4"}
    raw = _raw_producer(broker)
    raw.send(SETTINGS.topic_device_sync, key=b"k", value=codec.encode("device_sync", record, version=2))
    raw.flush()
    raw.close()
    [out] = read_topic(broker.bootstrap, SETTINGS.topic_blocked, 1)
    assert json.loads(dict(out.headers)["flowaudit-decision"])["rules"] == ["health-data-leaves-eea"]
    assert out.value == codec.encode("device_sync", record, version=2)  # forwarded untouched


def _send_generated(
    env: dict[str, str], tmp_path: Path, policy: Policy, count: int, seed: int
) -> list[dict[str, Any]]:
    events = list(EventGenerator(policy, seed=seed).events(count))
    source = tmp_path / f"events-{seed}.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    assert run_cli(env, "produce", str(source)).returncode == 0
    return events


def test_events_whose_sink_write_failed_are_processed_again_after_a_restart(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy
) -> None:
    env = worker_env(broker.url, tmp_path / "data", FLOWAUDIT_INSERT_RETRY_MAX_SECONDS="0.5")
    failing = _start(
        workers,
        env,
        tmp_path,
        "failing",
        [sys.executable, str(REPO / "tests" / "streams" / "failing_store_worker.py")],
    )
    events = _send_generated(env, tmp_path, policy, 120, seed=5)
    wait_for(lambda: failing.metric("flowaudit_audit_insert_retries_total") >= 2, 60, "insert retries")
    assert failing.metric("flowaudit_backpressure") == 1
    assert failing.metric("flowaudit_audit_rows_total") == 0
    # the batch in flight is not acknowledged (its offsets stay uncommitted); a stop asked for is clean
    assert failing.stop(signal.SIGTERM) == 0, failing.log()

    worker = _start(workers, worker_env(broker.url, tmp_path / "data"), tmp_path, "worker")
    wait_for(lambda: worker.metric("flowaudit_audit_rows_total") >= len(events), 60, "rows after restart")
    assert worker.stop() == 0
    result = json.loads(run_cli(env, "verify", "--json").stdout)
    assert result["ok"] and result["rows"] == len(events)


def test_crash_between_write_and_commit_leaves_no_duplicates(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy
) -> None:
    # commits are made rare, so the kill lands after the audit write and before the offset commit
    env = worker_env(
        broker.url,
        tmp_path / "data",
        FLOWAUDIT_COMMIT_INTERVAL_SECONDS="120",
        FLOWAUDIT_SESSION_TIMEOUT_SECONDS="6",
    )
    first = _start(workers, env, tmp_path, "first")
    pipeline_pid = json.loads((tmp_path / "data" / "worker.json").read_text())["pipeline_pid"]
    events = _send_generated(env, tmp_path, policy, 300, seed=6)
    wait_for(lambda: first.metric("flowaudit_audit_rows_total") >= len(events), 60, "rows written")
    first.stop(signal.SIGKILL)
    wait_for(lambda: not _alive(pipeline_pid), 10, "the pipeline process to die with the worker")

    second = _start(workers, worker_env(broker.url, tmp_path / "data"), tmp_path, "second")
    wait_for(lambda: second.metric("flowaudit_audit_rows_replayed_total") >= len(events), 60, "the replay")
    assert second.metric("flowaudit_audit_rows_total") == 0
    assert second.stop() == 0
    result = json.loads(run_cli(env, "verify", "--json").stdout)
    assert result["ok"] and result["rows"] == len(events)


def test_offsets_that_start_again_are_audited(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy
) -> None:
    """Same data dir, a fresh broker whose offsets start at 0 again: every event of both runs is audited
    (the store used to take the second run's records for replays of the first's, by offset alone)."""
    env = worker_env(broker.url, tmp_path / "data")
    first = _start(workers, env, tmp_path, "first")
    events = _send_generated(env, tmp_path, policy, 300, seed=31)
    wait_for(lambda: first.metric("flowaudit_audit_rows_total") >= len(events), 60, "the first run's rows")
    assert first.stop() == 0
    with EmbeddedBroker() as fresh:
        fresh.create_topics(TOPICS, 2)
        env = worker_env(fresh.url, tmp_path / "data")
        second = _start(workers, env, tmp_path, "second")
        more = _send_generated(env, tmp_path, policy, 300, seed=32)
        wait_for(lambda: second.metric("flowaudit_audit_rows_total") >= len(more), 60, "the second run")
        assert second.metric("flowaudit_audit_rows_replayed_total") == 0
        assert second.stop() == 0
    result = json.loads(run_cli(env, "verify", "--json").stdout)
    assert result["ok"] and result["rows"] == len(events) + len(more), result
    # the store and the chain key are the owner's alone (they were world-readable)
    shared = [
        str(path) for path in (tmp_path / "data").rglob("*") if path.exists() and path.stat().st_mode & 0o077
    ]
    assert shared == []


def test_a_flood_of_invalid_records_stops_the_worker_loudly(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    limits = {"FLOWAUDIT_INVALID_RATIO_WINDOW": "20", "FLOWAUDIT_INVALID_RATIO_LIMIT": "0.5"}
    env = worker_env(broker.url, tmp_path / "data", **limits)
    worker = _start(workers, env, tmp_path, "worker")
    raw = _raw_producer(broker)
    for n in range(60):
        raw.send(SETTINGS.topic_sharing, value=b"not avro %d" % n)
    raw.flush()
    raw.close()
    wait_for(worker.exited, 60, "the worker to stop")
    assert worker.process is not None and worker.process.returncode == 3
    assert "invalid" in worker.log()
    # Batches decided before the guard trips are dead-lettered (how many depends on how the records
    # were batched); the guard bounds them by the limit's share of a window: 0.5 * 20.
    dead = read_topic(broker.bootstrap, SETTINGS.topic_dead_letter, 11, timeout=3)
    assert len(dead) <= 10


def test_the_faust_command_runs_the_same_worker(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy
) -> None:
    env = worker_env(broker.url, tmp_path / "data")
    faust = str(Path(sys.executable).parent / "faust")
    worker = _start(
        workers, env, tmp_path, "faust", [faust, "-A", "flowaudit.faustapp", "worker", "-l", "info"]
    )
    assert json.loads((tmp_path / "data" / "worker.json").read_text())["kafka_bootstrap"] == broker.bootstrap
    events = _send_generated(env, tmp_path, policy, 50, seed=9)
    wait_for(
        lambda: worker.metric("flowaudit_audit_rows_total") >= len(events), 60, "rows via the faust command"
    )
    assert worker.stop() == 0, worker.log()
    assert not (tmp_path / "data" / "worker.json").exists()


@pytest.mark.parametrize("with_reader", [False, True])
def test_the_web_api_reads_a_server_store_with_the_reader_role_only(
    broker: EmbeddedBroker, workers: list[WorkerProcess], tmp_path: Path, policy: Policy, with_reader: bool
) -> None:
    """With a ClickHouse server the worker's connection is the writer's: its web API serves reports
    and verify through FLOWAUDIT_CLICKHOUSE_READER_URL, and without one it serves none (503)."""
    from tests.clickhouse_http import ClickHouseHTTPServer

    with ClickHouseHTTPServer(tmp_path / "store", databases=["flowaudit"]) as server:
        extra = {"FLOWAUDIT_CLICKHOUSE_URL": f"http://writer:w-secret@127.0.0.1:{server.port}/flowaudit"}
        if with_reader:
            extra["FLOWAUDIT_CLICKHOUSE_READER_URL"] = (
                f"http://dpo:r-secret@127.0.0.1:{server.port}/flowaudit"
            )
        env = worker_env(broker.url, tmp_path / "data", FLOWAUDIT_CHAIN_KEY="k" * 32, **extra)
        worker = _start(workers, env, tmp_path, "worker")
        events = _send_generated(env, tmp_path, policy, 50, seed=12)
        wait_for(lambda: worker.metric("flowaudit_audit_rows_total") >= len(events), 60, "rows")
        token = json.loads((tmp_path / "data" / "worker.json").read_text())["web_token"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{env['FLOWAUDIT_WEB_PORT']}/flowaudit/verify/",
            headers={"Authorization": f"Bearer {token}"},
        )
        if with_reader:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            assert answer["ok"] and answer["rows"] == len(events), answer
        else:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 503
            assert b"FLOWAUDIT_CLICKHOUSE_READER_URL" in refused.value.read()
        assert worker.stop() == 0, worker.log()
