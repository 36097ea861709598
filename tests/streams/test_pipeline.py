"""The batch pipeline composed (`LocalPipeline` over a `BatchProcessor`) with a fake publisher and an
in-memory sink: no broker, no database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowaudit.domain.codec import MAGIC
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record
from flowaudit.sinks.clickhouse import StoreError
from flowaudit.streams.deadletter import InvalidRatioExceeded, InvalidRatioGuard
from flowaudit.streams.messages import InboundMessage
from flowaudit.streams.pipeline import BatchProcessor, LocalPipeline
from tests.fakes import MemorySink
from tests.streams.batches import CODEC, TOPICS, FakePublisher, examples, messages_of


def _processor(
    policy: Policy, kind: str, sink: Any, guard: InvalidRatioGuard | None = None
) -> tuple[LocalPipeline, FakePublisher]:
    publisher = FakePublisher()
    processor = BatchProcessor(kind, policy, CODEC, sink, guard or InvalidRatioGuard(0.5, 1000))
    return LocalPipeline(processor, publisher, TOPICS), publisher


def test_routes_allowed_and_blocked_with_the_decision_attached(policy: Policy) -> None:
    sink = MemorySink()
    processor, publisher = _processor(policy, "device_sync", sink)
    raws = examples(policy, "device_sync")
    result = asyncio.run(processor.process(messages_of(policy, "device_sync", raws)))
    assert (result.allowed, result.blocked, result.written) == (1, 1, 2)
    blocked = publisher.sent["blocked"][0]
    header = json.loads(dict(blocked.headers)["flowaudit-decision"])
    assert header["rules"] == ["health-data-leaves-eea"] and header["policy_version"] == policy.version
    assert blocked.key == raws[1]["event_id"].encode()
    assert [r.offset for r in sink.records] == [0, 1]


def test_bad_records_become_dead_letters_with_reason_and_origin(policy: Policy) -> None:
    sink = MemorySink()
    processor, publisher = _processor(policy, "sharing", sink)
    raws = examples(policy, "sharing")
    good = CODEC.encode("sharing", avro_record(event_from_mapping(raws[0], policy)))
    wrong_country = avro_record(event_from_mapping(raws[0], policy)) | {"destination_country": "XX"}
    extra = [
        good[:15],
        MAGIC + b"\x01" * 8 + b"\x00",
        b"plain text",
        CODEC.encode(
            "device_sync", avro_record(event_from_mapping(examples(policy, "device_sync")[0], policy))
        ),
        CODEC.encode("sharing", wrong_country),
    ]
    result = asyncio.run(processor.process(messages_of(policy, "sharing", raws, extra)))
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
        asyncio.run(processor.process(messages_of(policy, "device_sync", examples(policy, "device_sync"))))


def test_invalid_ratio_guard_stops_before_dead_lettering(policy: Policy) -> None:
    sink = MemorySink()
    guard = InvalidRatioGuard(limit=0.5, window=10)
    processor, publisher = _processor(policy, "device_sync", sink, guard)
    garbage = [InboundMessage("in", 0, n, None, b"junk", None) for n in range(12)]
    with pytest.raises(InvalidRatioExceeded, match="12 of the last 12"):
        asyncio.run(processor.process(garbage))
    assert publisher.sent == {} and sink.records == []


def test_memory_sink_recognises_replays(policy: Policy) -> None:
    sink = MemorySink()
    processor, _ = _processor(policy, "device_sync", sink)
    messages = messages_of(policy, "device_sync", examples(policy, "device_sync"))
    asyncio.run(processor.process(messages))
    again = asyncio.run(processor.process(messages))
    assert (again.written, again.replayed) == (0, 2)


def test_batch_processors_give_every_kind_its_own_guard(policy: Policy) -> None:
    from flowaudit.streams.pipeline import batch_processors

    processors = batch_processors(["device_sync", "sharing"], policy, MemorySink(), 0.25, 50)
    assert [processor.kind for processor in processors] == ["device_sync", "sharing"]
    guards = [processor.decider.guard for processor in processors]
    assert guards[0] is not guards[1] and (guards[0].limit, guards[0].window) == (0.25, 50)
