"""`flowaudit produce`: canonical JSON events in, Avro single-object records out, to the kind's topic.

Every input kind of `kinds.INPUT_KINDS` is accepted: a flow line (validated by `event_from_mapping`)
goes to its kind's topic (`Settings.input_topics`), a consent line (`"event_type": "consent"`,
validated by `consent_from_mapping`) to the consent topic (`Settings.consent_topic`). Both are checked
as the worker would check them, `occurred_at` included, before anything is sent.

The key of every record is its `user_id` (UTF-8), null for a bulk transfer that has none: contract
v2 §1 says one subject's events and consents share a partition, and the consent ledger is a table
keyed by `user_id`, co-partitioned with the flow topics (§6). (Until issue 14 the key was the event
id, which spread a subject's records over every partition.)

Uses kafka-python (2.3.x: the 3.x line cannot talk to librdkafka's mock cluster). Lines that are not
valid events are reported on standard error and not sent.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
from kafka import KafkaProducer

from flowaudit.common.settings import Settings, kafka_bootstrap
from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.consent import CONSENT_KIND, ConsentEvent, consent_from_mapping
from flowaudit.domain.events import Event, InvalidEvent, check_occurred_at, event_from_mapping
from flowaudit.domain.kinds import INPUT_KINDS
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


def consent_avro_record(consent: ConsentEvent) -> dict[str, Any]:
    """The consent as a record of the consent kind's newest schema (`schemas/consent.vN.avsc`)."""
    return {
        "event_id": consent.event_id,
        "occurred_at": consent.occurred_at_ms,
        "user_id": consent.user_id,
        "consent_id": consent.consent_id,
        "purpose": consent.purpose,
        "action": consent.action,
        "notice_version": consent.notice_version,
    }


def record_key(user_id: str | None) -> bytes | None:
    """The Kafka key of a record of `user_id`'s: the id itself; none for a bulk transfer without one."""
    return None if user_id is None else user_id.encode()


def input_topics(settings: Settings) -> dict[str, str]:
    """Every input kind -> its topic: the setting `InputKind.topic_setting` names (flows and consent)."""
    return {kind.name: getattr(settings, kind.topic_setting) for kind in INPUT_KINDS.values()}


def resolve_bootstrap(settings: Settings) -> str | None:
    """FLOWAUDIT_KAFKA_URL, else the embedded broker of a worker running on this data directory."""
    if settings.kafka_url:
        return kafka_bootstrap(settings.kafka_url)
    from flowaudit.webapi import read_worker_file

    info = read_worker_file(settings)
    return str(info["kafka_bootstrap"]) if info and info.get("kafka_bootstrap") else None


class EventProducer:
    """Sends canonical JSON events of every input kind as Avro records, keyed by `user_id`.

    `sent` counts every record sent, `sent_by_kind` per input kind (the demo tells the flows, which the
    worker reports on, from the consents).
    `client` stands in for the Kafka producer (tests); by default one is connected to `bootstrap`.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        policy: Policy,
        codec: AvroCodec | None = None,
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.codec = codec or AvroCodec(SCHEMA_DIR)
        self.topics = input_topics(settings)
        self.producer = client or KafkaProducer(
            bootstrap_servers=bootstrap,
            api_version=KAFKA_API_VERSION,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            max_request_size=8 << 20,
        )
        self.sent = 0
        self.sent_by_kind: Counter[str] = Counter()

    def send(self, raw: dict[str, Any], *, version: int | None = None) -> Event | ConsentEvent:
        """Validate, encode and send one canonical JSON event or consent. Raises InvalidEvent."""
        now_ms = int(time.time() * 1000)
        if isinstance(raw, dict) and raw.get("event_type") == CONSENT_KIND:
            consent = consent_from_mapping(raw, self.policy)
            check_occurred_at(consent.occurred_at_ms, now_ms)  # what the worker would refuse
            data = self.codec.encode(CONSENT_KIND, consent_avro_record(consent), version=version)
            self.send_bytes(CONSENT_KIND, data, record_key(consent.user_id))
            return consent
        event = event_from_mapping(raw, self.policy)
        check_occurred_at(event.occurred_at_ms, now_ms)
        data = self.codec.encode(event.event_type, avro_record(event), version=version)
        self.send_bytes(event.event_type, data, record_key(event.user_id))
        return event

    def send_bytes(self, kind: str, data: bytes, key: bytes | None = None) -> None:
        """Send `data` to the topic of input kind `kind` as it is (the demo's broken records too)."""
        self.producer.send(self.topics[kind], key=key, value=data)
        self.sent += 1
        self.sent_by_kind[kind] += 1

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
