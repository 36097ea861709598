"""Events and their validation: the fields every kind has here, the kind's own through `kinds.KINDS`.

`event_from_mapping` turns a decoded record (canonical JSON object, or an Avro record read by fastavro)
into an `Event`, or raises `InvalidEvent` with a reason a person can act on. It is the single gate
between bytes from outside and the decision core: everything past it may assume a well-formed event
(upper-case country codes, a tuple of field names, typed extras, a folded purpose).
`event_from_avro` is the same gate for a record that an Avro reader schema has already typed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flowaudit.domain.fields import InvalidEvent as InvalidEvent
from flowaudit.domain.fields import country_code, non_empty, optional_str, required_str
from flowaudit.domain.kinds import DEFINED_FIELDS, KIND_NAMES, KINDS, undefined_fields_error
from flowaudit.domain.kinds import RECIPIENT_TYPES as RECIPIENT_TYPES
from flowaudit.domain.policy import Policy

_COMMON_REQUIRED = ("event_id", "occurred_at", "fields", "destination_country", "purpose")
# the presence check's list per kind, built once: common fields first, then the kind's
_REQUIRED = {name: _COMMON_REQUIRED + kind.required for name, kind in KINDS.items()}
FIELDS_ERROR = "fields must be a non-empty array of non-empty strings"  # both paths, any fault of `fields`


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. Countries are upper-case; `occurred_at_ms` is UTC epoch milliseconds.

    `event_type` is one of `KIND_NAMES`; the attributes after `consent_id` are the union of the kinds'
    own fields, None where the event's kind has no such field. `purpose` is folded (stripped,
    lower-case: matched case-insensitively, contract v2 §1). `consent_id` is kept as given, and an
    empty or blank one counts as none (the decision core tests `not consent_id or not
    consent_id.strip()`; see `has_consent`). `pseudonymized` is a bool for a sharing and a transfer
    (false when absent), None for a device sync that does not say.
    """

    event_type: str
    event_id: str
    occurred_at_ms: int
    user_id: str | None
    user_country: str | None
    fields: tuple[str, ...]
    destination_country: str
    purpose: str
    consent_id: str | None
    device_model: str | None = None
    device_id: str | None = None
    firmware_version: str | None = None
    recipient_type: str | None = None
    recipient: str | None = None
    subcontractor: str | None = None
    record_count: int | None = None
    encrypted: bool | None = None
    pseudonymized: bool | None = None
    subjects: tuple[str, ...] | None = None  # a bulk transfer's data subjects (contract v2 §1)

    @property
    def has_consent(self) -> bool:
        """Whether the event names a consent: `consent_id` is set and not blank (contract v2 §1)."""
        return bool(self.consent_id and self.consent_id.strip())

    @property
    def counterparty(self) -> str | None:
        """Who receives the data: the sharing recipient or the subcontractor (None for a device sync).

        The same value as the audit row's `counterparty` column (`Kind.audit_counterparty`).
        """
        return KINDS[self.event_type].audit_counterparty(self)[1]

    def occurred_at_iso(self) -> str:
        return format_millis(self.occurred_at_ms)

    def to_json_dict(self) -> dict[str, Any]:
        """The canonical JSON form (contract §1).

        The common fields, then the kind's own (`Kind.fields`): required ones always, optional ones
        only when not null. Tuples (`subjects`) become lists, as JSON and the Avro writer want.
        """
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at_iso(),
            "user_id": self.user_id,
            "user_country": self.user_country,
            "fields": list(self.fields),
            "destination_country": self.destination_country,
            "purpose": self.purpose,
            "consent_id": self.consent_id,
        }
        kind = KINDS[self.event_type]
        for name in kind.required:
            out[name] = getattr(self, name)
        for name in kind.optional:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


def format_millis(millis: int) -> str:
    moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# When an event may have happened (contract v2 §1): at most 5 minutes after the moment it is decided
# (later is a clock error, not a flow that happened), and not before 2000-01-01, which no device or
# account of the company predates (earlier is a zero or a mistyped epoch). Outside it an event is
# invalid: a dead letter on Kafka, an error line in `evaluate`. The store and `verify` never see
# such timestamps then (and `verify` reads any stored value without converting it).
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


def check_occurred_at(occurred_at_ms: int, decided_at_ms: int) -> None:
    """InvalidEvent unless `occurred_at_ms` lies between 2000-01-01 and 5 minutes after `decided_at_ms`."""
    if occurred_at_ms > decided_at_ms + FUTURE_TOLERANCE_MS:
        raise InvalidEvent(
            f"occurred_at {_shown_millis(occurred_at_ms)} is more than 5 minutes after the moment it is "
            f"decided ({format_millis(decided_at_ms)}): a clock error, not a flow that happened"
        )
    if occurred_at_ms < EARLIEST_MS:
        raise InvalidEvent(
            f"occurred_at {_shown_millis(occurred_at_ms)} is before 2000-01-01T00:00:00.000Z (a zero or "
            "mistyped timestamp)"
        )


def _shown_millis(millis: int) -> str:
    """The timestamp as ISO-8601 where a datetime can hold it, else as epoch milliseconds."""
    try:
        return format_millis(millis)
    except (ValueError, OverflowError, OSError):
        return f"{millis} ms after the epoch"


def _parse_time(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # epoch milliseconds (the Avro form)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent(f"occurred_at is not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise InvalidEvent(f"occurred_at must be an ISO-8601 UTC string, got {type(value).__name__}")
    if moment.tzinfo is None:
        raise InvalidEvent(f"occurred_at must carry a UTC offset (e.g. 'Z'): {value!r}")
    return (moment - _EPOCH) // _ONE_MS  # integer arithmetic: float timestamps can lose a millisecond


def _country(value: Any, name: str, policy: Policy) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be an ISO 3166-1 alpha-2 country code")
    return country_code(value, name, policy.countries)


def event_from_mapping(record: Mapping[str, Any], policy: Policy, event_type: str | None = None) -> Event:
    """Validate one decoded record and return the Event.

    `event_type` is given when the transport tells the kind (the Kafka topic); otherwise the record's
    `event_type` field is used. A top-level key the kind does not define is invalid (contract v2 §1;
    `kinds.DEFINED_FIELDS`). The checks run in a fixed order (kind, undefined keys, presence,
    event_id, fields, user_country, the kind's fields, occurred_at, user_id, destination_country,
    purpose, consent_id): a record with several faults gets the first. The Avro path keeps the
    order (the codec checks undefined keys before anything else, per writer schema).
    """
    if not isinstance(record, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    declared = record.get("event_type")
    kind = event_type or declared
    if kind not in KIND_NAMES:  # a tuple, not the table: `kind` may be unhashable (a JSON array)
        raise InvalidEvent(
            f"event_type must be one of {', '.join(KIND_NAMES)}, got {declared!r}"
            if event_type is None
            else f"unknown event kind {event_type!r}"
        )
    if event_type is not None and declared is not None and declared != event_type:
        raise InvalidEvent(f"event_type {declared!r} does not match the topic's kind {event_type!r}")
    unknown = record.keys() - DEFINED_FIELDS[kind]
    if unknown:
        raise undefined_fields_error(kind, unknown)
    for name in _REQUIRED[kind]:
        if name not in record:
            raise InvalidEvent(f"missing field {name!r}")

    raw_id = record["event_id"]
    if isinstance(raw_id, uuid.UUID):
        event_id = str(raw_id)
    elif isinstance(raw_id, str):
        try:
            event_id = str(uuid.UUID(raw_id))
        except ValueError:
            raise InvalidEvent(f"event_id is not a UUID: {raw_id!r}") from None
    else:
        raise InvalidEvent("event_id must be a UUID string")

    fields = record["fields"]
    if not (isinstance(fields, list | tuple) and fields and all(isinstance(f, str) and f for f in fields)):
        raise InvalidEvent(FIELDS_ERROR)

    user_country_raw = record.get("user_country")
    user_country = None if user_country_raw is None else _country(user_country_raw, "user_country", policy)

    extras = KINDS[kind].from_json(record, policy.countries)

    return Event(
        event_type=kind,
        event_id=event_id,
        occurred_at_ms=_parse_time(record["occurred_at"]),
        user_id=optional_str(record, "user_id"),
        user_country=user_country,
        fields=tuple(fields),
        destination_country=_country(record["destination_country"], "destination_country", policy),
        purpose=required_str(record, "purpose").strip().lower(),
        consent_id=optional_str(record, "consent_id"),
        **extras,
    )


_UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def event_from_avro(record: Mapping[str, Any], kind: str, policy: Policy) -> Event:
    """Validate a record already typed by its Avro reader schema (the hot path of the worker).

    The schema guarantees the types (strings, longs, booleans, the recipient-type enum, arrays of
    strings); only the checks a schema cannot express remain. Gives exactly what
    `event_from_mapping` gives for the same record, or the same error. `kind` is one of the codec's
    kinds, hence of `KIND_NAMES` (KeyError otherwise). Keys the kind does not define are not looked
    for here: the codec refuses their writer schemas (`AvroCodec.decode`), and the reader schema
    carries none.
    """
    raw_id: str = record["event_id"]
    event_id = raw_id if _UUID_TEXT.match(raw_id) else None
    if event_id is None:
        try:
            event_id = str(uuid.UUID(raw_id))
        except ValueError:
            raise InvalidEvent(f"event_id is not a UUID: {raw_id!r}") from None
    countries = policy.countries
    user_country = record["user_country"]
    if user_country is not None:
        user_country = country_code(user_country, "user_country", countries)
    destination = country_code(record["destination_country"], "destination_country", countries)
    fields = record["fields"]
    if not fields or not all(fields):
        raise InvalidEvent(FIELDS_ERROR)
    purpose = non_empty(record, "purpose").strip().lower()
    return Event(
        kind,
        event_id,
        record["occurred_at"],
        record["user_id"],
        user_country,
        tuple(fields),
        destination,
        purpose,
        record["consent_id"],
        **KINDS[kind].from_avro(record, countries),
    )


def parse_occurred_at(value: Any) -> int:
    """An `occurred_at` as given (ISO-8601 string with an offset, or epoch milliseconds) -> epoch ms;
    InvalidEvent otherwise. Shared with the consent events (`domain.consent`)."""
    return _parse_time(value)
