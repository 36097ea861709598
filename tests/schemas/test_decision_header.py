"""The `flowaudit-decision` header the pipeline writes has exactly the shape schemas/headers declares."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.kinds import KIND_NAMES
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record
from flowaudit.schemas import HEADER_SCHEMA_DIR, SCHEMA_DIR
from flowaudit.streams.pipeline import (
    DECISION_HEADER,
    BatchProcessor,
    InboundMessage,
    InvalidRatioGuard,
    Topics,
)
from tests.conftest import DATA_DIR
from tests.fakes import FakePublisher, MemorySink

SCHEMA_PATH = HEADER_SCHEMA_DIR / "decision.v1.avsc"
RAW_SCHEMA = json.loads(SCHEMA_PATH.read_text())
TOPICS = Topics("approved", "blocked", "dlq")


def _headers(policy: Policy, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, parsed header) of every record the pipeline forwards for the kind's valid examples."""
    codec = AvroCodec(SCHEMA_DIR)
    lines = (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()
    raws = [raw for raw in map(json.loads, lines) if raw["event_type"] == kind]
    messages = [
        InboundMessage(f"in.{kind}", 0, offset, None, codec.encode(kind, avro_record(event)), None)
        for offset, event in enumerate(event_from_mapping(raw, policy) for raw in raws)
    ]
    publisher = FakePublisher()
    processor = BatchProcessor(
        kind, policy, codec, publisher, MemorySink(), TOPICS, InvalidRatioGuard(0.5, 1000)
    )
    result = asyncio.run(processor.process(messages))
    assert result.allowed + result.blocked == len(raws) > 0
    return [
        (topic, json.loads(dict(record.headers)[DECISION_HEADER]))
        for topic in (TOPICS.approved, TOPICS.blocked)
        for record in publisher.sent.get(topic, [])
    ]


def test_the_header_schema_parses_and_documents_every_field() -> None:
    fastavro.parse_schema(RAW_SCHEMA)
    assert RAW_SCHEMA["doc"] and all(field.get("doc") for field in RAW_SCHEMA["fields"])
    assert not list(SCHEMA_DIR.glob("decision*.avsc"))  # not beside the kinds' schemas: no codec reads it


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_decision_headers_validate_against_the_schema(policy: Policy, kind: str) -> None:
    parsed = fastavro.parse_schema(RAW_SCHEMA)
    names = [field["name"] for field in RAW_SCHEMA["fields"]]
    headers = _headers(policy, kind)
    for topic, header in headers:
        assert list(header) == names  # the same fields, in the schema's order: none missing, none extra
        assert validate(header, parsed, raise_errors=True)  # JSON arrays, null and numbers need no mapping
        assert header["decision"] == ("allowed" if topic == TOPICS.approved else "blocked")


def test_the_examples_give_both_verdicts(policy: Policy) -> None:
    verdicts = {header["decision"] for kind in KIND_NAMES for _, header in _headers(policy, kind)}
    assert verdicts == {"allowed", "blocked"}
