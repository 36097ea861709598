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

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

import aiokafka
import aiokafka.errors
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP

from flowaudit.common import metrics
from flowaudit.streams.offsets import Hole, committable_run, holes_to_look_at, skipped_within

log = logging.getLogger(__name__)


class WholeSeekConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose `perform_seek` also rewinds the partitions with no commit, and
    whose commits never pass an offset read but not acknowledged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per input partition held: the offset its next commit starts at (its seek's, then each commit's)
        self._commit_from: dict[TP, int] = {}
        self._holes: dict[TP, Hole] = {}
        # per partition, bumped by every seek: records a fetch returned before it are not delivered
        self._seeks: dict[TP, int] = {}
        self._delivered_seeks: dict[TP, int] = {}  # the seek count of the last record delivered
        self._seek_version = 0  # bumped by any seek at all: getmany's one comparison per record

    async def perform_seek(self) -> None:
        # what the fetch loop still holds of the input partitions is from before the seek (the
        # changelogs' standby fetches go on: recovery seeks them itself)
        self._bump_seeks(tp for tp in self.assignment() if not self._is_changelog_tp(tp))
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
            if (offset is None or offset <= 0) and not self._is_changelog_tp(tp)
        ]
        earliest: dict[TP, int] = {}
        if unstarted:
            # seek_wait also sets (or forgets) the read offsets of what it seeks
            found = await self.earliest_offsets(*unstarted)
            earliest = {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}
            await self.seek_wait(earliest)
            log.debug("partitions with nothing committed read from their first offset: %s", earliest)
        inputs = [TP(tp.topic, tp.partition) for tp in committed if not self._is_changelog_tp(tp)]
        self._bump_seeks(inputs)
        for tp in inputs:
            offset = committed.get(tp)
            start = offset if offset is not None and offset > 0 else earliest.get(tp, 0)
            self._commit_from[tp] = start
            self._read_offset[tp] = start if start > 0 else None  # records from `start` are delivered

    def _bump_seeks(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._seeks[tp] = self._seeks.get(tp, 0) + 1
        self._seek_version += 1

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's fetch, less the records of a partition sought since the fetch returned (they are
        fetched again from the seek's offset: delivered, they would make Faust drop those as
        already read); offsets a fetch skipped between two of its records of a partition hold no
        record (a transaction marker, a compacted record) and are recorded as gaps."""
        seeks: dict[TP, int] | None = None
        version = -1
        last: dict[TP, int] = {}
        async for tp, message in super().getmany(timeout):
            if seeks is None:  # the fetch is done: a seek from now on makes the rest of it stale
                seeks = dict(self._seeks)
                version = self._seek_version
            # per record, the common case costs one comparison: no seek since the fetch
            if version != self._seek_version and self._seeks.get(tp, 0) != seeks.get(tp, 0):
                continue
            offset = message.offset
            previous = last.get(tp)
            if previous is None:  # the fetch's first record of the partition
                seek = seeks.get(tp, 0)
                if self._delivered_seeks.get(tp, 0) != seek:
                    # the first record since a seek: Faust's fetch loop may have recorded, after the
                    # seek, the offset of a stale record it was delivering; that must not drop this one
                    self._delivered_seeks[tp] = seek
                    self._read_offset[tp] = None
            elif (skipped := skipped_within(previous, offset)) is not None:
                self._record_gap(tp, *skipped)
            last[tp] = offset
            yield tp, message

    def _record_gap(self, tp: TP, begin: int, end: int) -> None:
        """Offsets [begin, end) of `tp` hold no record: the commit may pass them."""
        self._gap[tp].addi(begin, end)
        self._gap[tp].merge_overlaps()

    def _gaps_of(self, tp: TP) -> list[tuple[int, int]]:
        gaps = self._gap.get(tp)
        return [(gap.begin, gap.end) for gap in gaps] if gaps else []

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's own gap inference, left out: it compares a record with the last one its fetch loop
        read, across fetches and seeks, so records a seek made stale, or a record it dropped, turn
        real offsets into "gaps" the commit would pass. Gaps come from `getmany` instead."""

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for `tp` (None: nothing yet), by `streams.offsets.committable_run`
        from where the last commit (or the seek) left it; what it covers is forgotten. A partition
        with no start recorded (not sought yet) commits nothing."""
        start = self._commit_from.get(tp)
        if start is None:
            return None
        acked = self._acked[tp]
        end = committable_run(start, acked, self._gaps_of(tp))
        if end is None:
            return None
        covered = [offset for offset in acked if offset < end]
        acked[:] = [offset for offset in acked if offset >= end]
        self._acked_index[tp].difference_update(covered)
        if tp in self._gap:
            self._gap[tp].chop(0, end)
        self._commit_from[tp] = end
        return end

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Forget the revoked partitions' commit starts and holes (Faust forgets their acks)."""
        for tp in revoked:
            self._commit_from.pop(tp, None)
            self._holes.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def _holes_now(self) -> dict[TP, tuple[int, int]]:
        """Partition → (next commit offset, lowest acknowledged offset above it), where the commit
        cannot move although later offsets are acknowledged."""
        current: dict[TP, tuple[int, int]] = {}
        for tp, start in self._commit_from.items():
            above = [offset for offset in self._acked.get(tp, ()) if offset > start]
            if above and committable_run(start, self._acked[tp], self._gaps_of(tp)) is None:
                current[tp] = (start, min(above))
        return current

    async def reread_holes(self, now: float) -> int:
        """Look at every partition whose next commit offset is unacknowledged while later offsets
        are acknowledged (`streams.offsets.holes_to_look_at`). A new one: the broker is asked
        whether a record is there; none (a transaction marker at a fetch's edge), the offsets up to
        the next record are a gap and the commit moves on. One past its grace: the partition is
        read again from it (the sink skips what it holds). Returns how many were read again."""
        current = self._holes_now()
        new, due = holes_to_look_at(self._holes, current, now)
        for tp, start in new:
            await self._probe_hole(tp, start)
        reread = 0
        for tp, start, rereads in due:
            if self.app.rebalancing or tp not in self.assignment():
                continue  # the rebalance's seek reads it again from its committed offset
            log.warning(
                "%s[%d]: offset %d was read but never acknowledged while later offsets (from %d) were: "
                "reading the partition again from %d (re-read %d); the sink skips what it holds",
                tp.topic,
                tp.partition,
                start,
                current[tp][1],
                start,
                rereads + 1,
            )
            metrics.OFFSET_HOLE_REREADS.inc()
            self._bump_seeks([tp])
            try:
                await self.seek_wait({tp: start})  # on the consumer's thread
            except Exception as exc:  # revoked meanwhile, or the broker slow: the next look tries again
                log.warning("%s[%d]: could not seek to %d: %s", tp.topic, tp.partition, start, exc)
                continue
            finally:
                self._bump_seeks([tp])
            self._read_offset[tp] = start if start > 0 else None
            reread += 1
        return reread

    async def _probe_hole(self, tp: TP, start: int) -> None:
        """Ask the broker for the first record of `tp` from `start`; none at `start` makes the
        offsets before that record a gap."""
        try:
            first = await self.first_offset_from(tp, start)
        except Exception as exc:  # it is read again after the grace, which does no harm
            log.warning(
                "%s[%d]: could not read offset %d to check it: %s", tp.topic, tp.partition, start, exc
            )
            return
        if first is not None and first > start and not self.app.rebalancing and tp in self._commit_from:
            log.info(
                "%s[%d]: offsets %d to %d hold no record; the commit passes them",
                tp.topic,
                tp.partition,
                start,
                first - 1,
            )
            self._record_gap(tp, start, first)

    async def first_offset_from(self, tp: TP, offset: int) -> int | None:
        """The offset of the first record of `tp` at or after `offset`, read by a consumer of its own
        (no group, the worker's isolation level and credentials); None when there is none yet."""
        conf = self.app.conf
        transport: Any = self.transport
        return await first_record_offset(
            bootstrap=server_list(transport.url, transport.default_port),
            tp=tp,
            offset=offset,
            isolation_level="read_committed" if self.in_transaction else "read_uncommitted",
            timeout_seconds=conf.broker_request_timeout,
            client_id=f"{conf.broker_client_id}-offset-check",
            auth=dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)),
        )


async def first_record_offset(
    bootstrap: Any,
    tp: TP,
    offset: int,
    isolation_level: str = "read_uncommitted",
    timeout_seconds: float = 30.0,
    client_id: str = "flowaudit-offset-check",
    auth: dict[str, Any] | None = None,
) -> int | None:
    """The offset of the first record of `tp` at or after `offset` as a consumer at
    `isolation_level` reads it; None when the partition has none there yet."""
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        # never a reset: past the log's start it would answer from the log's end, making a gap of
        # records that are there
        auto_offset_reset="none",
        isolation_level=isolation_level,
        request_timeout_ms=int(timeout_seconds * 1000),
        **(auth or {}),
    )
    await consumer.start()
    try:
        partition = aiokafka.TopicPartition(tp.topic, tp.partition)
        consumer.assign([partition])
        consumer.seek(partition, offset)
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while True:
            try:
                batch = await consumer.getmany(partition, timeout_ms=1000, max_records=1)
            except aiokafka.errors.OffsetOutOfRangeError:
                log_start = (await consumer.beginning_offsets([partition]))[partition]
                if offset < log_start:  # deleted (retention) before anyone read it here
                    log.warning(
                        "%s[%d]: offsets %d to %d were deleted before they were audited",
                        tp.topic,
                        tp.partition,
                        offset,
                        log_start - 1,
                    )
                    return int(log_start)
                return None  # beyond the log's end: nothing there yet
            records = batch.get(partition)
            if records:
                return int(records[0].offset)
            position = await consumer.position(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            if position >= end:  # read to the end: the offsets from `offset` hold no record
                return None if position <= offset else int(position)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no answer from {tp.topic}[{tp.partition}] at offset {offset}")
    finally:
        await consumer.stop()


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with `WholeSeekConsumer` (see `streams.app.FlowauditApp`)."""

    Consumer: ClassVar[type[Any]] = WholeSeekConsumer
