"""The decide step alone: decode, validate and decide a batch into audit records and routes."""

from __future__ import annotations

import time

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.decide import LATENCY_SAMPLES, BatchDecider
from flowaudit.streams.messages import InboundMessage
from tests.streams.batches import CODEC, examples, messages_of


def test_a_batch_is_decided_into_records_and_routes_by_index(policy: Policy) -> None:
    raws = examples(policy, "device_sync")
    batch = messages_of(policy, "device_sync", raws, extra=[b"plain text"])
    decided = BatchDecider("device_sync", policy, CODEC, InvalidRatioGuard(0.5, 1000)).decide(batch)

    decider = Decider(policy)
    expected = [decider.decide(event_from_mapping(raw, policy)) for raw in raws]
    assert decided.consumed == len(raws) + 1
    assert [record.offset for record in decided.records] == list(range(len(raws)))
    assert [index for index, _, _ in decided.routes.blocked] == [i for i, d in enumerate(expected) if d.rules]
    assert [index for index, _, _ in decided.routes.approved] == [
        i for i, d in enumerate(expected) if not d.rules
    ]
    assert [index for index, _ in decided.routes.dead] == [len(raws)]
    assert decided.reasons == {"bad_magic": 1}
    result = decided.result(written=len(raws), replayed=0)
    assert (result.allowed + result.blocked, result.dead_lettered) == (len(raws), 1)


def test_decision_latency_is_sampled(policy: Policy) -> None:
    raws = examples(policy, "device_sync") * 200
    batch = messages_of(policy, "device_sync", raws)
    untimed = InboundMessage("in", 0, len(batch), None, batch[0].value, None)
    decided = BatchDecider("device_sync", policy, CODEC, InvalidRatioGuard(0.5, 1000)).decide(
        [*batch, untimed]
    )
    # every (len // LATENCY_SAMPLES)-th record: between LATENCY_SAMPLES and twice as many, never all
    assert LATENCY_SAMPLES <= len(decided.latencies) < 2 * LATENCY_SAMPLES
    assert all(latency >= 0 for latency in decided.latencies)


def test_records_dated_where_no_flow_can_be_are_dead_letters(policy: Policy) -> None:
    """The Avro path refuses what `evaluate` refuses: after year 9999 (2^62 ms, which used to break
    verify for the whole store), more than 5 minutes ahead, before 2000."""
    from flowaudit.produce import avro_record

    raw = examples(policy, "device_sync")[0]
    event = event_from_mapping(raw, policy)
    values = []
    for millis in (2**62, int(time.time() * 1000) + 3_600_000, 0, event.occurred_at_ms):
        record = avro_record(event)
        record["occurred_at"] = millis
        values.append(CODEC.encode("device_sync", record))
    batch = [InboundMessage("in", 0, offset, None, value, None) for offset, value in enumerate(values)]
    decided = BatchDecider("device_sync", policy, CODEC, InvalidRatioGuard(0.9, 1000)).decide(batch)
    assert [index for index, _ in decided.routes.dead] == [0, 1, 2]
    assert decided.reasons == {"invalid_event": 3}
    errors = [dict(headers)["flowaudit-error"].decode() for _, headers in decided.routes.dead]
    assert "more than 5 minutes after" in errors[0] and "more than 5 minutes after" in errors[1]
    assert "before 2000-01-01" in errors[2]
    assert [record.offset for record in decided.records] == [3]
