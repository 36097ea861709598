"""streams.consumer and streams.app._ack: what a rebalance must not lose.

The seek after a rebalance rewinds the partitions that have nothing committed; an event fetched before
a rebalance is never acknowledged.

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
        self.sought: dict[TP, int] = {}

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
