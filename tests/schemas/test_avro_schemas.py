"""Every schema parses with the `avro` package, reads the example events, rejects the invalid ones,
and the Avro form of an event decides exactly like its JSON form; the consent kind's schemas read the
example consents into the same ConsentEvent as their JSON form."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from flowaudit.domain.codec import AvroCodec, DecodeError, EncodeError, crc64_avro
from flowaudit.domain.consent import ConsentEvent, consent_from_avro, consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.kinds import INPUT_KINDS
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR
from tests.conftest import DATA_DIR, read_data

SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))  # every input kind's: the decision header's is in headers/


def _role(path: Path) -> str:
    return INPUT_KINDS[path.name.split(".")[0]].role


EVENT_SCHEMAS = [path for path in SCHEMA_FILES if _role(path) == "flow"]
CONSENT_SCHEMAS = [path for path in SCHEMA_FILES if _role(path) == "consent"]


def _examples() -> list[dict[str, Any]]:
    lines = (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _avro_record(event: dict[str, Any], policy: Policy) -> dict[str, Any]:
    parsed = event_from_mapping(event, policy)
    record = parsed.to_json_dict()
    del record["event_type"]
    record["occurred_at"] = parsed.occurred_at_ms
    return record


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_parses_and_documents_every_field(path: Path) -> None:
    raw = json.loads(path.read_text())
    schema = avro.schema.parse(path.read_text())
    assert schema.type == "record" and raw.get("doc")
    for field in raw["fields"]:
        assert field.get("doc"), f"{path.name}: field {field['name']} has no doc"
    logical = {f["name"]: f["type"].get("logicalType") for f in raw["fields"] if isinstance(f["type"], dict)}
    assert logical.get("event_id") == "uuid" and logical.get("occurred_at") == "timestamp-millis"


@pytest.mark.parametrize("path", EVENT_SCHEMAS, ids=lambda p: p.name)
def test_every_schema_version_reads_its_examples(path: Path, policy: Policy) -> None:
    codec = AvroCodec(SCHEMA_DIR)
    kind, version = path.name.split(".")[0], int(path.name.split(".")[1][1:])
    schema = avro.schema.parse(path.read_text())
    examples = [e for e in _examples() if e["event_type"] == kind]
    assert examples
    decider = Decider(policy)
    names = {field["name"] for field in json.loads(path.read_text())["fields"]}
    for example in examples:
        # what a producer of this version writes: its fields (the examples' later ones are the defaults)
        record = {k: v for k, v in _avro_record(example, policy).items() if k in names}
        # the reference implementation agrees the record is valid for this schema and can write it
        writer = avro.io.DatumWriter(schema)
        buffer = io.BytesIO()
        moment = datetime.fromtimestamp(record["occurred_at"] / 1000, tz=UTC)
        writer.write(record | {"occurred_at": moment}, avro.io.BinaryEncoder(buffer))
        # our codec writes single-object encoding; decoding resolves to the current reader schema
        data = codec.encode(kind, record, version=version)
        assert data[2:10] == codec.schema(kind, version).fingerprint
        decoded_kind, decoded = codec.decode(data, expected_kind=kind)
        assert decoded_kind == kind
        from_avro = decider.decide(event_from_mapping(decoded, policy, event_type=kind))
        from_json = decider.decide(event_from_mapping(example, policy))
        assert from_avro == from_json
        # the body is exactly the Avro binary encoding the reference implementation produces
        assert data[10:] == buffer.getvalue()


@pytest.mark.parametrize("path", EVENT_SCHEMAS, ids=lambda p: p.name)
def test_every_schema_version_rejects_invalid_records(path: Path, policy: Policy) -> None:
    kind, version = path.name.split(".")[0], int(path.name.split(".")[1][1:])
    schema = avro.schema.parse(path.read_text())
    example = next(e for e in _examples() if e["event_type"] == kind)
    base = _avro_record(example, policy)
    every = read_data("avro_invalid_records.yaml")[kind]
    cases = [case for case in every if version in case.get("versions", [version])]
    assert cases
    for case in cases:
        record = {k: v for k, v in base.items() if k not in case.get("drop", [])} | case.get("set", {})
        assert not avro.io.validate(schema, record), case["why"]
        with pytest.raises(EncodeError):
            AvroCodec(SCHEMA_DIR).encode(kind, record, version=version)


def _consent_examples(policy: Policy) -> list[tuple[dict[str, Any], ConsentEvent]]:
    """The valid lines of tests/data/events/consents.jsonl (the file holds invalid ones too)."""
    examples = []
    for line in (DATA_DIR / "events" / "consents.jsonl").read_text().splitlines():
        raw = json.loads(line)
        try:
            examples.append((raw, consent_from_mapping(raw, policy)))
        except ValueError:
            continue
    return examples


def _consent_record(consent: ConsentEvent) -> dict[str, Any]:
    """What a producer writes for a consent: its fields, occurred_at as timestamp-millis."""
    return {
        "event_id": consent.event_id,
        "occurred_at": consent.occurred_at_ms,
        "user_id": consent.user_id,
        "consent_id": consent.consent_id,
        "purpose": consent.purpose,
        "action": consent.action,
        "notice_version": consent.notice_version,
    }


def test_every_consent_schema_is_in_the_style_of_the_flow_kinds() -> None:
    flow = json.loads(EVENT_SCHEMAS[0].read_text())
    assert CONSENT_SCHEMAS
    for path in CONSENT_SCHEMAS:
        raw = json.loads(path.read_text())
        assert raw["namespace"] == flow["namespace"] and raw["name"] == "Consent"
        types = {field["name"]: field["type"] for field in raw["fields"]}
        assert types["user_id"] == "string"  # required: a consent always has its subject
        assert types["action"]["type"] == "enum" and types["action"]["symbols"] == ["granted", "withdrawn"]
        assert types["notice_version"] == ["null", "string"]
        assert next(f for f in raw["fields"] if f["name"] == "notice_version")["default"] is None


@pytest.mark.parametrize("path", CONSENT_SCHEMAS, ids=lambda p: p.name)
def test_every_consent_schema_version_reads_the_example_consents(path: Path, policy: Policy) -> None:
    codec = AvroCodec(SCHEMA_DIR)
    version = int(path.name.split(".")[1][1:])
    schema = avro.schema.parse(path.read_text())
    examples = _consent_examples(policy)
    assert len(examples) >= 4
    for _, consent in examples:
        record = _consent_record(consent)
        writer = avro.io.DatumWriter(schema)
        buffer = io.BytesIO()
        moment = datetime.fromtimestamp(record["occurred_at"] / 1000, tz=UTC)
        writer.write(record | {"occurred_at": moment}, avro.io.BinaryEncoder(buffer))
        data = codec.encode("consent", record, version=version)
        assert data[10:] == buffer.getvalue()  # the reference implementation's binary encoding
        kind, decoded = codec.decode(data, expected_kind="consent")
        assert kind == "consent" and consent_from_avro(decoded, policy) == consent


@pytest.mark.parametrize("path", CONSENT_SCHEMAS, ids=lambda p: p.name)
def test_every_consent_schema_version_rejects_invalid_records(path: Path, policy: Policy) -> None:
    version = int(path.name.split(".")[1][1:])
    schema = avro.schema.parse(path.read_text())
    base = _consent_record(_consent_examples(policy)[0][1])
    cases = [
        c
        for c in read_data("avro_invalid_records.yaml")["consent"]
        if version in c.get("versions", [version])
    ]
    assert cases
    for case in cases:
        record = {k: v for k, v in base.items() if k not in case.get("drop", [])} | case.get("set", {})
        assert not avro.io.validate(schema, record), case["why"]
        with pytest.raises(EncodeError):
            AvroCodec(SCHEMA_DIR).encode("consent", record, version=version)


def test_fingerprint_is_crc64_avro_of_the_canonical_form() -> None:
    codec = AvroCodec(SCHEMA_DIR)
    for path in SCHEMA_FILES:
        canonical = to_parsing_canonical_form(json.loads(path.read_text()))
        kind, version = path.name.split(".")[0], int(path.name.split(".")[1][1:])
        wire = codec.schema(kind, version).fingerprint
        assert wire.hex() == fingerprint(canonical, "CRC-64-AVRO")  # fastavro's hex is little-endian
        assert int.from_bytes(wire, "little") == crc64_avro(canonical.encode())
    # the test vector from the Avro specification's reference implementation
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F


def test_schema_evolution_v1_and_v2_of_device_sync(policy: Policy) -> None:
    codec = AvroCodec(SCHEMA_DIR)
    example = next(e for e in _examples() if e["event_type"] == "device_sync")
    record = _avro_record(example, policy)
    old = codec.encode("device_sync", record, version=1)
    new = codec.encode("device_sync", record | {"firmware_version": "2.4.1"}, version=2)
    assert old[2:10] != new[2:10]
    assert codec.reader("device_sync").version == 2
    _, from_old = codec.decode(old)
    _, from_new = codec.decode(new)
    assert from_old["firmware_version"] is None and from_new["firmware_version"] == "2.4.1"
    # firmware_version is a device_sync field (since contract v2 every top-level key must be one)
    assert event_from_mapping(from_new, policy, "device_sync") == dataclasses.replace(
        event_from_mapping(from_old, policy, "device_sync"), firmware_version="2.4.1"
    )


def test_schema_evolution_v1_and_v2_of_subcontractor_transfer(policy: Policy) -> None:
    """v2 (contract v2) adds `subjects` and gives `pseudonymized` a default; v1 records still decode."""
    codec = AvroCodec(SCHEMA_DIR)
    assert codec.reader("subcontractor_transfer").version == 2
    example = next(e for e in _examples() if e["event_type"] == "subcontractor_transfer")
    record = _avro_record(example, policy)
    old = codec.encode("subcontractor_transfer", record, version=1)
    subjects = ["u-7f3a", "u-22cd"]
    new = codec.encode("subcontractor_transfer", record | {"subjects": subjects}, version=2)
    unsaid = {k: v for k, v in record.items() if k != "pseudonymized"}
    default = codec.encode("subcontractor_transfer", unsaid, version=2)
    assert old[2:10] != new[2:10] == default[2:10]
    _, from_old = codec.decode(old, "subcontractor_transfer")
    _, from_new = codec.decode(new, "subcontractor_transfer")
    _, from_default = codec.decode(default, "subcontractor_transfer")
    assert from_old["subjects"] is None and from_new["subjects"] == subjects
    assert from_default["pseudonymized"] is False
    v1 = event_from_mapping(from_old, policy, "subcontractor_transfer")
    assert v1 == event_from_mapping(example, policy)
    v2 = event_from_mapping(from_new, policy, "subcontractor_transfer")
    assert v2 == dataclasses.replace(v1, subjects=tuple(subjects))


def test_schema_evolution_v1_and_v2_of_sharing(policy: Policy) -> None:
    """v2 (contract v2) adds `pseudonymized`, default false; v1 records read as not pseudonymized."""
    codec = AvroCodec(SCHEMA_DIR)
    assert codec.reader("sharing").version == 2
    example = next(e for e in _examples() if e["event_type"] == "sharing")
    record = _avro_record(example, policy)
    _, from_old = codec.decode(codec.encode("sharing", record, version=1), "sharing")
    _, from_new = codec.decode(codec.encode("sharing", record | {"pseudonymized": True}, version=2))
    assert from_old["pseudonymized"] is False and from_new["pseudonymized"] is True
    assert event_from_mapping(from_old, policy, "sharing") == event_from_mapping(example, policy)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_magic"),
        (b'{"event_id": 1}', "bad_magic"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown_schema"),
    ],
)
def test_decode_errors_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        AvroCodec(SCHEMA_DIR).decode(data)
    assert caught.value.reason == reason


def test_corrupt_body_and_wrong_kind(policy: Policy) -> None:
    codec = AvroCodec(SCHEMA_DIR)
    example = next(e for e in _examples() if e["event_type"] == "sharing")
    data = codec.encode("sharing", _avro_record(example, policy))
    with pytest.raises(DecodeError) as caught:
        codec.decode(data[:20])
    assert caught.value.reason == "corrupt_body"
    with pytest.raises(DecodeError) as caught:
        codec.decode(data + b"\x00")
    assert caught.value.reason == "corrupt_body"
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, expected_kind="device_sync")
    assert caught.value.reason == "wrong_kind"
