"""A canonical JSON line sent the Kafka way: written as an Avro record, decoded, validated by the worker's
path (`AvroCodec.decode`, `event_from_avro` or, for a consent, `consent_from_avro`, then
`check_occurred_at`), for the parity test of the two paths.

The record is what a producer of the kind's current schema would write for the line, without our
validation in between (`flowaudit produce` validates first, so it would never send an invalid line).
A line Avro cannot carry as it stands (not an object, no kind, a value of the wrong type, a key the
kind defines but no schema has) is `Unrepresentable`, with the reason.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastavro.validation import validate

from flowaudit.domain.codec import AvroCodec, EncodeError
from flowaudit.domain.consent import ConsentEvent, consent_from_avro
from flowaudit.domain.events import Event, InvalidEvent, check_occurred_at, event_from_avro
from flowaudit.domain.kinds import INPUT_KIND_NAMES, INPUT_KINDS
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR

CODEC = AvroCodec(SCHEMA_DIR)
EXTENDED_VERSION = 99  # the version number of a writer schema made to carry undefined keys


@dataclass(frozen=True)
class Unrepresentable:
    why: str


def _millis(value: Any) -> int | None:
    """The ISO-8601 UTC timestamp as epoch milliseconds (timestamp-millis), None if it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _codec_carrying(kind: str, keys: frozenset[str], tmp_path: Path) -> AvroCodec:
    """The shipped schemas plus `<kind>.v99.avsc`: the reader schema with `keys` as string fields."""
    directory = tmp_path / f"{kind}+{'+'.join(sorted(keys))}"
    if not directory.exists():
        directory.mkdir()
        for path in SCHEMA_DIR.glob("*.avsc"):
            shutil.copy(path, directory / path.name)
        schema = json.loads(CODEC.reader(kind).path.read_text())
        schema["fields"] += [
            {"name": key, "type": "string", "doc": "not a field of the kind"} for key in keys
        ]
        (directory / f"{kind}.v{EXTENDED_VERSION}.avsc").write_text(json.dumps(schema))
    return AvroCodec(directory)


def _misfit(kind: str, record: dict[str, Any]) -> str:
    """Which field of the reader schema the record does not fit (for an EncodeError's reason)."""
    schema = CODEC.reader(kind)
    for field in schema.parsed["fields"]:
        name = field["name"]
        if name not in record and "default" not in field:
            return f"missing {name}: {schema.path.name} has no default for it"
        if not validate(record.get(name, field.get("default")), field["type"], raise_errors=False):
            return f"{name} {record[name]!r} is not of its type in {schema.path.name}"
    raise AssertionError(record)


def _record(line: str) -> tuple[str, dict[str, Any]] | Unrepresentable:
    try:
        raw = json.loads(line)
    except ValueError:
        return Unrepresentable("not JSON")
    if not isinstance(raw, dict):
        return Unrepresentable("not a JSON object: no record")
    kind = raw.get("event_type")
    if kind not in INPUT_KIND_NAMES:
        return Unrepresentable("event_type is not a kind: no topic, no schema")
    millis = _millis(raw.get("occurred_at"))
    if millis is None:
        return Unrepresentable("occurred_at is not an ISO-8601 UTC timestamp: no timestamp-millis")
    return kind, {k: v for k, v in raw.items() if k != "event_type"} | {"occurred_at": millis}


def avro_outcome(line: str, policy: Policy, tmp_path: Path, now_ms: int) -> object:
    """The Event (a ConsentEvent for a consent) the worker makes of the line, ("invalid", message), or
    Unrepresentable."""
    made = _record(line)
    if isinstance(made, Unrepresentable):
        return made
    kind, record = made
    reader_fields = {field["name"] for field in CODEC.reader(kind).parsed["fields"]}
    absent = frozenset(record) - reader_fields
    json_only = sorted(absent & INPUT_KINDS[kind].defined)
    if json_only:
        return Unrepresentable(f"{', '.join(json_only)}: a {kind} field that no {kind} schema has")
    codec, version = CODEC, None
    if absent:  # keys the kind does not define: carried by a writer schema that has them
        codec, version = _codec_carrying(kind, absent, tmp_path), EXTENDED_VERSION
        record |= {
            key: record[key] if isinstance(record[key], str) else json.dumps(record[key]) for key in absent
        }
    try:
        data = codec.encode(kind, record, version=version)
    except EncodeError:
        return Unrepresentable(_misfit(kind, record))
    try:
        _, decoded = codec.decode(data, kind)
        event: Event | ConsentEvent
        if INPUT_KINDS[kind].role == "consent":
            event = consent_from_avro(decoded, policy)
        else:
            event = event_from_avro(decoded, kind, policy)
        check_occurred_at(event.occurred_at_ms, now_ms)
    except InvalidEvent as exc:
        return ("invalid", str(exc))
    return event
