"""The consent ledger (contract v2 §6) and the checks that read it: consent-not-valid, consent-unverified."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.consent import (
    ConsentEvent,
    ConsentStatus,
    MemoryConsentLedger,
    consent_from_mapping,
    consent_status,
)
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import check_occurred_at, event_from_mapping
from flowaudit.domain.fields import InvalidEvent
from flowaudit.domain.policy import Policy
from tests.conftest import DATA_DIR, read_data
from tests.domain.avro_parity import Unrepresentable, avro_outcome
from tests.domain.test_decision import build
from tests.domain.test_events import PARITY_NOW

GRANT = {
    "event_id": "0b8e3f5c-2d6a-4c1e-9f7b-3a5d2c1e0f9a",
    "event_type": "consent",
    "occurred_at": "2025-03-01T09:00:00Z",
    "user_id": "u-2",
    "consent_id": "c-1",
    "purpose": "third_party_sharing",
    "action": "granted",
}
WITHDRAWAL = GRANT | {
    "event_id": "1c9f4a6d-3e7b-4d2f-8a0c-4b6e3d2f1a0b",
    "occurred_at": "2025-06-01T00:00:00Z",
    "action": "withdrawn",
}


def _ledger(policy: Policy, *records: dict[str, Any]) -> MemoryConsentLedger:
    ledger = MemoryConsentLedger()
    for record in records:
        ledger.apply(consent_from_mapping(record, policy))
    return ledger


def _sharing(policy: Policy, **overrides: Any) -> Any:
    return event_from_mapping(build("sharing", {"destination_country": "DE"} | overrides), policy)


@pytest.mark.parametrize(
    ("overrides", "rules", "flags"),
    [
        ({"occurred_at": "2025-04-01T00:00:00Z"}, [], []),  # granted, in force
        ({"occurred_at": "2025-03-01T09:00:00Z"}, [], []),  # at the very moment of the grant
        ({"occurred_at": "2025-03-01T08:59:59.999Z"}, ["consent-not-valid"], []),  # before the grant
        ({"occurred_at": "2025-06-01T00:00:00Z"}, ["consent-not-valid"], []),  # at the withdrawal
        ({"occurred_at": "2025-07-01T00:00:00Z"}, ["consent-not-valid"], []),  # after it
        (
            {"occurred_at": "2025-04-01T00:00:00Z", "user_id": "u-3"},
            ["consent-not-valid"],
            [],
        ),  # another user's
        (
            {"occurred_at": "2025-04-01T00:00:00Z", "purpose": "research_program", "pseudonymized": True},
            ["consent-not-valid"],
            [],
        ),  # given for another purpose
        ({"occurred_at": "2025-04-01T00:00:00Z", "consent_id": "c-unknown"}, [], ["consent-unverified"]),
        ({"occurred_at": "2025-04-01T00:00:00Z", "consent_id": ""}, ["consent-missing"], []),  # empty = none
    ],
)
def test_a_flow_is_judged_with_the_ledger_as_of_its_occurred_at(
    policy: Policy, overrides: dict[str, Any], rules: list[str], flags: list[str]
) -> None:
    decider = Decider(policy, _ledger(policy, GRANT, WITHDRAWAL))
    decision = decider.decide(_sharing(policy, **overrides))
    assert list(decision.rules) == rules
    assert list(decision.flags) == flags


def test_without_a_ledger_every_cited_consent_is_unverified_never_blocked(policy: Policy) -> None:
    decision = Decider(policy).decide(_sharing(policy))
    assert decision.rules == () and decision.flags == ("consent-unverified",)


def test_a_rejected_consent_gives_no_derogation(policy: Policy) -> None:
    decider = Decider(policy, _ledger(policy, GRANT, WITHDRAWAL))
    valid = decider.decide(_sharing(policy, destination_country="US", occurred_at="2025-04-01T00:00:00Z"))
    assert valid.transfer_mechanism == "consent_derogation" and valid.rules == ()
    withdrawn = decider.decide(_sharing(policy, destination_country="US", occurred_at="2025-07-01T00:00:00Z"))
    assert withdrawn.transfer_mechanism == "none"
    assert withdrawn.rules == ("consent-not-valid", "transfer-without-safeguard")


def test_regrant_after_withdrawal_opens_a_new_period(policy: Policy) -> None:
    regrant = GRANT | {
        "event_id": "2d0a5b7e-4f8c-4e3a-9b1d-5c7f4e3a2b1c",
        "occurred_at": "2025-09-01T00:00:00Z",
    }
    ledger = _ledger(policy, GRANT, WITHDRAWAL, regrant)
    record = ledger.find("c-1", "u-2")
    assert record is not None
    assert len(record.periods) == 2
    at = {"2025-07-01": ConsentStatus.NOT_VALID, "2025-10-01": ConsentStatus.VALID}
    for day, status in at.items():
        moment = consent_from_mapping(GRANT | {"occurred_at": f"{day}T00:00:00Z"}, policy).occurred_at_ms
        assert consent_status(record, "u-2", "third_party_sharing", moment) is status


def test_another_user_cannot_take_over_a_consent_id(policy: Policy) -> None:
    intruder = GRANT | {"event_id": "3e1b6c8f-5a9d-4f4b-8c2e-6d8a5f4b3c2d", "user_id": "u-9"}
    record = _ledger(policy, GRANT, intruder).find("c-1", None)
    assert record is not None and record.user_id == "u-2"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"diagnosis": "x"}, "unknown field 'diagnosis'"),
        ({"purpose": "astrology"}, "purpose 'astrology' is not in the processing register"),
        ({"action": "revoked"}, "action must be one of granted, withdrawn"),
        ({"user_id": None}, "missing field 'user_id'"),
        ({"consent_id": " "}, "consent_id must be a non-empty string"),
        ({"event_id": "nope"}, "event_id is not a UUID"),
        ({"notice_version": 3}, "notice_version must be a string or null"),
        ({"occurred_at": "yesterday"}, "occurred_at is not an ISO-8601 timestamp"),
    ],
)
def test_invalid_consent_events_name_the_field(
    policy: Policy, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        consent_from_mapping(GRANT | overrides, policy)


def test_consent_purpose_is_matched_case_insensitively(policy: Policy) -> None:
    assert (
        consent_from_mapping(GRANT | {"purpose": " Third_Party_Sharing "}, policy).purpose
        == "third_party_sharing"
    )


# --- the example consents of tests/data/events/consents.jsonl, on both paths -------------------------------


def test_the_example_consents_are_valid_or_give_their_reason(policy: Policy) -> None:
    """The JSON path as `evaluate` runs it: validated, then `occurred_at` judged against the clock."""
    reasons = read_data("events/consent_reasons.yaml")
    lines = (DATA_DIR / "events" / "consents.jsonl").read_text().splitlines()
    assert len(lines) == len(reasons)
    valid = 0
    for number, line in enumerate(lines, start=1):
        try:
            consent = consent_from_mapping(json.loads(line), policy)
            check_occurred_at(consent.occurred_at_ms, int(time.time() * 1000))
        except InvalidEvent as exc:
            assert reasons[number] is not None and reasons[number] in str(exc), (number, str(exc))
            continue
        assert reasons[number] is None, (number, consent)
        assert consent.purpose in policy.purposes and consent.event_id == consent.event_id.lower()
        valid += 1
    assert valid >= 4


def test_the_example_consents_give_the_same_outcome_as_avro_records(policy: Policy, tmp_path: Path) -> None:
    """Sent to the consent topic as Avro records, the example consents give the same ConsentEvent or
    the same error (the whole parity test, over every example file, is in test_events.py); lines Avro
    cannot carry are in avro_unrepresentable.yaml."""
    unrepresentable = read_data("events/avro_unrepresentable.yaml")
    lines = (DATA_DIR / "events" / "consents.jsonl").read_text().splitlines()
    compared: list[object] = []
    for number, line in enumerate(lines, start=1):
        got = avro_outcome(line, policy, tmp_path, PARITY_NOW)
        if isinstance(got, Unrepresentable):
            assert unrepresentable[f"consents.jsonl:{number}"] == got.why
            continue
        expected: object
        try:
            consent = consent_from_mapping(json.loads(line), policy)
            check_occurred_at(consent.occurred_at_ms, PARITY_NOW)
            expected = consent
        except InvalidEvent as exc:
            expected = ("invalid", str(exc))
        assert got == expected, number
        compared.append(got)
    assert sum(isinstance(outcome, ConsentEvent) for outcome in compared) >= 4
    assert sum(isinstance(outcome, tuple) for outcome in compared) >= 8
