"""The `flowaudit-decision` header the pipeline writes has exactly the shape schemas/headers declares."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from flowaudit.domain.kinds import KIND_NAMES
from flowaudit.domain.policy import Policy
from flowaudit.schemas import HEADER_SCHEMA_DIR, SCHEMA_DIR
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.pipeline import BatchProcessor, LocalPipeline
from flowaudit.streams.route import DECISION_HEADER
from tests.fakes import FakePublisher, MemorySink
from tests.streams.batches import CODEC, TOPICS, examples, messages_of

VERSIONS = sorted(HEADER_SCHEMA_DIR.glob("decision.v*.avsc"), key=lambda path: int(path.stem.split(".v")[1]))
SCHEMA_PATH = VERSIONS[-1]  # the header the pipeline writes today
RAW_SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _headers(policy: Policy, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, parsed header) of every record the pipeline forwards for the kind's valid examples."""
    raws = examples(policy, kind)
    publisher = FakePublisher()
    processor = BatchProcessor(kind, policy, CODEC, MemorySink(), InvalidRatioGuard(0.5, 1000))
    result = asyncio.run(LocalPipeline(processor, publisher, TOPICS).process(messages_of(policy, kind, raws)))
    assert result.allowed + result.blocked == len(raws) > 0
    return [
        (topic, json.loads(dict(record.headers)[DECISION_HEADER]))
        for topic in (TOPICS.approved, TOPICS.blocked)
        for record in publisher.sent.get(topic, [])
    ]


def test_the_newest_header_schema_is_version_2() -> None:
    assert SCHEMA_PATH.name == "decision.v2.avsc"


def test_each_version_keeps_the_fields_of_the_one_before_and_defaults_the_new_ones() -> None:
    """A consumer that knows version N reads every older header: fields are only added, with defaults."""
    for older, newer in itertools.pairwise(VERSIONS):
        before = {field["name"]: field for field in json.loads(older.read_text())["fields"]}
        after = {field["name"]: field for field in json.loads(newer.read_text())["fields"]}
        for name, field in before.items():
            assert after[name]["type"] == field["type"], (newer.name, name)
        assert all("default" in after[name] for name in set(after) - set(before)), newer.name


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
