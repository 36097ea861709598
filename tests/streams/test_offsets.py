"""streams.offsets: the commit never passes an offset read but not acknowledged; holes are re-read
after the grace, with a doubling wait."""

from __future__ import annotations

import itertools

import pytest

from flowaudit.streams.offsets import (
    HOLE_GRACE_SECONDS,
    HOLE_MAX_WAIT_SECONDS,
    Hole,
    committable_run,
    holes_to_look_at,
    skipped_within,
)


def _by_definition(start: int, acked: set[int], gaps: list[tuple[int, int]]) -> int | None:
    """The rule as stated, offset by offset: the commit is the first offset from `start` that is
    neither acked nor in a gap, if that is not `start` itself."""
    for end in range(start, 100):
        if end not in acked and not any(begin <= end < stop for begin, stop in gaps):
            return end if end > start else None
    raise AssertionError("unreachable in these cases")


@pytest.mark.parametrize("start", range(4))
def test_every_set_of_acknowledged_offsets_commits_only_its_run_from_start(start: int) -> None:
    offsets = range(10)
    for size in range(len(offsets) + 1):
        for acked in itertools.combinations(offsets, size):
            for gaps in ([], [(5, 7)], [(start, start + 1)], [(max(0, start - 2), start + 1)]):
                expected = _by_definition(start, {o for o in acked if o >= start}, gaps)
                assert committable_run(start, acked, gaps) == expected, (start, acked, gaps)


def test_the_hole_of_faust_issue_606_is_not_passed() -> None:
    """The failure on the real broker: committed 25, offset 25 never delivered, 26..130 acked. Faust's
    own rule committed 131; this one waits at 25."""
    assert committable_run(25, range(26, 131), []) is None
    assert committable_run(25, [25, *range(26, 131)], []) == 131


def test_with_nothing_committed_a_run_must_still_start_at_the_first_offset() -> None:
    """Faust's rule checks nothing when no offset (or 0) is committed: 18..111 acked committed 112
    over 0..17 still in flight."""
    assert committable_run(0, range(18, 112), []) is None


def test_offsets_below_start_are_already_committed_and_ignored() -> None:
    assert committable_run(10, [3, 4, 10, 11], []) == 12


def test_a_gap_carries_the_commit_over_offsets_with_no_record() -> None:
    assert committable_run(7, [9, 10], [(7, 9)]) == 11  # a transaction marker at 7 and 8


@pytest.mark.parametrize(
    ("previous", "offset", "skipped"),
    [
        (None, 5, None),  # the fetch's first record of the partition: nothing known skipped
        (4, 5, None),  # the next offset
        (4, 7, (5, 7)),  # 5 and 6 skipped, 7 itself is a record
        (4, 4, None),
    ],
)
def test_skipped_within(previous: int | None, offset: int, skipped: tuple[int, int] | None) -> None:
    assert skipped_within(previous, offset) == skipped


def test_a_new_hole_is_asked_about_at_once_and_reread_after_the_grace_then_a_doubling_wait() -> None:
    holes: dict[str, Hole] = {}
    current = {"p0": (25, 26)}
    assert holes_to_look_at(holes, current, now=0.0) == ([("p0", 25)], [])  # the broker is asked
    # within the grace a batch may still be writing it
    assert holes_to_look_at(holes, current, now=HOLE_GRACE_SECONDS - 0.1) == ([], [])
    assert holes_to_look_at(holes, current, now=HOLE_GRACE_SECONDS) == ([], [("p0", 25, 0)])
    waits = []
    now = HOLE_GRACE_SECONDS
    for _ in range(8):
        due_at = holes["p0"].reread_at
        assert holes_to_look_at(holes, current, now=due_at - 0.01) == ([], [])
        assert holes_to_look_at(holes, current, now=due_at)[1][0][0] == "p0"
        waits.append(due_at - now)
        now = due_at
    assert waits[:3] == [2 * HOLE_GRACE_SECONDS, 4 * HOLE_GRACE_SECONDS, 8 * HOLE_GRACE_SECONDS]
    assert max(waits) == HOLE_MAX_WAIT_SECONDS


def test_a_closed_hole_is_forgotten_and_a_moved_one_begins_again() -> None:
    holes: dict[str, Hole] = {}
    holes_to_look_at(holes, {"p0": (25, 26), "p1": (3, 9)}, now=0.0)
    new, due = holes_to_look_at(holes, {"p1": (4, 9)}, now=1.0)  # p0 closed; p1's commit moved on
    assert (new, due) == ([("p1", 4)], [])
    assert set(holes) == {"p1"}
    assert holes["p1"] == Hole(4, 1.0 + HOLE_GRACE_SECONDS)
