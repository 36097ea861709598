"""Commit: which offset of a partition may be committed, and when a hole below it needs a re-read.

Pure bookkeeping, no I/O; `streams.consumer` applies it to Faust's consumer state.

Contract: a partition's commit moves from `start` (the offset its last commit, or its seek, said
is next) only across offsets that are acknowledged, i.e. whose audit rows (or dead letters) are
durable, or that are known to hold no record (`gaps`: offsets one fetch skipped between two of its
records, or that the broker showed empty: a transaction marker, a compacted record). Never across
an offset that was read but not acknowledged.

Why not Faust's own rule (`Consumer._new_offset`): it commits the first run of consecutive acked
offsets wherever that run starts. With no committed offset yet, or a committed offset of 0, it
checks nothing; otherwise it lets the run start one offset above the committed one
(faust-streaming issue #606). So an event Faust failed to deliver, or one left unacknowledged to be
read again after a rebalance, was passed over by the next commit while later events were acked:
seen on the real broker, an event committed that was never audited (a worker killed while events
flowed, 2 runs in 9 on a loaded machine). Faust's gap inference is no better: it compares a record
with the last one read across fetches and seeks, so a stale record or a dropped one makes a gap of
real offsets.

A hole (`start` not acknowledged while later offsets are) is asked about at once: when the broker
shows no record at `start` (a transaction marker at a fetch's edge), the offsets up to the next
record are a gap. Otherwise it is normal for as long as a batch takes to be written; once it has
lasted `grace` seconds the partition is read again from `start`, and again with a doubling wait
while the hole lasts. The sink skips what it already holds, so a re-read audits nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

P = TypeVar("P")  # a partition, as the caller names it

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


def skipped_within(previous: int | None, offset: int) -> tuple[int, int] | None:
    """The offsets one fetch skipped between two of its records of a partition, `previous` and
    `offset`: [previous + 1, offset), which hold no record (a fetch reads the log in order; a
    transaction marker or a compacted record leaves such a gap). None when nothing was skipped or
    `offset` is the fetch's first record of the partition: across fetches, or after a seek, an
    offset not read is not known to hold no record."""
    if previous is None or offset <= previous + 1:
        return None
    return (previous + 1, offset)


@dataclass
class Hole:
    """A partition whose next commit offset is not acknowledged while later offsets are."""

    start: int
    reread_at: float  # when the next re-read is due
    rereads: int = 0


def holes_to_look_at(
    holes: dict[P, Hole],
    current: dict[P, tuple[int, int]],
    now: float,
    grace: float = HOLE_GRACE_SECONDS,
    max_wait: float = HOLE_MAX_WAIT_SECONDS,
) -> tuple[list[tuple[P, int]], list[tuple[P, int, int]]]:
    """Update `holes` with the partitions that have one now (`current`: partition → (start, lowest
    acknowledged offset above it)); return (the new holes, to ask the broker about at once: no
    record there is a gap; the holes due a re-read now, with the re-reads so far: the first after
    `grace`, then after a doubling wait up to `max_wait`). A hole that closed, or whose start
    moved, is forgotten or begun again."""
    for partition in [p for p in holes if p not in current or holes[p].start != current[p][0]]:
        del holes[partition]
    new: list[tuple[P, int]] = []
    due: list[tuple[P, int, int]] = []
    for partition, (start, _lowest_acked) in current.items():
        hole = holes.get(partition)
        if hole is None:
            holes[partition] = Hole(start, now + grace)
            new.append((partition, start))
        elif now >= hole.reread_at:
            due.append((partition, start, hole.rereads))
            hole.rereads += 1
            hole.reread_at = now + min(grace * 2**hole.rereads, max_wait)
    return new, due
