"""Commit: which offset of a partition may be committed, and when a hole below it needs a re-read.

Pure bookkeeping, no I/O; `streams.consumer` applies it to Faust's consumer state.

Contract: a partition's commit moves from `start` (the offset its last commit, or its seek, said
is next) only across offsets that are acknowledged, i.e. whose audit rows (or dead letters) are
durable, or that hold no record (`gaps`: offsets the fetch loop saw skipped, as a transaction
marker or a compacted record leaves). Never across an offset that was read but not acknowledged.

Why not Faust's own rule (`Consumer._new_offset`): it commits the first run of consecutive acked
offsets wherever that run starts. With no committed offset yet, or a committed offset of 0, it
checks nothing; otherwise it lets the run start one offset above the committed one
(faust-streaming issue #606). So an event Faust failed to deliver, or one left unacknowledged to be
read again after a rebalance, was passed over by the next commit while later events were acked:
seen on the real broker, an event committed that was never audited (a worker killed while events
flowed, one run in six on a loaded machine).

A hole (`start` not acknowledged while later offsets are) is normal for as long as a batch takes to
be written; once it has lasted `grace` seconds the partition is read again from `start`, and again
with a doubling wait while it lasts. The sink skips what it already holds, so a re-read audits
nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The first re-read of a hole waits this long after the hole is seen (a batch is written and acked
# well within it: batch_max_seconds plus an insert); later ones double the wait, up to the cap.
HOLE_GRACE_SECONDS = 10.0
HOLE_MAX_WAIT_SECONDS = 300.0


def committable_run(start: int, acked: Iterable[int], gaps: Iterable[tuple[int, int]]) -> int | None:
    """The offset to commit: the end of the run of consecutive offsets from `start` that are each
    acknowledged or inside a gap (`gaps`: half-open [begin, end) ranges); None when `start` itself
    is neither (nothing may be committed yet)."""
    covered = {offset for offset in acked if offset >= start}
    for begin, end in gaps:
        covered.update(range(max(begin, start), end))
    if start not in covered:
        return None
    offset = start
    while offset in covered:
        offset += 1
    return offset


def missing_between(read: int | None, fetched: int, committed: int | None) -> tuple[int, int] | None:
    """The offsets the fetch loop skipped when it reads `fetched` after `read` (the last offset it
    read): [read + 1, fetched), never below the committed offset (already passed) and never
    `fetched` itself (it is being delivered, not skipped). None when nothing was skipped."""
    if read is None:
        return None
    begin = max(read + 1, committed if committed is not None else 0)
    return (begin, fetched) if begin < fetched else None


@dataclass
class Hole:
    """A partition whose next commit offset is not acknowledged while later offsets are."""

    start: int
    seen_at: float
    reread_at: float  # when the next re-read is due
    rereads: int = 0


def holes_to_reread(
    holes: dict[object, Hole],
    current: dict[object, tuple[int, int]],
    now: float,
    grace: float = HOLE_GRACE_SECONDS,
    max_wait: float = HOLE_MAX_WAIT_SECONDS,
) -> list[tuple[object, int, int]]:
    """Update `holes` with the partitions that have one now (`current`: partition → (start, lowest
    acknowledged offset above it)) and return the (partition, start, rereads so far) to read again
    from `start` now. A hole that closed, or whose start moved, is forgotten or begun again."""
    for partition in [p for p in holes if p not in current or holes[p].start != current[p][0]]:
        del holes[partition]
    due: list[tuple[object, int, int]] = []
    for partition, (start, _lowest_acked) in current.items():
        hole = holes.get(partition)
        if hole is None:
            holes[partition] = Hole(start, now, now + grace)
            continue
        if now >= hole.reread_at:
            due.append((partition, start, hole.rereads))
            hole.rereads += 1
            hole.reread_at = now + min(grace * 2**hole.rereads, max_wait)
    return due
