"""The three event kinds and their validation.

`event_from_mapping` turns a decoded record (canonical JSON object, or an Avro record read by fastavro)
into an `Event`, or raises `InvalidEvent` with a reason a person can act on. It is the single gate
between bytes from outside and the decision core: everything past it may assume a well-formed event
(upper-case country codes, a tuple of field names, typed extras).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flowaudit.domain.policy import EVENT_TYPES, Policy

RECIPIENT_TYPES = frozenset(
    {"third_party_app", "other_user", "healthcare_professional", "research_program", "social_network"}
)

_COMMON_REQUIRED = ("event_id", "occurred_at", "fields", "destination_country", "purpose")
_KIND_REQUIRED = {
    "device_sync": ("device_model", "device_id"),
    "sharing": ("recipient_type", "recipient"),
    "subcontractor_transfer": ("subcontractor", "record_count", "encrypted", "pseudonymized"),
}


class InvalidEvent(ValueError):
    """A record that is not a valid event; the message says why."""


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. Countries are upper-case; `occurred_at_ms` is UTC epoch milliseconds."""

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
    recipient_type: str | None = None
    recipient: str | None = None
    subcontractor: str | None = None
    record_count: int | None = None
    encrypted: bool | None = None
    pseudonymized: bool | None = None

    @property
    def counterparty(self) -> str | None:
        """Who receives the data: the sharing recipient or the subcontractor (None for a device sync)."""
        return self.recipient if self.event_type == "sharing" else self.subcontractor

    def occurred_at_iso(self) -> str:
        return format_millis(self.occurred_at_ms)

    def to_json_dict(self) -> dict[str, Any]:
        """The canonical JSON form (contract §1)."""
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
        if self.event_type == "device_sync":
            out["device_model"] = self.device_model
            out["device_id"] = self.device_id
        elif self.event_type == "sharing":
            out["recipient_type"] = self.recipient_type
            out["recipient"] = self.recipient
        else:
            out["subcontractor"] = self.subcontractor
            out["record_count"] = self.record_count
            out["encrypted"] = self.encrypted
            out["pseudonymized"] = self.pseudonymized
        if self.event_type != "subcontractor_transfer" and self.pseudonymized is not None:
            out["pseudonymized"] = self.pseudonymized
        return out


def format_millis(millis: int) -> str:
    moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


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


def _optional_str(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string or null, got {type(value).__name__}")
    return value


def _required_str(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string")
    return value


def _country(value: Any, name: str, policy: Policy) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be an ISO 3166-1 alpha-2 country code")
    return _country_code(value, name, policy.countries)


def _country_code(value: str, name: str, countries: frozenset[str]) -> str:
    code = value.strip().upper()
    if code not in countries:
        raise InvalidEvent(f"{name} is not an ISO 3166-1 alpha-2 country code: {value!r}")
    return code


def _bool(record: Mapping[str, Any], name: str, *, required: bool) -> bool | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, bool):
        raise InvalidEvent(f"{name} must be true or false")
    return value


def event_from_mapping(record: Mapping[str, Any], policy: Policy, event_type: str | None = None) -> Event:
    """Validate one decoded record and return the Event.

    `event_type` is given when the transport tells the kind (the Kafka topic); otherwise the record's
    `event_type` field is used. Unknown extra fields are ignored (forward compatibility).
    """
    if not isinstance(record, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    declared = record.get("event_type")
    kind = event_type or declared
    if kind not in EVENT_TYPES:
        raise InvalidEvent(
            f"event_type must be one of {', '.join(EVENT_TYPES)}, got {declared!r}"
            if event_type is None
            else f"unknown event kind {event_type!r}"
        )
    if event_type is not None and declared is not None and declared != event_type:
        raise InvalidEvent(f"event_type {declared!r} does not match the topic's kind {event_type!r}")
    for name in _COMMON_REQUIRED + _KIND_REQUIRED[kind]:
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
    if not isinstance(fields, list | tuple) or not all(isinstance(f, str) and f for f in fields):
        raise InvalidEvent("fields must be an array of non-empty strings")

    user_country_raw = record.get("user_country")
    user_country = None if user_country_raw is None else _country(user_country_raw, "user_country", policy)

    extras: dict[str, Any] = {}
    if kind == "device_sync":
        extras["device_model"] = _required_str(record, "device_model")
        extras["device_id"] = _required_str(record, "device_id")
        extras["pseudonymized"] = _bool(record, "pseudonymized", required=False)
    elif kind == "sharing":
        recipient_type = record["recipient_type"]
        if recipient_type not in RECIPIENT_TYPES:
            raise InvalidEvent(
                f"recipient_type must be one of {', '.join(sorted(RECIPIENT_TYPES))}, got {recipient_type!r}"
            )
        extras["recipient_type"] = recipient_type
        extras["recipient"] = _required_str(record, "recipient")
        extras["pseudonymized"] = _bool(record, "pseudonymized", required=False)
    else:
        extras["subcontractor"] = _required_str(record, "subcontractor")
        count = record["record_count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidEvent(f"record_count must be an integer >= 1, got {count!r}")
        extras["record_count"] = count
        extras["encrypted"] = _bool(record, "encrypted", required=True)
        extras["pseudonymized"] = _bool(record, "pseudonymized", required=True)

    return Event(
        event_type=kind,
        event_id=event_id,
        occurred_at_ms=_parse_time(record["occurred_at"]),
        user_id=_optional_str(record, "user_id"),
        user_country=user_country,
        fields=tuple(fields),
        destination_country=_country(record["destination_country"], "destination_country", policy),
        purpose=_required_str(record, "purpose"),
        consent_id=_optional_str(record, "consent_id"),
        **extras,
    )


_UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _non_empty(record: Mapping[str, Any], name: str) -> str:
    value: str = record[name]
    if not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string")
    return value


def event_from_avro(record: Mapping[str, Any], kind: str, policy: Policy) -> Event:
    """Validate a record already typed by its Avro reader schema (the hot path of the worker).

    The schema guarantees the types (strings, longs, booleans, the recipient-type enum, arrays of
    strings); only the checks a schema cannot express remain. Gives exactly what
    `event_from_mapping` gives for the same record, or the same error.
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
        user_country = _country_code(user_country, "user_country", countries)
    destination = _country_code(record["destination_country"], "destination_country", countries)
    fields = record["fields"]
    if not all(fields):
        raise InvalidEvent("fields must be an array of non-empty strings")
    purpose = _non_empty(record, "purpose")
    common = (
        kind,
        event_id,
        record["occurred_at"],
        record["user_id"],
        user_country,
        tuple(fields),
        destination,
        purpose,
        record["consent_id"],
    )
    if kind == "device_sync":
        return Event(
            *common,
            device_model=_non_empty(record, "device_model"),
            device_id=_non_empty(record, "device_id"),
            pseudonymized=record.get("pseudonymized"),
        )
    if kind == "sharing":
        return Event(
            *common,
            recipient_type=record["recipient_type"],
            recipient=_non_empty(record, "recipient"),
            pseudonymized=record.get("pseudonymized"),
        )
    count = record["record_count"]
    if count < 1:
        raise InvalidEvent(f"record_count must be an integer >= 1, got {count!r}")
    return Event(
        *common,
        subcontractor=_non_empty(record, "subcontractor"),
        record_count=count,
        encrypted=record["encrypted"],
        pseudonymized=record["pseudonymized"],
    )
