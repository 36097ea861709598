"""streams.consumer and streams.app._ack: what a rebalance must not lose.

The seek after a rebalance rewinds the partitions that have nothing committed; an event fetched before
a rebalance is never acknowledged; a commit never passes an offset read but not acknowledged, and a
partition stuck at such an offset is read again from it.

The consumer's other behaviour is Faust's own; the loss this prevents is shown on the real broker by
tests/test_real_kafka_consents.py (the ledger following its partitions to another worker).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, cast
from unittest.mock import patch

from faust.transport.drivers import aiokafka as faust_aiokafka
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
        self._seeks: dict[TP, int] = {}
        self._seek_version = 0
        self.sought: dict[TP, int] = {}

    _bump_seeks = WholeSeekConsumer._bump_seeks

    def assignment(self) -> set[TP]:
        return set(self.committed)

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
    assert consumer._read_offset[trimmed] == 40
    assert consumer._commit_from == {fresh: 0, trimmed: 40}  # where their next commits start
    assert consumer._seeks == {fresh: 2, trimmed: 2}  # what a fetch held from before is not delivered


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
    assert consumer._read_offset[committed] == 12
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


def _consumer(commit_from: dict[TP, int], acked: dict[TP, list[int]], committed: dict[TP, int | None]) -> Any:
    """A WholeSeekConsumer with only what the commit rule, the fetch filter and the hole check use
    (Faust's service machinery is not started)."""
    from intervaltree import IntervalTree  # Faust's own type for gaps

    consumer: Any = object.__new__(WholeSeekConsumer)
    consumer._commit_from = dict(commit_from)
    consumer._acked = {tp: list(offsets) for tp, offsets in acked.items()}
    consumer._acked_index = {tp: set(offsets) for tp, offsets in acked.items()}
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = dict(committed)
    consumer._read_offset = {}
    consumer._holes = {}
    consumer._seeks = {}
    consumer._seek_version = 0
    consumer._delivered_seeks = {}
    consumer.app = SimpleNamespace(
        rebalancing=False, topics=SimpleNamespace(acks_enabled_for=lambda topic: True)
    )
    consumer.assignment = lambda: set(consumer._commit_from)
    consumer.sought = []
    consumer.probed = []
    consumer.first_record = {}

    async def seek_wait(partitions: dict[TP, int]) -> None:
        consumer.sought.extend(partitions.items())

    async def first_offset_from(tp: TP, offset: int) -> int | None:
        consumer.probed.append((tp, offset))
        answer = consumer.first_record.get(tp, offset)
        if isinstance(answer, Exception):
            raise answer
        return cast(int | None, answer)

    consumer.seek_wait = seek_wait
    consumer.first_offset_from = first_offset_from
    return consumer


def test_the_commit_waits_at_an_offset_never_acknowledged_where_faust_passed_it() -> None:
    """The state of the loss on the real broker (subcontractor-transfer[2]): committed 25, offset 25
    never delivered to the agent, 26..130 acknowledged."""
    from faust.transport.consumer import Consumer as FaustConsumer

    tp = TP("flows", 2)
    acked = {tp: list(range(26, 131))}
    faust_rule: Any = FaustConsumer._new_offset
    assert faust_rule(_consumer({tp: 25}, acked, {tp: 25}), tp) == 131  # faust-streaming issue #606
    state = _consumer({tp: 25}, acked, {tp: 25})
    assert state._new_offset(tp) is None
    state._acked[tp].append(25)  # read again and acknowledged
    state._acked_index[tp].add(25)
    assert state._new_offset(tp) == 131
    assert state._acked[tp] == [] and state._acked_index[tp] == set()
    assert state._commit_from[tp] == 131


def test_a_partition_not_sought_yet_commits_nothing() -> None:
    tp = TP("flows", 0)
    assert _consumer({}, {tp: [0, 1, 2]}, {})._new_offset(tp) is None


def test_faust_gap_inference_is_left_out() -> None:
    tp = TP("flows", 0)
    state = _consumer({tp: 12}, {tp: []}, {tp: 12})
    asyncio.run(state._add_gap(tp, 12, 131))  # Faust's call after a stale record 131 following 11
    assert not state._gap[tp]


def _fetch(consumer: Any, fetched: list[tuple[TP, int]], between: Any = None) -> list[tuple[TP, int]]:
    """Run the consumer's getmany over one fetch of `fetched` (Faust's getmany faked), calling
    `between()` after the first record is taken, as the timer's seek can run mid-fetch."""

    async def faust_getmany(self: Any, timeout: float) -> Any:
        for tp, offset in fetched:
            yield tp, SimpleNamespace(offset=offset)

    async def run() -> list[tuple[TP, int]]:
        taken: list[tuple[TP, int]] = []
        async for tp, message in consumer.getmany(1.0):
            taken.append((tp, message.offset))
            if between is not None and len(taken) == 1:
                await between()
        return taken

    with patch.object(faust_aiokafka.Consumer, "getmany", faust_getmany):
        return asyncio.run(run())


class _DrainHarness(WholeSeekConsumer):
    """Just enough of a service for Faust's own fetch loop (`Consumer._drain_messages`) to run."""

    should_stop = False


def _drain(consumer: Any, fetches: list[list[tuple[TP, int]]], on_delivery: Any) -> list[int]:
    """Run Faust's real fetch loop over `fetches` (Faust's getmany faked, ours in between);
    `on_delivery(offset)` is awaited as the stream's callback (a full stream buffer waits there)."""
    from faust.transport.consumer import Consumer as FaustConsumer

    delivered: list[int] = []
    served = {"fetches": 0}

    async def faust_getmany(self: Any, timeout: float) -> Any:
        served["fetches"] += 1
        for tp, offset in fetches[served["fetches"] - 1]:
            yield tp, SimpleNamespace(offset=offset, topic=tp.topic, key=None, value=None)

    async def callback(message: Any) -> None:
        delivered.append(message.offset)
        await on_delivery(message.offset)

    async def wait_first(*coroutines: Any) -> None:
        await coroutines[0]

    consumer.callback = callback
    consumer._stopped = SimpleNamespace(is_set=lambda: False)
    consumer.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
    consumer.sleep = asyncio.sleep
    consumer.wait_first = wait_first
    consumer.suspend_flow = SimpleNamespace(wait=lambda: None)
    consumer.consumer_stopped_errors = ()
    consumer.log = SimpleNamespace(dev=lambda *args, **kwargs: None)
    consumer._n_acked = 0
    consumer._commit_every = None
    fetcher = SimpleNamespace(_stopped=SimpleNamespace(is_set=lambda: served["fetches"] >= len(fetches)))
    with patch.object(faust_aiokafka.Consumer, "getmany", faust_getmany):
        asyncio.run(FaustConsumer._drain_messages(consumer, fetcher))
    return delivered


def test_a_reread_while_the_fetch_loop_delivers_a_stale_record_is_delivered_whole() -> None:
    """The re-read's seek lands while Faust's fetch loop waits on the delivery of record 130 (a full
    stream buffer) of a fetch from before the seek: the rest of that fetch (131, 132) is left out,
    and the records read again from 25 are delivered, not dropped as already read (Faust records
    130 as read once the delivery returns, after the seek). Faust's real fetch loop runs here."""
    tp = TP("flows", 2)
    base: Any = object.__new__(_DrainHarness)
    state = _consumer({tp: 25}, {tp: list(range(26, 131))}, {tp: 25})
    for name, value in vars(state).items():
        setattr(base, name, value)
    base._read_offset = defaultdict(lambda: None, {tp: 129})
    base.first_record = {tp: 25}

    async def seek_wait(partitions: dict[TP, int]) -> None:
        base.sought.extend(partitions.items())
        await asyncio.sleep(0)

    async def first_offset_from(partition: TP, offset: int) -> int | None:
        return offset

    base.seek_wait = seek_wait
    base.first_offset_from = first_offset_from
    base.assignment = lambda: {tp}

    async def on_delivery(offset: int) -> None:
        if offset == 130:  # the timer runs meanwhile: the hole seen, then past its grace
            await base.reread_holes(0.0)
            await base.reread_holes(60.0)

    delivered = _drain(base, [[(tp, 130), (tp, 131), (tp, 132)], [(tp, 25), (tp, 26), (tp, 27)]], on_delivery)
    assert base.sought == [(tp, 25)]
    assert delivered == [130, 25, 26, 27]
    assert not base._gap[tp]
    base._acked[tp].append(25)
    base._acked_index[tp].add(25)
    assert base._new_offset(tp) == 131


def test_a_hole_of_a_partition_revoked_meanwhile_is_left_alone() -> None:
    tp = TP("flows", 2)
    state = _consumer({tp: 25}, {tp: [26]}, {tp: 25})
    state.first_record[tp] = 26

    async def rebalance_during_the_probe(partition: TP, offset: int) -> int | None:
        state.app.rebalancing = True
        return 26

    state.first_offset_from = rebalance_during_the_probe
    asyncio.run(state.reread_holes(0.0))
    assert not state._gap[tp]  # the probe's answer is not used once a rebalance began
    state.app.rebalancing = False
    state.assignment = lambda: set()
    assert asyncio.run(state.reread_holes(10.0)) == 0  # no longer held: no seek
    assert state.sought == []


def test_offsets_one_fetch_skips_between_its_records_are_gaps() -> None:
    tp = TP("flows", 0)
    state = _consumer({tp: 5}, {tp: [5, 6, 9]}, {tp: 5})
    assert _fetch(state, [(tp, 5), (tp, 6), (tp, 9)]) == [(tp, 5), (tp, 6), (tp, 9)]
    assert [(gap.begin, gap.end) for gap in state._gap[tp]] == [(7, 9)]  # a transaction marker, say
    assert state._new_offset(tp) == 10
    assert _fetch(state, [(tp, 12)]) == [(tp, 12)]  # 10, 11 unread across fetches: not a gap
    assert [(gap.begin, gap.end) for gap in state._gap[tp]] == []


def test_a_partition_stuck_at_a_hole_is_read_again_from_it_after_the_grace() -> None:
    stuck, flowing = TP("flows", 2), TP("flows", 3)
    state = _consumer({stuck: 25, flowing: 40}, {stuck: [26, 27], flowing: [40, 41]}, {})
    before = metrics.OFFSET_HOLE_REREADS._value.get()
    assert asyncio.run(state.reread_holes(100.0)) == 0  # asked: a record is there, maybe being written
    assert state.probed == [(stuck, 25)] and state.sought == []
    assert asyncio.run(state.reread_holes(100.0 + 10.0)) == 1
    assert state.probed == [(stuck, 25)] and state.sought == [(stuck, 25)]
    assert state._read_offset[stuck] == 25  # 25 is delivered again, not dropped as already read
    assert metrics.OFFSET_HOLE_REREADS._value.get() == before + 1


def test_a_hole_the_broker_shows_empty_becomes_a_gap_and_the_commit_moves_on() -> None:
    """A transaction marker at a fetch's edge (or at the committed offset): no record at 25."""
    tp = TP("flows", 2)
    state = _consumer({tp: 25}, {tp: list(range(26, 131))}, {tp: 25})
    state.first_record[tp] = 26
    assert asyncio.run(state.reread_holes(0.0)) == 0  # asked at once: no record at 25
    assert state.sought == []
    assert state._new_offset(tp) == 131


def test_a_probe_that_fails_reads_the_partition_again() -> None:
    tp = TP("flows", 2)
    state = _consumer({tp: 25}, {tp: [26]}, {tp: 25})
    state.first_record[tp] = OSError("broker unreachable")
    asyncio.run(state.reread_holes(0.0))
    assert asyncio.run(state.reread_holes(10.0)) == 1
    assert state.sought == [(tp, 25)]
