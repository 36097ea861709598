"""The batch pipeline with a fake publisher and an in-memory sink: no broker, no database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowaudit.domain.codec import MAGIC, AvroCodec
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record
from flowaudit.schemas import SCHEMA_DIR
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.streams.pipeline import (
    BatchProcessor,
    InboundMessage,
    InvalidRatioExceeded,
    InvalidRatioGuard,
    Topics,
)
from tests.conftest import DATA_DIR
from tests.fakes import FakePublisher, MemorySink

TOPICS = Topics("approved", "blocked", "dlq")
CODEC = AvroCodec(SCHEMA_DIR)


def _examples(policy: Policy, kind: str) -> list[dict[str, Any]]:
    lines = (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["event_type"] == kind]


def _messages(
    policy: Policy, kind: str, raws: list[dict[str, Any]], extra: list[bytes] = ()
) -> list[InboundMessage]:  # type: ignore[assignment]
    values = [CODEC.encode(kind, avro_record(event_from_mapping(raw, policy))) for raw in raws] + list(extra)
    return [
        InboundMessage(f"in.{kind}", 0, offset, None, value, 1_700_000_000_000)
        for offset, value in enumerate(values)
    ]


def _processor(
    policy: Policy, kind: str, sink: Any, guard: InvalidRatioGuard | None = None
) -> tuple[BatchProcessor, FakePublisher]:
    publisher = FakePublisher()
    processor = BatchProcessor(
        kind, policy, CODEC, publisher, sink, TOPICS, guard or InvalidRatioGuard(0.5, 1000)
    )
    return processor, publisher


def test_routes_allowed_and_blocked_with_the_decision_attached(policy: Policy) -> None:
    sink = MemorySink()
    processor, publisher = _processor(policy, "device_sync", sink)
    raws = _examples(policy, "device_sync")
    result = asyncio.run(processor.process(_messages(policy, "device_sync", raws)))
    assert (result.allowed, result.blocked, result.written) == (1, 1, 2)
    blocked = publisher.sent["blocked"][0]
    header = json.loads(dict(blocked.headers)["flowaudit-decision"])
    assert header["rules"] == ["health-data-leaves-eea"] and header["policy_version"] == policy.version
    assert blocked.key == raws[1]["event_id"].encode()
    assert [r.offset for r in sink.records] == [0, 1]


def test_bad_records_become_dead_letters_with_reason_and_origin(policy: Policy) -> None:
    sink = MemorySink()
    processor, publisher = _processor(policy, "sharing", sink)
    raws = _examples(policy, "sharing")
    good = CODEC.encode("sharing", avro_record(event_from_mapping(raws[0], policy)))
    wrong_country = avro_record(event_from_mapping(raws[0], policy)) | {"destination_country": "XX"}
    extra = [
        good[:15],
        MAGIC + b"\x01" * 8 + b"\x00",
        b"plain text",
        CODEC.encode(
            "device_sync", avro_record(event_from_mapping(_examples(policy, "device_sync")[0], policy))
        ),
        CODEC.encode("sharing", wrong_country),
    ]
    result = asyncio.run(processor.process(_messages(policy, "sharing", raws, extra)))
    assert result.dead_lettered == 5 and result.written == 2
    assert result.dead_letter_reasons == {
        "corrupt_body": 1,
        "unknown_schema": 1,
        "bad_magic": 1,
        "wrong_kind": 1,
        "invalid_event": 1,
    }
    first = dict(publisher.sent["dlq"][0].headers)
    assert first["flowaudit-source-topic"] == b"in.sharing" and first["flowaudit-source-offset"] == b"2"
    assert first["flowaudit-error-reason"] == b"corrupt_body" and first["flowaudit-error"]


def test_a_failing_sink_fails_the_batch(policy: Policy) -> None:
    processor, _ = _processor(policy, "device_sync", MemorySink(failures=1))
    with pytest.raises(StoreError):
        asyncio.run(processor.process(_messages(policy, "device_sync", _examples(policy, "device_sync"))))


def test_invalid_ratio_guard_stops_before_dead_lettering(policy: Policy) -> None:
    sink = MemorySink()
    guard = InvalidRatioGuard(limit=0.5, window=10)
    processor, publisher = _processor(policy, "device_sync", sink, guard)
    garbage = [InboundMessage("in", 0, n, None, b"junk", None) for n in range(12)]
    with pytest.raises(InvalidRatioExceeded, match="12 of the last 12"):
        asyncio.run(processor.process(garbage))
    assert publisher.sent == {} and sink.records == []


def test_guard_window_forgets_old_batches() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=10)
    guard.observe("k", 10, 4)
    guard.observe("k", 10, 4)
    assert guard.observe("k", 10, 0) < 0.5
    with pytest.raises(InvalidRatioExceeded):
        guard.observe("k", 10, 10)


def test_guard_trips_before_a_full_window_once_the_invalid_alone_exceed_the_limit() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=100)
    assert guard.observe("k", 5, 5) == 1.0  # 5 invalid: a full window could still end below the limit
    assert guard.observe("k", 45, 45) == 1.0  # 50 invalid: exactly the limit's share, not more
    with pytest.raises(InvalidRatioExceeded, match="51 of the last 51"):
        guard.observe("k", 1, 1)


def test_guard_below_the_window_tolerates_invalid_records_within_the_limit() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=100)
    for _ in range(9):
        guard.observe("k", 10, 5)  # 45 invalid of 90
    assert guard.observe("k", 10, 5) == 0.5  # a full window at exactly the limit


def test_memory_sink_recognises_replays(policy: Policy) -> None:
    sink = MemorySink()
    processor, _ = _processor(policy, "device_sync", sink)
    messages = _messages(policy, "device_sync", _examples(policy, "device_sync"))
    asyncio.run(processor.process(messages))
    again = asyncio.run(processor.process(messages))
    assert (again.written, again.replayed) == (0, 2)


def test_decision_header_is_the_decision_as_json(policy: Policy) -> None:
    from flowaudit.domain.decision import Decider

    processor, _ = _processor(policy, "sharing", MemorySink())
    decider = Decider(policy)
    for raw in _examples(policy, "sharing") * 2:  # the second round comes from the cache
        decision = decider.decide(event_from_mapping(raw, policy))
        header = json.loads(processor._decision_header(decision, 1234))
        assert header == {
            "event_id": decision.event_id,
            "decided_at": 1234,
            "decision": decision.decision,
            "data_categories": list(decision.data_categories),
            "legal_basis": decision.legal_basis,
            "rules": list(decision.rules),
            "waived": list(decision.waived),
            "policy_version": policy.version,
        }
