"""sinks.identity: which records are asked about, and which are kept (no store needed)."""

from __future__ import annotations

from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import ChainHead
from flowaudit.sinks.identity import RecentEventIds, split_known
from tests.sinks.test_clickhouse_store import generated


class FakeStore:
    def __init__(self, held: set[str]) -> None:
        self.held = held
        self.asked: list[list[str]] = []

    def __call__(self, event_ids: list[str]) -> set[str]:
        self.asked.append(event_ids)
        return self.held & set(event_ids)


def test_the_steady_state_asks_nothing(policy: Policy) -> None:
    records = [r for r in generated(policy, 200) if r.partition == 0]
    store = FakeStore(set())
    fresh, known = split_known(records, ChainHead(3, b"x" * 32, -1), RecentEventIds(), set(), store)
    assert (len(fresh), known, store.asked) == (len(records), [], [])


def test_records_at_or_below_the_chain_offset_are_asked_about(policy: Policy) -> None:
    records = [r for r in generated(policy, 200) if r.partition == 0]
    stored = {r.event.event_id for r in records[:30]}
    store = FakeStore(stored)
    head = ChainHead(5, b"x" * 32, records[59].offset)
    fresh, known = split_known(records, head, RecentEventIds(), set(), store)
    assert len(store.asked) == 1 and len(store.asked[0]) == 60  # only those at or below the head
    assert {r.event.event_id for r in known} == stored
    assert [r.offset for r in fresh] == sorted(r.offset for r in records[30:])


def test_a_hit_in_the_window_is_confirmed_before_a_record_is_skipped(policy: Policy) -> None:
    records = [r for r in generated(policy, 40) if r.partition == 1]
    recent = RecentEventIds()
    recent.add([records[0].event.event_id, records[1].event.event_id])
    store = FakeStore({records[0].event.event_id})  # the second is a hash hit the store denies
    fresh, known = split_known(records, ChainHead(), recent, set(), store)
    assert store.asked == [[records[0].event.event_id, records[1].event.event_id]]
    assert known == [records[0]] and records[1] in fresh


def test_repeats_within_a_batch_and_of_the_pending_batch_are_dropped(policy: Policy) -> None:
    records = [r for r in generated(policy, 40) if r.partition == 0]
    copy = records[3]._replace(offset=10_000)
    pending = {records[5].event.event_id}
    fresh, known = split_known([*records, copy], ChainHead(), RecentEventIds(), pending, FakeStore(set()))
    assert copy in known and records[3] in fresh and records[5] in known
    assert len(fresh) == len(records) - 1


def test_the_window_keeps_two_generations() -> None:
    recent = RecentEventIds(generation=3)
    recent.add(["a", "b", "c"])  # fills the first generation, which becomes the previous one
    recent.add(["d", "e"])  # the second: "a".."c" still held
    assert recent.may_hold("a") and recent.may_hold("e") and len(recent) == 5
    recent.add(["f"])  # the second generation is full: it becomes the previous one, the first goes
    assert not recent.may_hold("a") and recent.may_hold("d") and recent.may_hold("f")
    assert len(recent) == 3
