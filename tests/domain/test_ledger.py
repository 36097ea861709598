"""The stream's consent ledger (`domain.ledger`): apply, bound, snapshot, and the Faust table's values."""

from __future__ import annotations

import pytest

from flowaudit.domain.consent import (
    ConsentEvent,
    ConsentRecord,
    ConsentStatus,
    MemoryConsentLedger,
    consent_status,
)
from flowaudit.domain.ledger import StreamLedger, records_of, table_value


def _event(
    action: str, at_ms: int, consent_id: str = "c-1", user: str = "u-1", purpose: str = "marketing"
) -> ConsentEvent:
    return ConsentEvent(f"00000000-0000-4000-8000-{at_ms:012d}", at_ms, user, consent_id, purpose, action)


def test_grant_and_withdrawal_judged_as_of_the_flow() -> None:
    ledger = StreamLedger()
    ledger.apply(_event("granted", 1_000))
    ledger.apply(_event("withdrawn", 5_000))
    record = ledger.find("c-1", "u-1")
    assert record is not None and record.periods == ((1_000, 5_000),)
    assert consent_status(record, "u-1", "marketing", 999) is ConsentStatus.NOT_VALID  # before the grant
    assert consent_status(record, "u-1", "marketing", 1_000) is ConsentStatus.VALID
    assert consent_status(record, "u-1", "marketing", 4_999) is ConsentStatus.VALID
    assert consent_status(record, "u-1", "marketing", 5_000) is ConsentStatus.NOT_VALID  # at withdrawal
    assert consent_status(record, "u-2", "marketing", 2_000) is ConsentStatus.NOT_VALID  # another user
    assert consent_status(record, "u-1", "ecg_review", 2_000) is ConsentStatus.NOT_VALID  # another purpose
    assert consent_status(ledger.find("c-2", "u-1"), "u-1", "marketing", 2_000) is ConsentStatus.UNKNOWN


def test_applying_in_order_matches_the_evaluate_ledger_and_a_replay_changes_nothing() -> None:
    events = [
        _event("granted", 1_000),
        _event("granted", 1_500),  # already open: no second period
        _event("withdrawn", 3_000),
        _event("withdrawn", 3_500),  # already closed
        _event("granted", 6_000),
        _event("granted", 2_000, user="u-9"),  # another user cannot take the id over
        _event("withdrawn", 500, consent_id="c-3"),  # a withdrawal with no grant leaves no period
    ]
    stream, memory = StreamLedger(), MemoryConsentLedger()
    for offset, event in enumerate(events):
        stream.apply(event, offset)
        memory.apply(event)
    expected = ConsentRecord("c-1", "u-1", "marketing", ((1_000, 3_000), (6_000, None)))
    assert stream.find("c-1", None) == memory.find("c-1", None) == expected
    assert stream.find("c-3", None) == memory.find("c-3", None)
    # the same records read again (a batch re-delivered after a crash): nothing changes; without the
    # offsets, the withdrawal at 3,500 would close the grant of 6,000
    for offset, event in enumerate(events):
        stream.apply(event, offset)
    assert stream.find("c-1", None) == expected
    # and so after a snapshot was loaded (the table recovered with the offsets it holds)
    recovered = StreamLedger()
    recovered.load(stream.records_of_user("u-1"))
    recovered.apply(events[3], 3)
    assert recovered.find("c-1", None) == expected
    recovered.apply(_event("withdrawn", 7_000), len(events))
    assert recovered.find("c-1", None) == ConsentRecord(
        "c-1", "u-1", "marketing", ((1_000, 3_000), (6_000, 7_000))
    )


def test_periods_are_bounded_per_consent_and_counted() -> None:
    ledger = StreamLedger(max_periods=2)
    for start in range(0, 40_000, 10_000):
        ledger.apply(_event("granted", start + 1))
        ledger.apply(_event("withdrawn", start + 2))
    record = ledger.find("c-1", "u-1")
    assert record is not None and record.periods == ((20_001, 20_002), (30_001, 30_002))
    assert ledger.periods_dropped == 2
    # a flow older than the periods kept reads the consent as not in force then: fails closed
    assert consent_status(record, "u-1", "marketing", 1) is ConsentStatus.NOT_VALID
    with pytest.raises(ValueError, match="max_periods"):
        StreamLedger(max_periods=0)


def test_table_values_round_trip_and_a_snapshot_replaces_the_ledger() -> None:
    ledger = StreamLedger()
    ledger.apply(_event("granted", 1_000))
    ledger.apply(_event("withdrawn", 2_000))
    ledger.apply(_event("granted", 3_000, consent_id="c-2", purpose="ecg_review"))
    ledger.apply(_event("granted", 3_000, consent_id="c-7", user="u-2"))
    value = table_value(ledger.records_of_user("u-1"))
    assert value == {
        "c-1": ["marketing", [[1_000, 2_000]], None],
        "c-2": ["ecg_review", [[3_000, None]], None],
    }
    restored = StreamLedger()
    restored.apply(_event("granted", 9, consent_id="stale"))
    restored.load(records_of("u-1", value))
    assert len(restored) == 2 and restored.find("stale", None) is None
    assert restored.find("c-1", "u-1") == ledger.find("c-1", "u-1")
    restored.load(records_of("u-2", table_value(ledger.records_of_user("u-2"))), replace=False)
    assert sorted(record.consent_id for record in restored.records()) == ["c-1", "c-2", "c-7"]


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"c-1": "marketing"},
        {"c-1": ["marketing", [[1]], 0]},
        {"c-1": ["m", [["x", None]], 0]},
        {"c-1": ["m", []]},
    ],
)
def test_a_table_value_of_another_shape_is_an_error_naming_the_user(value: object) -> None:
    with pytest.raises(ValueError, match="'u-1'"):
        records_of("u-1", value)  # type: ignore[arg-type]
