"""Batches for the pipeline's unit tests: example events encoded as Kafka records, a fake publisher."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.streams.messages import InboundMessage
from flowaudit.streams.route import Topics
from tests.conftest import DATA_DIR
from tests.fakes import FakePublisher

__all__ = ["CODEC", "TOPICS", "FakePublisher", "examples", "messages_of"]

TOPICS = Topics("approved", "blocked", "dlq")
CODEC = AvroCodec(SCHEMA_DIR)


def examples(policy: Policy, kind: str) -> list[dict[str, Any]]:
    """The valid example events of one kind (tests/data/events/valid.jsonl)."""
    lines = (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["event_type"] == kind]


def messages_of(
    policy: Policy, kind: str, raws: list[dict[str, Any]], extra: Sequence[bytes] = ()
) -> list[InboundMessage]:
    """The events encoded as records of partition 0 (offsets from 0), then the `extra` raw values."""
    values = [CODEC.encode(kind, avro_record(event_from_mapping(raw, policy))) for raw in raws] + list(extra)
    return [
        InboundMessage(f"in.{kind}", 0, offset, None, value, 1_700_000_000_000)
        for offset, value in enumerate(values)
    ]
