"""Smoke test of the real Apache Kafka broker (tests/kafka_broker.py): records and a consumer group's
committed offsets go through the broker and survive its restart.

The clients are kafka-python's, at the protocol version flowaudit's producer uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from flowaudit.produce import KAFKA_API_VERSION
from tests.kafka_broker import RealKafka

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

TOPIC = "smoke-real-kafka"
GROUP = "smoke-real-kafka-group"
RECORDS = 100


def _producer(broker: RealKafka) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=KAFKA_API_VERSION, acks="all")


def _consumer(broker: RealKafka, group: str | None) -> KafkaConsumer:
    return KafkaConsumer(
        TOPIC,
        bootstrap_servers=broker.bootstrap,
        api_version=KAFKA_API_VERSION,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        client_id=f"smoke-{group}",
    )


def _poll(consumer: KafkaConsumer, count: int, timeout: float) -> list[tuple[int, bytes]]:
    """Poll until `count` records arrived (or `timeout` passed); then one more short poll, to see extras."""
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            received += [(record.partition, record.value) for record in batch]
    for batch in consumer.poll(timeout_ms=300).values():
        received += [(record.partition, record.value) for record in batch]
    return received


@pytest.fixture
def consumers() -> Iterator[list[KafkaConsumer]]:
    opened: list[KafkaConsumer] = []
    yield opened
    for consumer in opened:
        consumer.close(autocommit=False)


def test_records_and_committed_offsets_survive_a_restart(
    real_kafka: RealKafka, consumers: list[KafkaConsumer]
) -> None:
    real_kafka.create_topics([TOPIC], 2)
    producer = _producer(real_kafka)
    try:
        for i in range(RECORDS):
            producer.send(TOPIC, key=f"key-{i % 10}".encode(), value=f"record-{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = _consumer(real_kafka, GROUP)
    consumers.append(consumer)
    received = _poll(consumer, RECORDS, 60)
    assert sorted(value for _, value in received) == sorted(f"record-{i}".encode() for i in range(RECORDS))
    assert {partition for partition, _ in received} == {0, 1}, "the keys should spread over both partitions"
    consumer.commit()
    partitions = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    committed = {tp: consumer.committed(tp) for tp in partitions}
    assert sum(offset or 0 for offset in committed.values()) == RECORDS
    assert committed == consumer.end_offsets(partitions)
    consumer.close(autocommit=False)

    real_kafka.restart()

    admin = real_kafka.admin()
    try:
        after = {tp: meta.offset for tp, meta in admin.list_consumer_group_offsets(GROUP).items()}
    finally:
        admin.close()
    assert after == committed, "the group's committed offsets changed across the broker's restart"

    # The group resumes from its committed offsets: only a record produced after the restart arrives
    # (with the offsets lost it would re-read all, from `earliest`), and the log itself is still whole.
    producer = _producer(real_kafka)
    try:
        producer.send(TOPIC, key=b"key-0", value=b"after-restart").get(timeout=30)
    finally:
        producer.close()
    resumed = _consumer(real_kafka, GROUP)
    consumers.append(resumed)
    assert [value for _, value in _poll(resumed, 1, 60)] == [b"after-restart"]
    reader = _consumer(real_kafka, None)
    consumers.append(reader)
    assert len(_poll(reader, RECORDS + 1, 60)) == RECORDS + 1
