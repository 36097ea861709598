"""Avro single-object encoding with writer-schema resolution by fingerprint.

Wire format (Avro specification, "Single-object encoding"): the two bytes C3 01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro
binary body. The known writer schemas are, for each input kind of `kinds.INPUT_KINDS` (the flow
kinds and `consent`), the files `<InputKind.avro_schema>.vN.avsc` in the schema directory; other files
there are not writer schemas (the decision header's schema lives in `headers/`). The reader schema of
a kind is its highest version whose fields the kind all defines (`InputKind.defined`), so records
written with an older or newer known version are resolved to the current reader (schema evolution).
fastavro does the hot-path reading and writing.

Keys a kind does not define (contract v2 §1: invalid) can reach the worker only through a writer
schema that has them: a record carries no field names, and a writer schema that is not in the schema
directory is `unknown_schema`. So the check is per writer schema, made once when the codec loads:
a known writer schema with a field its kind does not define turns each of its records into
`InvalidEvent` with the JSON path's message (a dead letter `invalid_event`), before the body is read.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from flowaudit.domain.fields import InvalidEvent
from flowaudit.domain.kinds import INPUT_KINDS, undefined_fields_error

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
_VERSION = re.compile(r"^v(?P<version>\d+)$")

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The CRC-64-AVRO fingerprint (Rabin) of `data`, as the Avro specification defines it."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


class EncodeError(ValueError):
    """A record that does not fit the writer schema."""


class DecodeError(ValueError):
    """Bytes that cannot be read as a known Avro single-object record; the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason  # closed set, usable as a metric label
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class WriterSchema:
    kind: str
    version: int
    fingerprint: bytes  # 8 bytes, little-endian, as on the wire
    parsed: Any  # with logical types: encoding accepts datetimes and UUIDs
    plain: Any  # logical types removed: decoding yields ints and strings, as the validator wants
    path: Path
    undefined: str | None  # the InvalidEvent message when the kind does not define all of its fields


def _without_logical_types(schema: Any) -> Any:
    """The same schema minus `logicalType` annotations (Parsing Canonical Form ignores them too).

    Decoding with it skips fastavro's conversion to datetime and UUID objects, which the validator
    would turn straight back into epoch milliseconds and a string.
    """
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _load(path: Path, kind: str, version: int, defined: frozenset[str]) -> WriterSchema:
    try:
        raw = json.loads(path.read_text())
        parsed = fastavro.parse_schema(raw)
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ValueError(f"{path}: invalid Avro schema: {exc}") from exc
    canonical = to_parsing_canonical_form(raw)
    fingerprint = crc64_avro(canonical.encode()).to_bytes(8, "little")
    plain = fastavro.parse_schema(_without_logical_types(raw))
    unknown = {field["name"] for field in raw["fields"]} - defined
    undefined = str(undefined_fields_error(kind, unknown)) if unknown else None
    return WriterSchema(kind, version, fingerprint, parsed, plain, path, undefined)


class AvroCodec:
    """Encodes and decodes the input kinds' schemas found in one directory. Thread-safe after construction.

    Raises ValueError when a kind has no schema file there (or none whose fields it all defines: no
    reader), a file `<schema>.v*.avsc` is misnamed or not a valid schema, or two files have the same
    canonical form.
    """

    def __init__(self, schema_dir: str | Path) -> None:
        self.schema_dir = Path(schema_dir)
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        self._versions: dict[str, dict[int, WriterSchema]] = {}
        for kind in INPUT_KINDS.values():
            paths = sorted(self.schema_dir.glob(f"{kind.avro_schema}.*.avsc"))
            if not paths:
                raise ValueError(f"{self.schema_dir}: no schema {kind.avro_schema}.vN.avsc for {kind.name}")
            for path in paths:
                match = _VERSION.match(path.name[len(kind.avro_schema) + 1 : -len(".avsc")])
                if not match:
                    raise ValueError(f"{path}: schema files are named KIND.vN.avsc")
                schema = _load(path, kind.name, int(match["version"]), kind.defined)
                if schema.fingerprint in self._by_fingerprint:
                    other = self._by_fingerprint[schema.fingerprint].path.name
                    raise ValueError(f"{path}: same canonical form as {other}")
                self._by_fingerprint[schema.fingerprint] = schema
                self._versions.setdefault(kind.name, {})[schema.version] = schema
        self._readers = {kind: _reader(found, self.schema_dir) for kind, found in self._versions.items()}

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every input kind with a schema here (the flow kinds and `consent`), sorted by name."""
        return tuple(sorted(self._readers))

    def reader(self, kind: str) -> WriterSchema:
        return self._readers[kind]

    def schema(self, kind: str, version: int | None = None) -> WriterSchema:
        if version is None:
            return self._readers[kind]
        try:
            return self._versions[kind][version]
        except KeyError:
            raise KeyError(f"no schema {kind}.v{version}.avsc in {self.schema_dir}") from None

    def encode(self, kind: str, record: dict[str, Any], version: int | None = None) -> bytes:
        """Validate `record` against the schema and return its single-object encoding.

        Raises EncodeError when the record does not fit the schema (fastavro's writer alone would
        write some wrong types silently, e.g. a string where an array is expected).
        """
        schema = self.schema(kind, version)
        try:
            validate(record, schema.parsed, raise_errors=True)
        except ValidationError as exc:
            raise EncodeError(f"record does not fit {schema.path.name}: {exc}") from None
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(schema.fingerprint)
        fastavro.schemaless_writer(buffer, schema.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes, expected_kind: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return (kind, record) read with the kind's reader schema.

        Raises DecodeError when the bytes cannot be read as a record of a known writer schema (of
        `expected_kind`, if given), InvalidEvent when the writer schema has a field that its kind does
        not define (checked before the body is read; the message is the JSON path's).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("not_bytes", "record value is empty or not bytes")
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError("bad_magic", "not Avro single-object encoding (missing C3 01 marker)")
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self._by_fingerprint.get(fingerprint)
        if writer is None:
            raise DecodeError(
                "unknown_schema", f"unknown writer schema fingerprint {fingerprint.hex()} (not in schemas/)"
            )
        if expected_kind is not None and writer.kind != expected_kind:
            raise DecodeError(
                "wrong_kind",
                f"record written with {writer.path.name}, but this topic carries {expected_kind}",
            )
        if writer.undefined is not None:
            raise InvalidEvent(writer.undefined)
        reader = self._readers[writer.kind]
        buffer = io.BytesIO(data[HEADER_SIZE:])
        try:
            record = fastavro.schemaless_reader(
                buffer, writer.plain, None if reader is writer else reader.plain
            )
        except Exception as exc:  # fastavro raises a variety of errors on corrupt bodies
            raise DecodeError(
                "corrupt_body", f"Avro body cannot be read: {type(exc).__name__}: {exc}"
            ) from exc
        if buffer.tell() != len(data) - HEADER_SIZE:
            raise DecodeError("corrupt_body", "trailing bytes after the Avro body")
        if not isinstance(record, dict):
            raise DecodeError("corrupt_body", "Avro body is not a record")
        return writer.kind, record


def _reader(versions: dict[int, WriterSchema], schema_dir: Path) -> WriterSchema:
    """The highest version whose fields the kind all defines (the validator reads nothing else)."""
    usable = [version for version, schema in versions.items() if schema.undefined is None]
    if not usable:
        kind = next(iter(versions.values())).kind
        raise ValueError(f"{schema_dir}: no schema of {kind} has only fields that {kind} defines")
    return versions[max(usable)]
