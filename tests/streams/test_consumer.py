"""streams.consumer and streams.app._ack: what a rebalance must not lose.

The seek after a rebalance rewinds the partitions that have nothing committed; an event fetched before
a rebalance is never acknowledged; a commit never passes an offset read but not acknowledged, and a
partition stuck at such an offset is read again from it.

The consumer's other behaviour is Faust's own; the loss this prevents is shown on the real broker by
tests/test_real_kafka_consents.py (the ledger following its partitions to another worker).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from flowaudit.common import metrics
from flowaudit.streams.app import _ack
from flowaudit.streams.consumer import WholeSeekConsumer

CHANGELOG = "group-consent-ledger-changelog"


class FakeFaustConsumer:
    """What `perform_seek` uses of Faust's consumer, recording the seeks it is asked for."""

    def __init__(self, committed: dict[TP, int | None], earliest: dict[TP, int], read: dict[TP, int]) -> None:
        self.committed = committed
        self.earliest = earliest
        self._read_offset: dict[TP, int | None] = dict(read)
        self._committed_offset: dict[TP, int | None] = {}
        self._commit_from: dict[TP, int] = {}
        self.sought: dict[TP, int] = {}

    _start_at = WholeSeekConsumer._start_at

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in partitions}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        # as Faust's: the read offset follows the seek (forgotten at offset 0)
        for tp, offset in partitions.items():
            self.sought[tp] = offset
            if offset > 0:
                self._read_offset[tp] = offset
            else:
                self._read_offset.pop(tp, None)

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic == CHANGELOG


def _perform_seek(consumer: FakeFaustConsumer) -> None:
    seek: Any = WholeSeekConsumer.perform_seek
    asyncio.run(seek(consumer))


def test_a_partition_with_nothing_committed_is_read_again_from_its_first_offset() -> None:
    fresh, trimmed = TP("flows", 0), TP("flows", 1)
    consumer = FakeFaustConsumer(
        committed={fresh: None, trimmed: None},
        earliest={fresh: 0, trimmed: 40},  # 40: older records deleted by retention
        read={fresh: 7, trimmed: 52},  # what the cleared stream buffers had reached
    )
    _perform_seek(consumer)
    assert consumer.sought == {fresh: 0, trimmed: 40}
    assert consumer._read_offset.get(fresh) is None  # nothing re-read from 0 is dropped as already read
    # one below the first offset: a first record above 40 shows 40 as skipped, not as a hole
    assert consumer._read_offset[trimmed] == 39
    assert consumer._commit_from == {fresh: 0, trimmed: 40}  # where their next commits start


def test_a_partition_committed_at_zero_is_read_again_from_its_first_offset() -> None:
    tp = TP("flows", 2)
    consumer = FakeFaustConsumer(committed={tp: 0}, earliest={tp: 0}, read={tp: 3})
    _perform_seek(consumer)
    assert consumer.sought == {tp: 0}
    assert consumer._read_offset.get(tp) is None


def test_committed_partitions_and_changelogs_keep_faust_seek() -> None:
    committed, changelog = TP("flows", 3), TP(CHANGELOG, 0)
    consumer = FakeFaustConsumer(
        committed={committed: 12, changelog: None},
        earliest={committed: 0, changelog: 0},
        read={committed: 20},
    )
    _perform_seek(consumer)
    assert (
        consumer.sought == {}
    )  # aiokafka's seek_to_committed moved the committed one; recovery seeks changelogs
    assert consumer._read_offset[committed] == 11
    assert consumer._committed_offset == {committed: 12}
    assert consumer._commit_from == {committed: 12}  # the changelog's commits are not the consumer's


class FakeEvent:
    def __init__(self, tp: TP, offset: int, generation: int) -> None:
        self.message = SimpleNamespace(tp=tp, partition=tp.partition, offset=offset, generation_id=generation)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


def test_only_events_of_the_current_generation_on_held_partitions_are_acknowledged() -> None:
    """An event fetched before a rebalance is left unacknowledged even on a partition assigned back:
    its batch may have skipped it (its chain was released), and the commit must not pass it."""
    held, gone = TP("flows", 0), TP("flows", 1)
    app: Any = SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: {held}), consumer_generation_id=3, rebalancing=False
    )
    before = FakeEvent(held, 4, generation=2)
    current = FakeEvent(held, 5, generation=3)
    revoked = FakeEvent(gone, 9, generation=3)
    counted = metrics.REBALANCE_REREADS.labels("earlier_generation")._value.get()
    _ack(app, [before, current, revoked])
    assert (before.acked, current.acked, revoked.acked) == (False, True, False)
    assert metrics.REBALANCE_REREADS.labels("earlier_generation")._value.get() == counted + 1


def test_nothing_is_acknowledged_while_a_rebalance_is_under_way() -> None:
    """From the revocation on, the sink may skip the records of released chains, and Faust commits
    while it revokes: an acknowledgement then could commit past a record that was never written."""
    held = TP("flows", 0)
    app: Any = SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: {held}), consumer_generation_id=3, rebalancing=True
    )
    event = FakeEvent(held, 4, generation=3)
    counted = metrics.REBALANCE_REREADS.labels("during_rebalance")._value.get()
    _ack(app, [event])
    assert not event.acked
    assert metrics.REBALANCE_REREADS.labels("during_rebalance")._value.get() == counted + 1


class FakeAckState:
    """What the commit rule uses of Faust's consumer: acked offsets, their index, gaps, seeks."""

    def __init__(
        self, commit_from: dict[TP, int], acked: dict[TP, list[int]], committed: dict[TP, int | None]
    ) -> None:
        from intervaltree import IntervalTree  # Faust's own type for gaps

        self._commit_from = dict(commit_from)
        self._acked = {tp: list(offsets) for tp, offsets in acked.items()}
        self._acked_index = {tp: set(offsets) for tp, offsets in acked.items()}
        self._gap = {tp: IntervalTree() for tp in acked}
        self._committed_offset = dict(committed)
        self._read_offset: dict[TP, int | None] = {}
        self._holes: dict[object, Any] = {}
        self.sought: list[tuple[TP, int]] = []

    async def _seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def test_the_commit_waits_at_an_offset_never_acknowledged_where_faust_passed_it() -> None:
    """The state of the loss on the real broker (subcontractor-transfer[2]): committed 25, offset 25
    never delivered to the agent, 26..130 acknowledged."""
    from faust.transport.consumer import Consumer as FaustConsumer

    tp = TP("flows", 2)
    acked = {tp: list(range(26, 131))}
    faust_rule: Any = FaustConsumer._new_offset
    assert faust_rule(FakeAckState({tp: 25}, acked, {tp: 25}), tp) == 131  # faust-streaming issue #606
    ours: Any = WholeSeekConsumer._new_offset
    state = FakeAckState({tp: 25}, acked, {tp: 25})
    assert ours(state, tp) is None
    state._acked[tp].append(25)  # read again and acknowledged
    state._acked_index[tp].add(25)
    assert ours(state, tp) == 131
    assert state._acked[tp] == [] and state._acked_index[tp] == set()
    assert state._commit_from[tp] == 131


def test_a_gap_the_fetch_loop_saw_counts_only_the_offsets_skipped() -> None:
    tp = TP("flows", 0)
    state = FakeAckState({tp: 12}, {tp: []}, {tp: 12})
    add_gap: Any = WholeSeekConsumer._add_gap
    asyncio.run(add_gap(state, tp, 12, 14))  # Faust's call after reading 11 then 14: 12, 13 hold no record
    assert [(gap.begin, gap.end) for gap in state._gap[tp]] == [(12, 14)]
    new_offset: Any = WholeSeekConsumer._new_offset
    assert new_offset(state, tp) == 14  # over the gap, not over 14 (delivered, not acknowledged yet)


def test_a_partition_stuck_at_a_hole_is_read_again_from_it_after_the_grace() -> None:
    stuck, flowing = TP("flows", 2), TP("flows", 3)
    state = FakeAckState({stuck: 25, flowing: 40}, {stuck: [26, 27], flowing: [40, 41]}, {})
    reread: Any = WholeSeekConsumer.reread_holes
    before = metrics.OFFSET_HOLE_REREADS._value.get()
    assert asyncio.run(reread(state, 100.0)) == 0  # seen; a batch may still be writing 25
    assert asyncio.run(reread(state, 100.0 + 10.0)) == 1
    assert state.sought == [(stuck, 25)]
    assert state._read_offset[stuck] == 24  # 25 is delivered again, not dropped as already read
    assert metrics.OFFSET_HOLE_REREADS._value.get() == before + 1
