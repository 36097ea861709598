"""The consent kind's processor (`streams.consents`) with the flow processors, sharing one ledger, as
the worker runs them: no broker, no database (an in-memory sink, a fake publisher)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.consent import consent_from_mapping
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record, consent_avro_record
from flowaudit.streams.consents import ConsentProcessor
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.pipeline import LocalPipeline, batch_processors
from tests.fakes import MemorySink
from tests.streams.batches import CODEC, TOPICS, FakePublisher

DATA = Path(__file__).parent.parent / "data" / "stream"


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _messages(
    policy: Policy, kind: str, raws: list[dict[str, Any]], first_offset: int = 0
) -> list[InboundMessage]:
    if kind == "consent":
        values = [CODEC.encode(kind, consent_avro_record(consent_from_mapping(raw, policy))) for raw in raws]
    else:
        values = [CODEC.encode(kind, avro_record(event_from_mapping(raw, policy))) for raw in raws]
    return [
        InboundMessage(f"in.{kind}", 0, first_offset + number, None, value, 1_700_000_000_000)
        for number, value in enumerate(values)
    ]


def _runners(
    policy: Policy, ledger: StreamLedger
) -> tuple[dict[str, LocalPipeline], MemorySink, FakePublisher]:
    sink, publisher = MemorySink(), FakePublisher()
    processors = batch_processors(["sharing", "consent"], policy, sink, 0.5, 1000, ledger)
    return {p.kind: LocalPipeline(p, publisher, TOPICS) for p in processors}, sink, publisher


def _decisions(sink: MemorySink) -> dict[str, tuple[str, list[str], list[str]]]:
    return {
        r.event.event_id[-2:]: (r.decision.decision, list(r.decision.rules), list(r.decision.flags))
        for r in sink.records
    }


def test_flows_decided_after_the_consents_read_them_as_of_their_time(policy: Policy) -> None:
    ledger = StreamLedger()
    runners, sink, publisher = _runners(policy, ledger)
    consents = asyncio.run(runners["consent"].process(_messages(policy, "consent", _lines("consents.jsonl"))))
    assert (consents.consumed, consents.written, consents.dead_lettered) == (3, 3, 0)
    assert len(ledger) == 2 and not publisher.sent.get("approved") and not publisher.sent.get("blocked")
    # the table gets the records as they stand after the batch, once per consent id, on its partition
    updated = {update.record.consent_id: update for update in consents.ledger_updates}
    assert sorted(updated) == ["c-anna-research", "c-anna-share"]
    assert updated["c-anna-share"].record.periods[0][1] is not None and updated["c-anna-share"].offset == 2
    flows = _lines("flows-before-restart.jsonl") + _lines("flows-after-restart.jsonl")
    asyncio.run(runners["sharing"].process(_messages(policy, "sharing", flows)))
    assert _decisions(sink) == {
        "11": ("allowed", [], []),
        "12": ("blocked", ["consent-not-valid"], []),
        "13": ("blocked", ["consent-not-valid"], []),
        "14": ("allowed", [], ["consent-unverified"]),
        "21": ("allowed", [], []),
        "22": ("blocked", ["consent-not-valid"], []),
    }


def test_a_flow_read_before_the_grant_it_cites_is_flagged_not_blocked(policy: Policy) -> None:
    """The consent topic and the flow topics are not ordered with each other (contract v2 §5, §6)."""
    ledger = StreamLedger()
    runners, sink, _ = _runners(policy, ledger)
    early = [line for line in _lines("flows-before-restart.jsonl") if line["event_id"].endswith("11")]
    asyncio.run(runners["sharing"].process(_messages(policy, "sharing", early)))
    assert _decisions(sink) == {"11": ("allowed", [], ["consent-unverified"])}


def test_a_consent_batch_read_again_changes_nothing(policy: Policy) -> None:
    ledger = StreamLedger()
    runners, _, _ = _runners(policy, ledger)
    messages = _messages(policy, "consent", _lines("consents.jsonl"))
    asyncio.run(runners["consent"].process(messages))
    before = sorted(ledger.records(), key=lambda record: record.consent_id)
    again: BatchResult = asyncio.run(runners["consent"].process(messages))
    assert (again.written, again.replayed) == (0, 3)
    assert sorted(ledger.records(), key=lambda record: record.consent_id) == before
    assert again.ledger_updates == ()  # nothing changed: nothing for the table either


def test_invalid_consents_are_dead_letters_and_the_rest_is_applied(policy: Policy) -> None:
    ledger = StreamLedger()
    sink = MemorySink()
    processor = ConsentProcessor(policy, CODEC, sink, InvalidRatioGuard(0.9, 1000), ledger)
    publisher = FakePublisher()
    runner = LocalPipeline(processor, publisher, TOPICS)
    good = _messages(policy, "consent", _lines("consents.jsonl")[:1])
    flow = _messages(policy, "sharing", _lines("flows-before-restart.jsonl")[:1], first_offset=1)
    bad = [good[0]._replace(offset=2, value=b"not avro at all"), flow[0]._replace(topic="in.consent")]
    result = asyncio.run(runner.process(good + bad))
    assert (result.consumed, result.written, result.dead_lettered) == (3, 1, 2)
    reasons = sorted(
        dict(record.headers)["flowaudit-error-reason"].decode() for record in publisher.sent["dlq"]
    )
    assert reasons == ["bad_magic", "wrong_kind"]
    assert len(ledger) == 1 and len(sink.consents) == 1


@pytest.mark.parametrize("another", ["user", "purpose"])
def test_a_claim_on_another_users_consent_id_leaves_the_ledger_and_the_table_alone(
    policy: Policy, another: str
) -> None:
    ledger = StreamLedger()
    runners, _, _ = _runners(policy, ledger)
    grant = _lines("consents.jsonl")[0]
    claim = dict(grant, event_id="22222222-0000-4000-8000-000000000099", occurred_at="2025-03-01T09:30:00Z")
    claim.update(user_id="u-ben") if another == "user" else claim.update(purpose="research_program")
    asyncio.run(runners["consent"].process(_messages(policy, "consent", [grant])))
    result = asyncio.run(runners["consent"].process(_messages(policy, "consent", [claim], first_offset=1)))
    record = ledger.find("c-anna-share", None)
    assert record is not None and (record.user_id, record.purpose) == ("u-anna", "third_party_sharing")
    assert result.ledger_updates == ()
