"""Dead letters: their headers, and the invalid-ratio guard that limits how many there may be."""

from __future__ import annotations

import pytest

from flowaudit.streams.deadletter import (
    MAX_ERROR_BYTES,
    InvalidRatioExceeded,
    InvalidRatioGuard,
    dead_letter_headers,
)
from flowaudit.streams.messages import InboundMessage


def test_dead_letter_headers_name_the_reason_and_the_origin() -> None:
    message = InboundMessage("in.sharing", 3, 42, b"key", b"junk", None)
    headers = dict(dead_letter_headers(message, "sharing", "sha256:abc", "bad_magic", "x" * 5000))
    assert headers == {
        "flowaudit-error-reason": b"bad_magic",
        "flowaudit-error": b"x" * MAX_ERROR_BYTES,
        "flowaudit-source-topic": b"in.sharing",
        "flowaudit-source-partition": b"3",
        "flowaudit-source-offset": b"42",
        "flowaudit-event-kind": b"sharing",
        "flowaudit-policy-version": b"sha256:abc",
    }


def test_guard_window_forgets_old_batches() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=10)
    guard.observe("k", 10, 4)
    guard.observe("k", 10, 4)
    assert guard.observe("k", 10, 0) < 0.5
    with pytest.raises(InvalidRatioExceeded):
        guard.observe("k", 10, 10)


def test_guard_trips_before_a_full_window_once_the_invalid_alone_exceed_the_limit() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=100)
    assert guard.observe("k", 5, 5) == 1.0  # 5 invalid: a full window could still end below the limit
    assert guard.observe("k", 45, 45) == 1.0  # 50 invalid: exactly the limit's share, not more
    with pytest.raises(InvalidRatioExceeded, match="51 of the last 51"):
        guard.observe("k", 1, 1)


def test_guard_below_the_window_tolerates_invalid_records_within_the_limit() -> None:
    guard = InvalidRatioGuard(limit=0.5, window=100)
    for _ in range(9):
        guard.observe("k", 10, 5)  # 45 invalid of 90
    assert guard.observe("k", 10, 5) == 0.5  # a full window at exactly the limit
