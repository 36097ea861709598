"""The worker's Kafka consumer: Faust's aiokafka consumer, with its seek after a rebalance made whole.

Why: at a rebalance Faust drops the records it had fetched but not yet handed to an agent (it clears
the stream buffers) and counts on `perform_seek` (every partition to its committed offset) to read
them again, forgetting the offset it last read of each partition so that nothing re-read is taken
for a duplicate. Two gaps: Faust forgets those offsets before it stops the flow, and its fetch loop
still records the offset of a record whose delivery the stop cut short; and aiokafka's
`seek_to_committed` moves only the partitions whose committed offset is above 0. A partition with
nothing committed yet (a new consumer group or topic, a quiet partition) then stays where the fetch
loop had got to, or is re-read below a remembered offset, and Faust drops those records as already
read: they were never audited.

Here a partition without a committed offset is sought to its first available offset (what
`auto_offset_reset=earliest` says for it) and its read offset is forgotten, so every record from
there is handed over again. What had already been written is skipped by the sink (the chain head
and the event ids it knows), so nothing is audited twice; gate topics may see a record again, as
at-least-once delivery allows. The changelog partitions of tables are left to Faust's recovery,
which seeks them itself. The other half of the same guarantee is in `streams.app._ack`: an event
fetched before a rebalance is never acknowledged.

And the commit never passes an offset that was read but not acknowledged (`streams.offsets`): Faust's
own rule passes one in some states (faust-streaming issue #606), and with it an event Faust failed
to deliver was committed unaudited. A partition whose next commit offset stays unacknowledged while
later ones are acknowledged is read again from that offset (`reread_holes`, from a timer of the app).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from flowaudit.common import metrics
from flowaudit.streams.offsets import Hole, committable_run, holes_to_reread, missing_between

log = logging.getLogger(__name__)


class WholeSeekConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose `perform_seek` also rewinds the partitions with no commit, and
    whose commits never pass an offset read but not acknowledged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per input partition held: the offset its next commit starts at (its seek's, then each commit's)
        self._commit_from: dict[TP, int] = {}
        self._holes: dict[object, Hole] = {}

    async def perform_seek(self) -> None:
        committed: dict[Any, int | None] = dict(await self.seek_to_committed())
        # what Faust's own perform_seek records (aiokafka's and Faust's partitions are equal tuples)
        self._read_offset.update(
            {tp: offset if offset is not None and offset >= 0 else None for tp, offset in committed.items()}
        )
        self._committed_offset.update(
            {
                TP(tp.topic, tp.partition): offset or None
                for tp, offset in committed.items()
                if offset is not None
            }
        )
        unstarted = [
            TP(tp.topic, tp.partition)
            for tp, offset in committed.items()
            if not offset and not self._is_changelog_tp(tp)
        ]
        earliest: dict[TP, int] = {}
        if unstarted:
            # seek_wait also sets (or forgets) the read offsets of what it seeks
            found = await self.earliest_offsets(*unstarted)
            earliest = {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}
            await self.seek_wait(earliest)
            log.debug("partitions with nothing committed read from their first offset: %s", earliest)
        for tp, offset in committed.items():
            partition = TP(tp.topic, tp.partition)
            if not self._is_changelog_tp(partition):
                self._start_at(partition, offset if offset else earliest.get(partition, 0))

    def _start_at(self, tp: TP, offset: int) -> None:
        """The next commit of `tp` starts at `offset`, where its reading starts. The read offset is
        set one below it, so that a first record above it shows `offset` as skipped (a transaction
        marker at the committed offset) rather than as a hole."""
        self._commit_from[tp] = offset
        self._read_offset[tp] = offset - 1 if offset > 0 else None

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for `tp` (None: nothing yet), by `streams.offsets.committable_run`
        from where the last commit (or the seek) left it; what it covers is forgotten."""
        start = self._commit_from.get(tp)
        if start is None:  # not an input partition sought by perform_seek: Faust's own rule
            result: int | None = super()._new_offset(tp)
            return result
        acked = self._acked[tp]
        gaps = self._gap.get(tp)
        end = committable_run(start, acked, [(gap.begin, gap.end) for gap in gaps] if gaps else [])
        if end is None:
            return None
        covered = [offset for offset in acked if offset < end]
        acked[:] = [offset for offset in acked if offset >= end]
        self._acked_index[tp].difference_update(covered)
        if gaps:
            gaps.chop(0, end)
        self._commit_from[tp] = end
        return end

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's fetch loop read `offset_to` after `offset_from - 1`: the offsets between hold no
        record. Faust's own version counts `offset_to` (being delivered, not yet acknowledged) in the
        gap and leaves out the committed offset; this one counts exactly the offsets skipped."""
        committed = self._commit_from.get(tp, self._committed_offset.get(tp))
        skipped = missing_between(offset_from - 1, offset_to, committed)
        if skipped is not None:
            self._gap[tp].addi(*skipped)
            self._gap[tp].merge_overlaps()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._commit_from.pop(tp, None)
            self._holes.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def reread_holes(self, now: float) -> int:
        """Read again, from its next commit offset, every partition where that offset has stayed
        unacknowledged past the grace while later offsets are acknowledged (`streams.offsets`).
        Returns how many partitions were sought."""
        current: dict[object, tuple[int, int]] = {}
        for tp, start in self._commit_from.items():
            above = [offset for offset in self._acked.get(tp, ()) if offset > start]
            if above:
                gaps = self._gap.get(tp)
                intervals = [(gap.begin, gap.end) for gap in gaps] if gaps else []
                if committable_run(start, self._acked[tp], intervals) is None:
                    current[tp] = (start, min(above))
        due = holes_to_reread(self._holes, current, now)
        for partition, start, rereads in due:
            tp = cast(TP, partition)
            log.warning(
                "%s[%d]: offset %d was read but never acknowledged while later offsets (from %d) were: "
                "reading the partition again from %d (re-read %d); the sink skips what it holds",
                tp.topic,
                tp.partition,
                start,
                current[partition][1],
                start,
                rereads + 1,
            )
            metrics.OFFSET_HOLE_REREADS.inc()
            await self._seek(tp, start)
            self._read_offset[tp] = start - 1 if start > 0 else None
        return len(due)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with `WholeSeekConsumer` (see `streams.app.FlowauditApp`)."""

    Consumer: ClassVar[type[Any]] = WholeSeekConsumer
