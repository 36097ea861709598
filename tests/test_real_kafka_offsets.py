"""streams.consumer.first_record_offset on the real broker: where a partition's records are, when
some of its offsets hold transaction markers or records of an aborted transaction.

The consumer asks this when a partition's next commit offset stays unacknowledged (a hole): no
record there means the commit may pass it; a record means the partition is read again.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from flowaudit.streams.consumer import first_record_offset
from tests.kafka_broker import RealKafka

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

_NAMES = itertools.count()


def _topic(broker: RealKafka) -> str:
    name = f"offsets-probe-{next(_NAMES)}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    return name


def _write(broker: RealKafka, topic: str) -> None:
    """Offsets 0-2: a committed transaction, 3: its marker; 4-5: an aborted one, 6: its marker;
    7: a record outside any transaction."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for value in (b"a", b"b", b"c"):
        producer.produce(topic, value, partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for value in (b"x", b"y"):
        producer.produce(topic, value, partition=0)
    producer.flush(30)
    producer.abort_transaction(30)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(topic, b"d", partition=0)
    plain.flush(30)


def _first(broker: RealKafka, topic: str, offset: int, isolation: str) -> int | None:
    return asyncio.run(
        first_record_offset(
            broker.bootstrap, TP(topic, 0), offset, isolation_level=isolation, timeout_seconds=20
        )
    )


def test_the_first_record_at_or_after_an_offset_skips_markers_and_aborted_records(
    real_kafka: RealKafka,
) -> None:
    topic = _topic(real_kafka)
    _write(real_kafka, topic)
    assert _first(real_kafka, topic, 0, "read_uncommitted") == 0  # a record: the hole is read again
    assert _first(real_kafka, topic, 3, "read_uncommitted") == 4  # a marker: 3 holds no record
    assert _first(real_kafka, topic, 6, "read_uncommitted") == 7
    # the worker reading committed records only (Faust in a transaction) never gets 4 and 5
    assert _first(real_kafka, topic, 3, "read_committed") == 7
    assert _first(real_kafka, topic, 8, "read_uncommitted") is None  # nothing there yet


def test_offsets_deleted_before_they_were_read_are_answered_with_the_log_start(real_kafka: RealKafka) -> None:
    """A group away longer than retention: its committed offset is below the log's start. The probe
    never resets to the log's end (that would make a gap of records that are there)."""
    from confluent_kafka import TopicPartition

    topic = _topic(real_kafka)
    _write(real_kafka, topic)
    admin = AdminClient({"bootstrap.servers": real_kafka.bootstrap})
    deleted = admin.delete_records([TopicPartition(topic, 0, 5)])
    for future in deleted.values():
        future.result(30)
    assert _first(real_kafka, topic, 1, "read_uncommitted") == 5  # 1 to 4 deleted; 5 is still there


def test_a_marker_with_no_record_after_it_answers_the_log_end(real_kafka: RealKafka) -> None:
    topic = _topic(real_kafka)
    producer = Producer({"bootstrap.servers": real_kafka.bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"a", partition=0)
    producer.commit_transaction(30)  # 0: the record, 1: the marker, nothing after
    assert _first(real_kafka, topic, 1, "read_uncommitted") == 2  # 1 holds no record
