"""Which records of a batch the store already holds: known by event id, never by offset alone.

The event id is the idempotency key (contract §1): a record whose event id has an audit row is not
written again, whatever its offset. That covers the replay after a crash between insert and offset
commit, a consumer group reset to an earlier offset, and the same event sent twice (two offsets).
An offset alone proves nothing: when a topic is recreated, or a development broker starts again,
offsets start again at 0 and a record at an old offset is a new event.

Asking the store about every event id of every batch would cost a lookup per row. So a record is
only asked about when it may be known:
- its offset is at or below the highest offset its chain has written (re-read or reused offset);
- its event id hashes into the window of ids this store wrote lately (`RecentEventIds`);
- it repeats an event id of the same batch or of the batch prepared just before it.
In steady state none of these hold and nothing is asked. The bound: the same event id arriving at
a new, higher offset is recognised while the window still holds the first copy: at least the last
250,000 rows this store wrote (two generations of up to 250,000), which `AuditStore.connect` fills
from the newest rows of the store, so a restart does not empty it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from flowaudit.sinks.audit import AuditRecord, ChainHead

# Event ids asked about per query: an `IN` list this long stays well under a server's URI and
# query-size limits (ClickHouse's http_max_uri_size is 1 MiB, max_query_size 256 KiB by default).
LOOKUP_CHUNK = 2_000


class RecentEventIds:
    """Hashes of the event ids written lately: the last `generation` to `2 * generation` of them.

    Only a pre-filter: a hit is confirmed in the store before a record is skipped, so a hash
    collision costs one lookup, never an audit row. Hashes keep it small (~60 bytes per id).
    """

    def __init__(self, generation: int = 250_000) -> None:
        self.generation = generation
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def may_hold_any(self, event_ids: Sequence[str]) -> bool:
        hashes = list(map(hash, event_ids))
        return not (self._current.isdisjoint(hashes) and self._previous.isdisjoint(hashes))

    def may_hold(self, event_id: str) -> bool:
        key = hash(event_id)
        return key in self._current or key in self._previous

    def add(self, event_ids: Iterable[str]) -> None:
        self._current.update(map(hash, event_ids))
        if len(self._current) >= self.generation:
            self._previous, self._current = self._current, set()


StoredIds = Callable[[list[str]], set[str]]  # event ids -> those the store holds


def split_known(
    records: Sequence[AuditRecord],
    head: ChainHead,
    recent: RecentEventIds,
    pending_ids: set[str],
    stored_ids: StoredIds,
) -> tuple[list[AuditRecord], list[AuditRecord]]:
    """(records to write, records already held) of one chain's records, both in offset order.

    `pending_ids` are the event ids of a batch prepared but not yet inserted ahead of this one.
    Of records that repeat an event id within `records`, the first (lowest offset) is kept.
    """
    ordered = sorted(records, key=_offset)
    ids = [record.event.event_id for record in ordered]
    if (
        ordered[0].offset > head.last_offset
        and len(set(ids)) == len(ids)
        and not recent.may_hold_any(ids)
        and pending_ids.isdisjoint(ids)
    ):
        return ordered, []  # the steady state: nothing here can be known yet
    asked = [
        event_id
        for record, event_id in zip(ordered, ids, strict=True)
        if record.offset <= head.last_offset or recent.may_hold(event_id)
    ]
    held = stored_ids(asked) if asked else set()
    fresh: list[AuditRecord] = []
    known: list[AuditRecord] = []
    seen: set[str] = set()
    for record, event_id in zip(ordered, ids, strict=True):
        if event_id in held or event_id in pending_ids or event_id in seen:
            known.append(record)
        else:
            seen.add(event_id)
            fresh.append(record)
    return fresh, known


def _offset(record: AuditRecord) -> int:
    return record.offset
