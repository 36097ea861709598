"""Route: the decision header, and forwarding a batch's routes against its messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.route import (
    DECISION_HEADER,
    DecisionHeaders,
    Routes,
    forward,
    forward_while_writing,
)
from tests.streams.batches import TOPICS, FakePublisher, examples


def test_decision_header_is_the_decision_as_json(policy: Policy) -> None:
    headers = DecisionHeaders()
    decider = Decider(policy)
    for raw in examples(policy, "sharing") * 2:  # the second round comes from the cache
        decision = decider.decide(event_from_mapping(raw, policy))
        header = json.loads(headers.encode(decision, 1234))
        assert header == {
            "event_id": decision.event_id,
            "decided_at": 1234,
            "decision": decision.decision,
            "data_categories": list(decision.data_categories),
            "legal_basis": decision.legal_basis,
            "rules": list(decision.rules),
            "special_category_condition": decision.special_category_condition,
            "transfer_mechanism": decision.transfer_mechanism,
            "flags": list(decision.flags),
            "waived": list(decision.waived),
            "counterparty": decision.counterparty,
            "policy_version": policy.version,
        }


def test_decision_header_carries_the_contract_v2_keys_in_the_evaluate_order(policy: Policy) -> None:
    """The header is the `flowaudit evaluate` object (contract v2 §7) with `decided_at` after the id;
    decisions that differ only in their counterparty share the cached middle, not the counterparty."""
    headers = DecisionHeaders()
    decider = Decider(policy)
    base = decider.decide(event_from_mapping(examples(policy, "sharing")[0], policy))
    full = base._replace(
        special_category_condition="explicit_consent",
        transfer_mechanism="consent_derogation",
        flags=("consent-unverified", "undeclared-category"),
        counterparty="RunTracker",
    )
    for decision in (full, full._replace(counterparty='Dr "Who" Ärzte'), full._replace(counterparty=None)):
        raw = headers.encode(decision, 99)
        header = json.loads(raw)
        contract = decision.to_contract_dict()
        expected = {"event_id": contract.pop("event_id"), "decided_at": 99, **contract}
        assert list(header) == list(expected) and header == expected
    assert len(headers._middles) == 1


MESSAGES = [
    InboundMessage("in", partition, partition, b"k%d" % partition, b"v%d" % partition, None)
    for partition in range(3)
]
ROUTES = Routes(
    approved=[(0, b"event-0", b"{0}")],
    blocked=[(2, b"event-2", b"{2}")],
    dead=[(1, [("flowaudit-error-reason", b"bad_magic")])],
)


def test_forward_publishes_the_original_values_where_the_routes_say() -> None:
    publisher = FakePublisher()
    asyncio.run(_gather(forward(publisher, TOPICS, MESSAGES, ROUTES)))
    (approved,), (blocked,), (dead,) = (publisher.sent[topic] for topic in ("approved", "blocked", "dlq"))
    assert (approved.key, approved.value, approved.headers, approved.partition_hint) == (
        b"event-0",
        b"v0",
        [(DECISION_HEADER, b"{0}")],
        0,
    )
    assert (blocked.key, blocked.value, blocked.partition_hint) == (b"event-2", b"v2", 2)
    assert (dead.key, dead.value, dead.headers) == (b"k1", b"v1", [("flowaudit-error-reason", b"bad_magic")])


def test_forward_publishes_nothing_for_empty_routes() -> None:
    assert forward(FakePublisher(), TOPICS, MESSAGES, Routes([], [], [])) == []


def test_a_failed_write_fails_the_forwarded_batch() -> None:
    async def failing_write() -> BatchResult:
        raise ConnectionError("store down")

    publisher = FakePublisher()
    with pytest.raises(ConnectionError):
        asyncio.run(forward_while_writing(publisher, TOPICS, MESSAGES, ROUTES, failing_write()))


async def _gather(publishes: list[Awaitable[None]]) -> None:
    await asyncio.gather(*publishes)
