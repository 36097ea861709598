"""The codec reads the writer schemas of the input kinds of the table (the flow kinds and `consent`), and
nothing else; a writer schema with a key its kind does not define makes invalid events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.codec import AvroCodec, DecodeError
from flowaudit.domain.consent import consent_from_avro, consent_from_mapping
from flowaudit.domain.events import InvalidEvent, event_from_mapping
from flowaudit.domain.kinds import INPUT_KIND_NAMES, INPUT_KINDS, KIND_NAMES
from flowaudit.domain.policy import Policy
from flowaudit.produce import avro_record
from flowaudit.schemas import HEADER_SCHEMA_DIR, SCHEMA_DIR
from tests.conftest import DATA_DIR


def _copy_kind_schemas(target: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, target / path.name)


def test_the_codec_knows_exactly_the_kinds() -> None:
    codec = AvroCodec(SCHEMA_DIR)
    assert codec.kinds == tuple(sorted(INPUT_KIND_NAMES))
    assert {codec.reader(name).path.name.split(".")[0] for name in INPUT_KIND_NAMES} == {
        kind.avro_schema for kind in INPUT_KINDS.values()
    }


def test_a_schema_file_of_no_kind_is_not_a_writer_schema(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    shutil.copy(HEADER_SCHEMA_DIR / "decision.v1.avsc", tmp_path / "decision.v1.avsc")
    codec = AvroCodec(tmp_path)
    assert codec.kinds == tuple(sorted(INPUT_KIND_NAMES))
    with pytest.raises(KeyError):
        codec.schema("decision", 1)


def test_a_kind_without_a_schema_file_fails_at_construction(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    for path in tmp_path.glob("sharing.*.avsc"):
        path.unlink()
    with pytest.raises(ValueError, match=r"no schema sharing\.vN\.avsc for sharing"):
        AvroCodec(tmp_path)


def test_the_consent_kind_without_a_schema_file_fails_at_construction(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    (tmp_path / "consent.v1.avsc").unlink()
    with pytest.raises(ValueError, match=r"no schema consent\.vN\.avsc for consent"):
        AvroCodec(tmp_path)


def test_a_misnamed_version_fails_at_construction(tmp_path: Path) -> None:
    _copy_kind_schemas(tmp_path)
    shutil.copy(SCHEMA_DIR / "sharing.v1.avsc", tmp_path / "sharing.latest.avsc")
    with pytest.raises(ValueError, match=r"schema files are named KIND\.vN\.avsc"):
        AvroCodec(tmp_path)


# --- keys a kind does not define (contract v2 §1), on the Avro path: per writer schema ----------------


def _with_extra_version(target: Path, kind: str, version: int, *extra: str) -> None:
    """The shipped schemas, plus `<kind>.v<version>.avsc`: the reader schema with `extra` string fields."""
    _copy_kind_schemas(target)
    schema = json.loads(AvroCodec(SCHEMA_DIR).reader(kind).path.read_text())
    schema["fields"] += [{"name": name, "type": "string", "doc": "not a field of the kind"} for name in extra]
    (target / f"{kind}.v{version}.avsc").write_text(json.dumps(schema))


def _record(kind: str, policy: Policy) -> dict[str, Any]:
    line = next(
        line for line in (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines() if kind in line
    )
    return avro_record(event_from_mapping(json.loads(line), policy))


def test_a_writer_schema_with_a_key_the_kind_does_not_define_gives_invalid_events(
    tmp_path: Path, policy: Policy
) -> None:
    _with_extra_version(tmp_path, "subcontractor_transfer", 3, "diagnosis", "ecg_samples")
    codec = AvroCodec(tmp_path)
    # the reader stays the highest version whose fields the kind all defines
    assert codec.reader("subcontractor_transfer").version == 2
    assert codec.schema("subcontractor_transfer", 3).undefined is not None
    assert all(codec.schema(kind, None).undefined is None for kind in KIND_NAMES)
    record = _record("subcontractor_transfer", policy) | {"diagnosis": "afib", "ecg_samples": "[1, 2]"}
    data = codec.encode("subcontractor_transfer", record, version=3)
    message = "unknown fields 'diagnosis', 'ecg_samples': not defined for subcontractor_transfer"
    with pytest.raises(InvalidEvent, match=f"^{message}$"):
        codec.decode(data, "subcontractor_transfer")
    with pytest.raises(InvalidEvent, match=f"^{message}$"):  # the same message as the JSON path's
        event_from_mapping(record | {"occurred_at": "2025-11-05T10:00:00Z"}, policy, "subcontractor_transfer")
    # the same record's bytes, to a codec that does not know that writer schema: undecodable
    with pytest.raises(DecodeError) as caught:
        AvroCodec(SCHEMA_DIR).decode(data, "subcontractor_transfer")
    assert caught.value.reason == "unknown_schema"


def test_a_kind_whose_every_schema_has_an_undefined_key_fails_at_construction(tmp_path: Path) -> None:
    _with_extra_version(tmp_path, "sharing", 7, "diagnosis")
    for path in tmp_path.glob("sharing.v[12].avsc"):
        path.unlink()
    with pytest.raises(ValueError, match="no schema of sharing has only fields that sharing defines"):
        AvroCodec(tmp_path)


def test_a_dead_letter_for_an_undefined_key_is_an_invalid_event(tmp_path: Path, policy: Policy) -> None:
    from flowaudit.streams.deadletter import InvalidRatioGuard
    from flowaudit.streams.decide import BatchDecider
    from flowaudit.streams.messages import InboundMessage

    _with_extra_version(tmp_path, "device_sync", 5, "ecg_samples")
    codec = AvroCodec(tmp_path)
    record = _record("device_sync", policy)
    values = [
        codec.encode("device_sync", record | {"ecg_samples": "[512]"}, 5),
        codec.encode("device_sync", record),
    ]
    batch = [InboundMessage("in", 0, offset, None, value, None) for offset, value in enumerate(values)]
    decided = BatchDecider("device_sync", policy, codec, InvalidRatioGuard(0.9, 1000)).decide(batch)
    assert decided.reasons == {"invalid_event": 1} and len(decided.records) == 1
    [(index, headers)] = decided.routes.dead
    assert index == 0
    assert dict(headers)["flowaudit-error"] == b"unknown field 'ecg_samples': not defined for device_sync"


# --- the consent kind: the same codec, the same resolution, the same undefined-key check ------------------

GRANT = {
    "event_id": "5b0c7d0e-8f3a-4c1e-9a2b-1d4e6f8a9b0c",
    "occurred_at": 1_762_336_800_000,  # 2025-11-05T10:00:00Z
    "user_id": "u-2",
    "consent_id": "c-1",
    "purpose": "third_party_sharing",
    "action": "granted",
    "notice_version": "privacy-policy/20251105",
}


def test_a_consent_record_round_trips_and_validates_like_its_json_form(policy: Policy) -> None:
    codec = AvroCodec(SCHEMA_DIR)
    data = codec.encode("consent", GRANT)
    assert data[2:10] == codec.reader("consent").fingerprint
    kind, decoded = codec.decode(data, expected_kind="consent")
    assert kind == "consent" and decoded == GRANT
    as_json = GRANT | {"event_type": "consent", "occurred_at": "2025-11-05T10:00:00Z"}
    assert consent_from_avro(decoded, policy) == consent_from_mapping(as_json, policy)
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, expected_kind="sharing")
    assert caught.value.reason == "wrong_kind"
    withdrawal = {k: v for k, v in GRANT.items() if k != "notice_version"} | {"action": "withdrawn"}
    _, decoded = codec.decode(codec.encode("consent", withdrawal), "consent")
    assert decoded["notice_version"] is None and decoded["action"] == "withdrawn"


def test_a_consent_writer_schema_with_an_undefined_key_gives_invalid_events(tmp_path: Path) -> None:
    _with_extra_version(tmp_path, "consent", 4, "diagnosis")
    codec = AvroCodec(tmp_path)
    assert codec.reader("consent").version == 1
    data = codec.encode("consent", GRANT | {"diagnosis": "afib"}, version=4)
    message = "unknown field 'diagnosis': not defined for consent"
    with pytest.raises(InvalidEvent, match=f"^{message}$"):
        codec.decode(data, "consent")
