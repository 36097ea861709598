from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.consent import CONSENT_KIND, ConsentEvent, consent_from_mapping
from flowaudit.domain.events import (
    Event,
    InvalidEvent,
    check_occurred_at,
    event_from_mapping,
    format_millis,
)
from flowaudit.domain.kinds import DEFINED_FIELDS, KIND_NAMES, KINDS
from flowaudit.domain.policy import Policy
from tests.conftest import DATA_DIR, read_data
from tests.domain.avro_parity import Unrepresentable, avro_outcome


def _lines(name: str) -> list[str]:
    return (DATA_DIR / "events" / name).read_text().split("\n")[:-1]


def test_valid_examples_parse_and_round_trip(policy: Policy) -> None:

    for line in _lines("valid.jsonl") + _lines("valid_v2.jsonl"):
        raw = json.loads(line)
        event = event_from_mapping(raw, policy)
        again = event_from_mapping(event.to_json_dict(), policy)
        assert again == event


def test_invalid_examples_give_their_reason(policy: Policy) -> None:

    reasons = read_data("events/invalid_reasons.yaml")
    lines = _lines("invalid.jsonl")
    assert len(lines) == len(reasons)
    for number, line in enumerate(lines, start=1):
        with pytest.raises(InvalidEvent) as caught:
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InvalidEvent(f"not valid JSON: {exc}") from None
            event = event_from_mapping(record, policy)
            check_occurred_at(event.occurred_at_ms, int(time.time() * 1000))  # as `evaluate` does
        assert reasons[number] in str(caught.value), (number, str(caught.value))


def test_countries_are_upper_cased(policy: Policy) -> None:
    event = event_from_mapping(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "device_sync",
            "occurred_at": "2025-01-01T00:00:00Z",
            "user_id": "u",
            "user_country": "de",
            "fields": ["weight"],
            "destination_country": " fr ",
            "purpose": "hosting",
            "consent_id": None,
            "device_model": "m",
            "device_id": "d",
        },
        policy,
    )
    assert (event.user_country, event.destination_country) == ("DE", "FR")


def test_topic_kind_overrides_and_must_agree(policy: Policy) -> None:
    record = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime(2025, 1, 1, tzinfo=UTC),
        "user_id": None,
        "user_country": None,
        "fields": ["email"],
        "destination_country": "US",
        "purpose": "marketing",
        "consent_id": "c",
        "subcontractor": "Mailgun",
        "record_count": 1,
        "encrypted": True,
        "pseudonymized": False,
    }
    event = event_from_mapping(record, policy, event_type="subcontractor_transfer")
    assert event.occurred_at_ms == 1735689600000
    with pytest.raises(InvalidEvent, match="does not match"):
        event_from_mapping(record | {"event_type": "sharing"}, policy, event_type="subcontractor_transfer")


def test_timestamps_format_back_to_utc_iso() -> None:
    assert format_millis(1735689600123) == "2025-01-01T00:00:00.123Z"


def test_counterparty() -> None:
    base = dict(
        event_id="x",
        occurred_at_ms=0,
        user_id=None,
        user_country=None,
        fields=(),
        destination_country="FR",
        purpose="p",
        consent_id=None,
    )
    assert Event(event_type="sharing", recipient="Strava", **base).counterparty == "Strava"  # type: ignore[arg-type]
    assert Event(event_type="subcontractor_transfer", subcontractor="BSO", **base).counterparty == "BSO"  # type: ignore[arg-type]
    assert Event(event_type="device_sync", **base).counterparty is None  # type: ignore[arg-type]


def test_millisecond_timestamps_never_lose_a_millisecond(policy: Policy) -> None:
    base = {
        "event_id": str(uuid.uuid4()),
        "event_type": "device_sync",
        "user_id": "u",
        "user_country": "FR",
        "fields": ["weight"],
        "destination_country": "FR",
        "purpose": "hosting",
        "consent_id": None,
        "device_model": "m",
        "device_id": "d",
    }
    for millis in (0, 1, 1762330502120, 1762330502999, 4102444799999):
        text = format_millis(millis)
        assert event_from_mapping(base | {"occurred_at": text}, policy).occurred_at_ms == millis
        moment = datetime.fromtimestamp(millis // 1000, tz=UTC).replace(microsecond=(millis % 1000) * 1000)
        assert event_from_mapping(base | {"occurred_at": moment}, policy).occurred_at_ms == millis


def test_the_avro_fast_path_agrees_with_the_general_validator(policy: Policy) -> None:
    import copy

    from flowaudit.domain.codec import AvroCodec
    from flowaudit.domain.events import event_from_avro
    from flowaudit.generator import EventGenerator
    from flowaudit.produce import avro_record
    from flowaudit.schemas import SCHEMA_DIR

    codec = AvroCodec(SCHEMA_DIR)
    mutations = [
        {},
        {"event_id": "0B6F7D58-3A0E-4C55-9A55-0D8F3A1C2B01"},
        {"event_id": "0b6f7d583a0e4c559a550d8f3a1c2b01"},
        {"event_id": "nope"},
        {"destination_country": "fr "},
        {"destination_country": "XX"},
        {"user_country": "de"},
        {"user_country": "Germany"},
        {"fields": ["weight", ""]},
        {"purpose": " "},
        {"device_model": ""},
        {"recipient": ""},
        {"subcontractor": " "},
        {"record_count": 0},
        {"fields": []},
        {"purpose": " Health_Data_DISPLAY "},
        {"subjects": ["u-1", "u-2"]},
        {"subjects": []},
        {"subjects": ["u-1", "u-1"]},
        {"subjects": ["u-1", " "]},
        {"firmware_version": "3.1.4"},
        {"consent_id": ""},
    ]
    for raw in EventGenerator(policy, seed=13).events(300):
        kind = raw["event_type"]
        _, decoded = codec.decode(codec.encode(kind, avro_record(event_from_mapping(raw, policy))))
        for change in mutations:
            record = copy.deepcopy(decoded)
            record.update({k: v for k, v in change.items() if k in record})
            try:
                expected: object = event_from_mapping(record, policy, event_type=kind)
            except InvalidEvent as exc:
                expected = ("invalid", str(exc))
            try:
                got: object = event_from_avro(record, kind, policy)
            except InvalidEvent as exc:
                got = ("invalid", str(exc))
            assert got == expected, (change, got, expected)


# --- when an event may have happened (contract v2 §1) -------------------------------------------------

NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z


@pytest.mark.parametrize(
    "occurred_at",
    [NOW, NOW - 86_400_000 * 365 * 20, NOW + 5 * 60 * 1000, 946_684_800_000],
)
def test_plausible_times_pass(occurred_at: int) -> None:
    check_occurred_at(occurred_at, NOW)


@pytest.mark.parametrize(
    ("occurred_at", "message"),
    [
        (NOW + 5 * 60 * 1000 + 1, "more than 5 minutes after the moment it is decided"),
        (1_956_528_000_000, "2032-01-01T00:00:00.000Z is more than 5 minutes after"),
        (2**62, "4611686018427387904 ms after the epoch is more than 5 minutes after"),
        (946_684_799_999, "before 2000-01-01"),
        (0, "1970-01-01T00:00:00.000Z is before 2000-01-01"),
        (-5_000_000_000_000, "before 2000-01-01"),
    ],
)
def test_implausible_times_are_invalid_and_say_why(occurred_at: int, message: str) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(message)):
        check_occurred_at(occurred_at, NOW)


def test_a_recipient_type_of_the_wrong_type_is_invalid_not_a_crash(policy: Policy) -> None:
    sharing = next(line for line in _lines("valid.jsonl") if '"sharing"' in line)
    raw = dict(json.loads(sharing), recipient_type=["third_party_app"])  # a list: it used to raise TypeError
    with pytest.raises(InvalidEvent, match="recipient_type must be one of"):
        event_from_mapping(raw, policy)


# --- stricter input (contract v2 §1) ------------------------------------------------------------------


def _example(kind: str) -> dict[str, Any]:
    return next(json.loads(line) for line in _lines("valid.jsonl") if f'"{kind}"' in line)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_a_key_the_kind_does_not_define_is_invalid(kind: str, policy: Policy) -> None:
    with pytest.raises(InvalidEvent, match=f"^unknown field 'diagnosis': not defined for {kind}$"):
        event_from_mapping(_example(kind) | {"diagnosis": "afib"}, policy)
    with pytest.raises(InvalidEvent, match="unknown fields 'diagnosis', 'ecg_samples'"):
        event_from_mapping(_example(kind) | {"ecg_samples": [1], "diagnosis": "afib"}, policy)
    # the topic's kind decides: a field of another kind is unknown too
    other = next(name for name in KIND_NAMES if name != kind)
    foreign = next(f for f in KINDS[other].fields if f not in DEFINED_FIELDS[kind])
    with pytest.raises(InvalidEvent, match=f"unknown field '{foreign}'"):
        event_from_mapping(_example(kind) | {foreign: None}, policy, event_type=kind)
    # `event_type` is defined, on the JSON form and when the topic tells the kind
    assert event_from_mapping(_example(kind), policy, event_type=kind).event_type == kind


def test_purpose_is_folded(policy: Policy) -> None:
    event = event_from_mapping(_example("sharing") | {"purpose": "  Third_Party_SHARING "}, policy)
    assert event.purpose == "third_party_sharing"
    assert event_from_mapping(event.to_json_dict(), policy) == event


def test_pseudonymized_is_false_unless_said_for_transfers_and_sharings(policy: Policy) -> None:
    transfer = {k: v for k, v in _example("subcontractor_transfer").items() if k != "pseudonymized"}
    for raw in (transfer, transfer | {"pseudonymized": None}, _example("sharing")):
        event = event_from_mapping(raw, policy)
        assert event.pseudonymized is False
        assert event.to_json_dict()["pseudonymized"] is False  # the canonical form says it
    assert event_from_mapping(transfer | {"pseudonymized": True}, policy).pseudonymized is True
    # a device sync has no default: None when it does not say (no device_sync schema carries it)
    assert event_from_mapping(_example("device_sync"), policy).pseudonymized is None


def test_subjects_of_a_bulk_transfer(policy: Policy) -> None:
    raw = _example("subcontractor_transfer")
    event = event_from_mapping(raw | {"subjects": ["u-1", "u-2"]}, policy)
    assert event.subjects == ("u-1", "u-2")
    assert event.to_json_dict()["subjects"] == ["u-1", "u-2"]
    assert event_from_mapping(event.to_json_dict(), policy) == event
    assert event_from_mapping(raw, policy).subjects is None
    assert event_from_mapping(raw | {"subjects": None}, policy).subjects is None
    assert "subjects" not in event_from_mapping(raw, policy).to_json_dict()
    for bad in ("u-1", [], ["u-1", "u-1"], ["u-1", ""], [None], {"u-1": 1}):
        with pytest.raises(InvalidEvent, match=r"^subjects must"):
            event_from_mapping(raw | {"subjects": bad}, policy)


def test_an_empty_consent_id_is_kept_and_counts_as_none(policy: Policy) -> None:
    for consent_id, has in (("", False), ("  ", False), (None, False), ("c-1", True)):
        event = event_from_mapping(_example("sharing") | {"consent_id": consent_id}, policy)
        assert (event.consent_id, event.has_consent) == (consent_id, has)


# --- the two paths agree on every example file (contract v2 §1: the same input rules on both) ----------

PARITY_NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z: the moment both paths decide at


def _json_outcome(line: str, policy: Policy) -> object:
    """What `evaluate` makes of the line: the Event (a ConsentEvent for a consent line, as `evaluate`
    tells them apart), or ("invalid", message)."""
    try:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InvalidEvent(f"not valid JSON: {exc}") from None
        event: Event | ConsentEvent
        if isinstance(record, dict) and record.get("event_type") == CONSENT_KIND:
            event = consent_from_mapping(record, policy)
        else:
            event = event_from_mapping(record, policy)
        check_occurred_at(event.occurred_at_ms, PARITY_NOW)
    except InvalidEvent as exc:
        return ("invalid", str(exc))
    return event


def test_the_avro_path_and_the_json_path_agree_on_every_example(policy: Policy, tmp_path: Path) -> None:
    """Each line of tests/data/events/*.jsonl, sent as an Avro record to its kind's topic, gives the
    same Event (a ConsentEvent for a consent line) or the same error as `evaluate` gives it, unless
    Avro cannot carry it: those lines, and why, are listed in
    tests/data/events/avro_unrepresentable.yaml (checked here too).

    A key the kind does not define is carried the only way Avro can: by a writer schema that has it
    (the reader schema plus the keys, as a version the codec knows).
    """
    unrepresentable: dict[str, str] = {}
    compared = 0
    for path in sorted((DATA_DIR / "events").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.name}:{number}"
            expected = _json_outcome(line, policy)
            got = avro_outcome(line, policy, tmp_path, PARITY_NOW)
            if isinstance(got, Unrepresentable):
                unrepresentable[where] = got.why
                continue
            assert got == expected, where
            compared += 1
    assert unrepresentable == read_data("events/avro_unrepresentable.yaml")
    assert compared >= 40
