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
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


class WholeSeekConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose `perform_seek` also rewinds the partitions with no commit."""

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
        if unstarted:
            # seek_wait also sets (or forgets) the read offsets of what it seeks
            earliest = dict(await self.earliest_offsets(*unstarted))
            await self.seek_wait(earliest)
            log.debug("partitions with nothing committed read from their first offset: %s", earliest)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with `WholeSeekConsumer` (see `streams.app.FlowauditApp`)."""

    Consumer: ClassVar[type[Any]] = WholeSeekConsumer
