"""`flowaudit produce`: canonical JSON events in, Avro single-object records out, to the kind's topic.

Uses kafka-python (2.3.x: the 3.x line cannot talk to librdkafka's mock cluster). The key is the
event id. Lines that are not valid events are reported on standard error and not sent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
from kafka import KafkaProducer

from flowaudit.common.settings import Settings, kafka_bootstrap
from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.events import Event, InvalidEvent, check_occurred_at, event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR

# The mock cluster answers ApiVersions v4 in a form kafka-python 2.3 cannot parse; naming the
# version skips the probe. Real brokers speak it too.
KAFKA_API_VERSION = (2, 5)


def avro_record(event: Event) -> dict[str, Any]:
    """The event as a record of its kind's newest schema (the codec's default for `encode`).

    Keys the schema lacks are not written (fastavro ignores them): today only device_sync's
    `pseudonymized`, which no device_sync schema carries.
    """
    record = event.to_json_dict()
    del record["event_type"]
    record["occurred_at"] = event.occurred_at_ms
    return record


def resolve_bootstrap(settings: Settings) -> str | None:
    """FLOWAUDIT_KAFKA_URL, else the embedded broker of a worker running on this data directory."""
    if settings.kafka_url:
        return kafka_bootstrap(settings.kafka_url)
    from flowaudit.webapi import read_worker_file

    info = read_worker_file(settings)
    return str(info["kafka_bootstrap"]) if info and info.get("kafka_bootstrap") else None


class EventProducer:
    def __init__(
        self, bootstrap: str, settings: Settings, policy: Policy, codec: AvroCodec | None = None
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.codec = codec or AvroCodec(SCHEMA_DIR)
        self.topics = settings.input_topics
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            api_version=KAFKA_API_VERSION,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            max_request_size=8 << 20,
        )
        self.sent = 0

    def send(self, raw: dict[str, Any], *, version: int | None = None) -> Event:
        """Validate, encode and send one canonical JSON event. Raises InvalidEvent."""
        event = event_from_mapping(raw, self.policy)
        check_occurred_at(event.occurred_at_ms, int(time.time() * 1000))  # what the worker would refuse
        data = self.codec.encode(event.event_type, avro_record(event), version=version)
        self.send_bytes(event.event_type, data, event.event_id.encode())
        return event

    def send_bytes(self, kind: str, data: bytes, key: bytes | None = None) -> None:
        self.producer.send(self.topics[kind], key=key, value=data)
        self.sent += 1

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def _lines(path: str) -> Iterable[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
    else:
        with open(path, "rb") as handle:
            yield from handle


def run_produce(settings: Settings, policy: Policy, path: str, rate: float | None) -> int:
    bootstrap = resolve_bootstrap(settings)
    if bootstrap is None:
        print(
            "flowaudit produce: no broker: set FLOWAUDIT_KAFKA_URL, or start `flowaudit worker` "
            "(it runs the embedded broker) with the same FLOWAUDIT_DATA_DIR",
            file=sys.stderr,
        )
        return 2
    producer = EventProducer(bootstrap, settings, policy)
    errors = 0
    started = time.perf_counter()
    for number, line in enumerate(_lines(path), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            producer.send(orjson.loads(line))
        except (InvalidEvent, orjson.JSONDecodeError, ValueError) as exc:
            errors += 1
            print(f"line {number}: not sent: {exc}", file=sys.stderr)
            continue
        if rate:
            target = started + producer.sent / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    producer.close()
    elapsed = time.perf_counter() - started
    print(
        f"flowaudit produce: {producer.sent} events sent to {bootstrap} in {elapsed:.1f} s "
        f"({producer.sent / elapsed if elapsed else 0:,.0f}/s), {errors} lines rejected",
        file=sys.stderr,
    )
    return 1 if errors else 0
