"""The flowaudit pipeline on quix-streams: the peer that `bench/stream.py --peers` runs beside the worker.

The same job as the worker, with the project's own steps and a quix-streams `Application` around
them: one `StreamingDataFrame` per flow topic that, per record,

1. decodes it with the project's codec (`domain/codec.py`), validates it (`domain/events.py`) and
   decides it with the project's decision core (`domain/decision.py`), with the worker's decision
   header (`streams/route.py`, `DecisionHeaders`) and dead-letter headers (`streams/deadletter.py`);
2. produces it to the gate's topics (`to_topic`): allowed to the approved topic, blocked to the
   blocked one, both as the original value under the event id with the `flowaudit-decision` header;
   invalid records to the dead-letter topic with their original key and the dead-letter headers;
3. hands the audit record to a sink (`AuditRowsSink`), which at every quix checkpoint writes all
   the records it holds with the project's store (`sinks/clickhouse.py`, `AuditStore.prepare` and
   `insert`: the same rows, hash chain links per source partition and Arrow insert as the worker),
   into a chDB store of its own.

Commit after write, by quix's checkpoint (`quixstreams/checkpointing/checkpoint.py`): sinks flushed
first (the insert has returned), then the producer flushed (every gate record and dead letter
acknowledged), and only then the offsets committed. A failed insert raises `SinkBackpressureError`:
quix drops the checkpoint's work, seeks back to the committed offsets and reads it again (the store
recognises rows it already holds). The invalid-ratio guard (`streams/deadletter.py`) is observed
once per checkpoint and kind, before the insert, as the worker observes it once per batch.

Checkpoints are cut by time and by size with the worker's batch limits (`commit_interval` =
FLOWAUDIT_BATCH_MAX_SECONDS, `commit_every` = FLOWAUDIT_BATCH_MAX_ROWS), so both batch alike.
What the worker does and this peer does not: no consent topic (the `--peers` runs are flows only),
no Prometheus metrics, no web API, no second process, and one instance only (the worker moves a
chain's ownership with its partition on a rebalance; this peer reads its chain heads once at start).

quix-streams 3.28 pins confluent-kafka < 2.13 (the project uses 2.16), so it runs from a virtual
environment of its own, `.venv-peers` (`make peers-venv`: the project installed with its `peers`
extra). It reaches the parent's embedded broker (librdkafka's mock cluster) over the Kafka protocol.

    .venv-peers/bin/python bench/peers/quix_peer.py --bootstrap HOST:PORT --events N --data-dir DIR \\
        --group G [--store-url URL]

stops once N records are durable and prints one JSON line (the keys of the other runs of
`bench/stream.py`); with `--events 0` it runs until SIGTERM (`bench/latency.py --system quix`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: RunClock

from quixstreams import Application, message_context
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.models.topics import Topic, TopicAdmin, TopicConfig, TopicManager
from quixstreams.sinks import BaseSink, SinkBackpressureError
from stream import RunClock, store_rows

from flowaudit.common.settings import Settings
from flowaudit.domain.codec import AvroCodec, DecodeError
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import InvalidEvent, check_occurred_at, event_from_avro
from flowaudit.domain.kinds import CONSENT_ROLE, INPUT_KINDS
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore, StoreError, load_chain_key
from flowaudit.streams.app import input_topic
from flowaudit.streams.deadletter import InvalidRatioGuard, dead_letter_headers
from flowaudit.streams.messages import Headers, InboundMessage
from flowaudit.streams.route import DECISION_HEADER, DecisionHeaders

log = logging.getLogger("quix-peer")


class Outcome(NamedTuple):
    """One decided record: where it goes, under which key and headers, and its audit record (None
    for a dead letter)."""

    topic: Topic
    key: bytes | None
    value: bytes
    headers: Headers
    record: AuditRecord | None


class OriginalValue(Serializer):
    """The gate topics' value serializer: the record's original bytes, unchanged."""

    def __call__(self, value: Outcome, ctx: SerializationContext) -> bytes:
        return value.value


class MetadataTopicAdmin(TopicAdmin):
    """Topic inspection from the cluster's metadata alone (partitions, replicas).

    quix-streams reads each topic's configuration at start-up with DescribeConfigs, which
    librdkafka's mock cluster does not answer (the request waits for a controller it never names).
    The configuration only matters to quix for topics it creates (none here: the bench creates
    them all), so the metadata is enough; nothing of the processing changes.
    """

    def inspect_topics(self, topic_names: list[str], timeout: float = 30) -> dict[str, TopicConfig | None]:
        cluster = self.list_topics(timeout=timeout)
        return {
            name: TopicConfig(
                num_partitions=len(cluster[name].partitions),
                replication_factor=len(cluster[name].partitions[0].replicas),
                extra_config={},
            )
            if name in cluster
            else None
            for name in topic_names
        }


class GateTopics(NamedTuple):
    approved: Topic
    blocked: Topic
    dead_letter: Topic


class RecordDecider:
    """Decode → validate → decide one record of one kind: `streams/decide.py`'s loop body, per record."""

    def __init__(self, kind: str, policy: Policy, codec: AvroCodec, gate: GateTopics) -> None:
        self.kind = kind
        self.policy = policy
        self.decode = codec.decode
        # an empty consent ledger, as the worker's for a flows-only input: the same consent rules apply
        self.decide = Decider(policy, StreamLedger()).decide
        self.header = DecisionHeaders().encode
        self.gate = gate

    def __call__(self, value: bytes, key: bytes | None, timestamp: int, headers: Any) -> Outcome:
        context = message_context()
        now_ms = int(time.time() * 1000)
        kind, policy = self.kind, self.policy
        try:
            _, raw = self.decode(value, kind)
            event = event_from_avro(raw, kind, policy)
            check_occurred_at(event.occurred_at_ms, now_ms)
        except DecodeError as exc:
            return self._dead(context, key, value, timestamp, exc.reason, str(exc))
        except InvalidEvent as exc:
            return self._dead(context, key, value, timestamp, "invalid_event", str(exc))
        decision = self.decide(event)
        record = AuditRecord(event, decision, context.topic, context.partition, context.offset, now_ms)
        topic = self.gate.blocked if decision.rules else self.gate.approved
        headers = [(DECISION_HEADER, self.header(decision, now_ms))]
        return Outcome(topic, event.event_id.encode(), value, headers, record)

    def _dead(
        self, context: Any, key: bytes | None, value: bytes, timestamp: int, reason: str, error: str
    ) -> Outcome:
        message = InboundMessage(context.topic, context.partition, context.offset, key, value, timestamp)
        headers = dead_letter_headers(message, self.kind, self.policy.version, reason, error)
        return Outcome(self.gate.dead_letter, key, value, headers, None)


class AuditRowsSink(BaseSink):
    """Holds the audit records of the current checkpoint; `flush` (quix calls it before the producer
    flush and the commit) writes them in one insert, a chain link per source partition."""

    def __init__(
        self, store: AuditStore, kinds: dict[str, str], guards: dict[str, InvalidRatioGuard]
    ) -> None:
        super().__init__()
        self.store = store
        self.kinds = kinds  # input topic -> kind
        self.guards = guards
        self.records: list[AuditRecord] = []
        self.seen: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()
        self.written = 0
        self.dead_lettered = 0
        self.on_durable: Any = None  # called with the number of records of each durable checkpoint

    def add(  # type: ignore[override]
        self, value: Outcome, key: Any, timestamp: int, headers: Any, topic: str, partition: int, offset: int
    ) -> None:
        self.seen[topic] += 1
        if value.record is None:
            self.invalid[topic] += 1
        else:
            self.records.append(value.record)

    def flush(self) -> None:
        records, seen, invalid = self.records, self.seen, self.invalid
        self._clear()
        for topic, count in seen.items():  # may raise InvalidRatioExceeded: nothing is committed
            self.guards[topic].observe(self.kinds[topic], count, invalid[topic])
        try:
            batch = self.store.prepare(records)
            self.store.insert(batch)
        except StoreError as exc:
            log.warning("insert failed, the checkpoint is read again: %s", exc)
            raise SinkBackpressureError(retry_after=1.0) from exc
        self.written += batch.rows
        self.dead_lettered += sum(invalid.values())
        if self.on_durable is not None:
            self.on_durable(sum(seen.values()))

    def on_paused(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.records, self.seen, self.invalid = [], Counter(), Counter()


def build_app(
    bootstrap: str, group: str, settings: Settings, store: AuditStore, policy: Policy
) -> tuple[Application, AuditRowsSink]:
    """The quix application: a dataframe per flow topic, decide → gate topics → audit rows sink."""
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=settings.batch_max_seconds,
        commit_every=settings.batch_max_rows,
        auto_create_topics=False,
        use_changelog_topics=False,
        processing_guarantee="at-least-once",
        loglevel="WARNING",
        producer_extra_config={"acks": "all", "linger.ms": 5},
        topic_manager=TopicManager(
            topic_admin=MetadataTopicAdmin(broker_address=bootstrap),
            consumer_group=group,
            auto_create_topics=False,
        ),
    )
    out = {"value_serializer": OriginalValue(), "key_serializer": "bytes"}
    gate = GateTopics(
        app.topic(settings.topic_approved, **out),
        app.topic(settings.topic_blocked, **out),
        app.topic(settings.topic_dead_letter, **out),
    )
    codec = AvroCodec(SCHEMA_DIR)
    flows = [kind for kind, spec in INPUT_KINDS.items() if spec.role != CONSENT_ROLE]
    kinds = {input_topic(settings, kind): kind for kind in flows}
    guards = {
        topic: InvalidRatioGuard(settings.invalid_ratio_limit, settings.invalid_ratio_window)
        for topic in kinds
    }
    sink = AuditRowsSink(store, kinds, guards)
    for topic_name, kind in kinds.items():
        source = app.topic(topic_name, value_deserializer="bytes", key_deserializer="bytes")
        decided = app.dataframe(source).apply(RecordDecider(kind, policy, codec, gate), metadata=True)
        decided = decided.set_headers(lambda value, key, timestamp, headers: value.headers)
        decided = decided.to_topic(
            lambda value, key, timestamp, headers: value.topic, key=lambda value: value.key
        )
        decided.sink(sink)
    return app, sink


def run(bootstrap: str, events: int, data_dir: str, group: str, store_url: str | None) -> dict[str, Any]:
    """Run the peer until it has made `events` records durable (0: until SIGTERM or SIGINT)."""
    settings = Settings(data_dir=Path(data_dir), metrics_port=0, web_port=0)
    policy = load_policy(settings.policy_dir)
    store_url = store_url or f"chdb://{Path(data_dir) / 'quix-audit'}"
    store = AuditStore(store_url, policy, load_chain_key(None, Path(data_dir)))
    store.connect()
    app, sink = build_app(bootstrap, group, settings, store, policy)
    clock = RunClock(events, {"quix": time.process_time})

    def durable(count: int) -> None:
        if clock.saw(count):
            app._producer.flush()  # the last gate records acknowledged too, as the worker's last batch
            clock.last = clock.stamp()
            app.stop()

    if events:
        sink.on_durable = durable
    app.run()
    store.close()
    totals = {"written": sink.written, "dead_lettered": sink.dead_lettered}
    if not events:
        return totals
    return clock.result() | totals | {"store_rows": store_rows(store_url, policy, Path(data_dir))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--store-url", help="the audit store (default: chDB under --data-dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(run(args.bootstrap, args.events, args.data_dir, args.group, args.store_url)))


if __name__ == "__main__":
    main()
