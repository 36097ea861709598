"""`flowaudit produce`'s producer with a fake Kafka client: each input kind to its topic, as Avro,
keyed by `user_id` (contract v2 §1), nothing sent for an invalid line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowaudit.common.settings import Settings
from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.consent import ConsentEvent, consent_from_avro
from flowaudit.domain.events import Event, InvalidEvent, event_from_avro
from flowaudit.domain.kinds import INPUT_KIND_NAMES
from flowaudit.domain.policy import Policy
from flowaudit.produce import EventProducer, input_topics
from flowaudit.schemas import SCHEMA_DIR
from tests.conftest import DATA_DIR

CODEC = AvroCodec(SCHEMA_DIR)
CONSENT = {
    "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "event_type": "consent",
    "occurred_at": "2025-11-05T09:00:00Z",
    "user_id": "u-7f3a",
    "consent_id": "consent-0001",
    "purpose": " Third_Party_Sharing ",
    "action": "granted",
    "notice_version": "privacy-policy/20251105",
}


class FakeClient:
    """What EventProducer uses of kafka-python's KafkaProducer; keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _producer(policy: Policy) -> tuple[EventProducer, FakeClient, Settings]:
    client = FakeClient()
    settings = Settings(metrics_port=0)
    return EventProducer("unused:9092", settings, policy, client=client), client, settings


def _flows() -> list[dict[str, Any]]:
    lines = (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_every_input_kind_has_a_topic(policy: Policy) -> None:
    settings = Settings(metrics_port=0)
    topics = input_topics(settings)
    assert tuple(topics) == INPUT_KIND_NAMES
    assert topics == {**settings.input_topics, "consent": settings.consent_topic}


def test_a_flow_goes_to_its_kind_s_topic_keyed_by_its_user(policy: Policy) -> None:
    producer, client, settings = _producer(policy)
    flows = _flows()
    for raw in flows:
        sent = producer.send(raw)
        assert isinstance(sent, Event)
        topic, key, value = client.sent[-1]
        assert topic == settings.input_topics[raw["event_type"]]
        assert key == (None if raw["user_id"] is None else raw["user_id"].encode())
        kind, record = CODEC.decode(value, raw["event_type"])
        assert event_from_avro(record, kind, policy) == sent
    assert producer.sent == len(flows) and producer.sent_by_kind["consent"] == 0


def test_a_bulk_transfer_without_a_user_has_no_key(policy: Policy) -> None:
    producer, client, _ = _producer(policy)
    bulk = next(raw for raw in _flows() if raw["event_type"] == "subcontractor_transfer")
    producer.send(bulk | {"user_id": None, "user_country": None})
    assert client.sent[-1][1] is None


def test_a_consent_goes_to_the_consent_topic_keyed_by_its_user(policy: Policy) -> None:
    producer, client, settings = _producer(policy)
    sent = producer.send(CONSENT)
    assert isinstance(sent, ConsentEvent) and sent.purpose == "third_party_sharing"
    [(topic, key, value)] = client.sent
    assert (topic, key) == (settings.consent_topic, b"u-7f3a")
    kind, record = CODEC.decode(value, "consent")
    assert kind == "consent" and consent_from_avro(record, policy) == sent
    withdrawal = {k: v for k, v in CONSENT.items() if k != "notice_version"} | {"action": "withdrawn"}
    assert producer.send(withdrawal).event_id == sent.event_id
    assert producer.sent == 2 and producer.sent_by_kind == {"consent": 2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"purpose": "astrology"}, "not in the processing register"),
        ({"action": "revoked"}, "action must be one of granted, withdrawn"),
        ({"user_id": None}, "missing field 'user_id'"),
        ({"occurred_at": "2099-01-01T00:00:00Z"}, "more than 5 minutes after"),
        ({"diagnosis": "afib"}, "unknown field 'diagnosis': not defined for consent"),
    ],
)
def test_an_invalid_consent_is_not_sent(policy: Policy, overrides: dict[str, Any], message: str) -> None:
    producer, client, _ = _producer(policy)
    with pytest.raises(InvalidEvent, match=message):
        producer.send(CONSENT | overrides)
    assert client.sent == [] and producer.sent == 0
