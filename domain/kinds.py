"""The event kinds: `KINDS`, one table entry per kind, holding everything that differs between kinds.

An entry says which fields the kind adds to the common ones (required and optional), how to validate
them from a JSON object and from an Avro record, which Avro schema files carry the kind, which setting
names its input topic, and what its audit row records as counterparty. Validation (`events`), the
codec and the audit rows dispatch through it. Adding a kind is an entry here, plus what lives
elsewhere by nature: its `schemas/<kind>.vN.avsc`, its `topic_<kind>` setting, `Event` attributes
for fields no kind had before, and the rules of the policy that concern it.

Nothing here imports the policy model: the policy loader reads `KIND_NAMES` from this module.
Validators that need the policy's facts get them as arguments (today only the country list).

`KINDS` holds the flow kinds only: an `Event` is one of them, and the policy and the decision core
treat `KIND_NAMES` as the kinds a flow may have. What enters the system is wider (contract v2 §1: four
kinds, each on its own topic): `INPUT_KINDS` lists every input kind, one `InputKind` per entry, with
its Avro schema and its role: "flow" for each entry of `KINDS` (in table order), "consent" for the
`consent` kind (contract v2 §1, §6), which builds the consent ledger and is validated by
`domain.consent`. Consumers that need every input kind (the codec's schemas, topic creation) iterate
`INPUT_KINDS`; consumers of flows keep reading `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from flowaudit.domain.fields import (
    InvalidEvent,
    bool_field,
    non_empty,
    optional_str,
    required_str,
    user_ids,
)


class Parties(Protocol):
    """What an audit-row mapping reads of an `Event` (`events` imports this module, not the reverse)."""

    @property
    def recipient_type(self) -> str | None: ...

    @property
    def recipient(self) -> str | None: ...

    @property
    def subcontractor(self) -> str | None: ...


# (record, the policy's country codes) -> the kind's fields as `Event` keyword arguments; raises
# InvalidEvent. The JSON validator may assume the kind's required fields are present (checked before)
# and nothing about their types; the Avro validator may assume the types the reader schema guarantees.
Validator = Callable[[Mapping[str, Any], frozenset[str]], dict[str, Any]]

# event -> (counterparty_type, counterparty) of its audit row
AuditCounterparty = Callable[[Parties], tuple[str, str | None]]

# The top-level keys every kind defines (contract §1), in canonical JSON order; `event_type` is the
# JSON form's own (on Kafka the topic tells the kind).
COMMON_FIELDS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "user_country",
    "fields",
    "destination_country",
    "purpose",
    "consent_id",
)

RECIPIENT_TYPES = frozenset(
    {"third_party_app", "other_user", "healthcare_professional", "research_program", "social_network"}
)


@dataclass(frozen=True, slots=True)
class Kind:
    """One event kind. `required` and `optional` are `Event` attributes, in canonical JSON order.

    `required` fields must be present in a record (null allowed only where the validator allows it)
    and always appear in the canonical JSON; `optional` ones may be absent and appear only when not
    null (an optional field with a default, like `pseudonymized` of a transfer, is never null after
    validation, so it always appears). A record with a top-level key that is neither common
    (`COMMON_FIELDS`) nor one of these is invalid (contract v2 §1). The codec reads and writes
    `schemas/<avro_schema>.vN.avsc`. `leaves_platform` (contract §5): whether an event of the kind
    leaves the platform; for a transfer the decision core still exempts the controller itself.
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    from_json: Validator
    from_avro: Validator
    avro_schema: str
    audit_counterparty: AuditCounterparty
    leaves_platform: bool

    @property
    def fields(self) -> tuple[str, ...]:
        """The kind's own fields, required then optional: the tail of its canonical JSON object."""
        return self.required + self.optional

    @property
    def topic_setting(self) -> str:
        """The `Settings` field naming the kind's input topic (`Settings.input_topics` keys on it)."""
        return f"topic_{self.name}"

    @property
    def topic_env(self) -> str:
        """The environment variable that sets the kind's input topic."""
        return f"FLOWAUDIT_{self.topic_setting.upper()}"


# --- device_sync: a device uploads measurements to the platform ---------------------------------------


def _device_sync_json(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    return {
        "device_model": required_str(record, "device_model"),
        "device_id": required_str(record, "device_id"),
        "firmware_version": optional_str(record, "firmware_version"),
        "pseudonymized": bool_field(record, "pseudonymized", required=False),
    }


def _device_sync_avro(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    return {
        "device_model": non_empty(record, "device_model"),
        "device_id": non_empty(record, "device_id"),
        "firmware_version": record["firmware_version"],
        "pseudonymized": None,  # no device_sync schema carries it: JSON only
    }


def _platform(event: Parties) -> tuple[str, str | None]:
    return "platform", None


# --- sharing: data leaves the account towards a recipient the user chose ------------------------------


def _sharing_json(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    recipient_type = record["recipient_type"]
    if not isinstance(recipient_type, str) or recipient_type not in RECIPIENT_TYPES:  # a list: unhashable
        raise InvalidEvent(
            f"recipient_type must be one of {', '.join(sorted(RECIPIENT_TYPES))}, got {recipient_type!r}"
        )
    return {
        "recipient_type": recipient_type,
        "recipient": required_str(record, "recipient"),
        "pseudonymized": bool_field(record, "pseudonymized", required=False, default=False),
    }


def _sharing_avro(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    return {  # recipient_type: the schema's enum is RECIPIENT_TYPES
        "recipient_type": record["recipient_type"],
        "recipient": non_empty(record, "recipient"),
        "pseudonymized": record["pseudonymized"],  # sharing.v2 (v1 records: the default, false)
    }


def _recipient(event: Parties) -> tuple[str, str | None]:
    return event.recipient_type or "", event.recipient


# --- subcontractor_transfer: records handed to a processor (hosting, support, ...) --------------------


def _record_count_error(count: object) -> InvalidEvent:
    return InvalidEvent(f"record_count must be an integer >= 1, got {count!r}")


def _subjects(value: Any) -> tuple[str, ...] | None:
    return None if value is None else user_ids(value, "subjects")


def _subcontractor_transfer_json(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    subcontractor = required_str(record, "subcontractor")
    count = record["record_count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise _record_count_error(count)
    return {
        "subcontractor": subcontractor,
        "record_count": count,
        "encrypted": bool_field(record, "encrypted", required=True),
        "pseudonymized": bool_field(record, "pseudonymized", required=False, default=False),
        "subjects": _subjects(record.get("subjects")),
    }


def _subcontractor_transfer_avro(record: Mapping[str, Any], countries: frozenset[str]) -> dict[str, Any]:
    count = record["record_count"]
    if count < 1:  # before the name: a record with both faults keeps getting this message
        raise _record_count_error(count)
    return {
        "subcontractor": non_empty(record, "subcontractor"),
        "record_count": count,
        "encrypted": record["encrypted"],
        "pseudonymized": record["pseudonymized"],  # subcontractor_transfer.v2: default false
        "subjects": _subjects(record["subjects"]),  # v1 records: the default, null
    }


def _subcontractor(event: Parties) -> tuple[str, str | None]:
    return "subcontractor", event.subcontractor


KINDS: Mapping[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="device_sync",
            required=("device_model", "device_id"),
            optional=("firmware_version", "pseudonymized"),
            from_json=_device_sync_json,
            from_avro=_device_sync_avro,
            avro_schema="device_sync",
            audit_counterparty=_platform,
            leaves_platform=False,  # the company's own platform
        ),
        Kind(
            name="sharing",
            required=("recipient_type", "recipient"),
            optional=("pseudonymized",),
            from_json=_sharing_json,
            from_avro=_sharing_avro,
            avro_schema="sharing",
            audit_counterparty=_recipient,
            leaves_platform=True,
        ),
        Kind(
            name="subcontractor_transfer",
            required=("subcontractor", "record_count", "encrypted"),
            optional=("pseudonymized", "subjects"),
            from_json=_subcontractor_transfer_json,
            from_avro=_subcontractor_transfer_avro,
            avro_schema="subcontractor_transfer",
            audit_counterparty=_subcontractor,
            leaves_platform=True,  # unless the subcontractor is the controller: the decision core's call
        ),
    )
}

# The kind names in table order (error messages, processors and metrics list them in this order).
KIND_NAMES: tuple[str, ...] = tuple(KINDS)

# Per kind, every top-level key a record of it may carry: the common ones and the kind's own.
DEFINED_FIELDS: Mapping[str, frozenset[str]] = {
    name: frozenset(COMMON_FIELDS + kind.fields) for name, kind in KINDS.items()
}


def undefined_fields_error(kind: str, unknown: Iterable[object]) -> InvalidEvent:
    """The error for top-level keys (a record's, a writer schema's) that `kind` does not define.

    `unknown` is not empty (callers subtract `DEFINED_FIELDS[kind]` first). The same message on the
    JSON path (per record) and on the Avro path (per writer schema, once, in the codec): the names
    sorted, quoted.
    """
    names = sorted(repr(name) for name in unknown)
    plural = "s" if len(names) > 1 else ""
    return InvalidEvent(f"unknown field{plural} {', '.join(names)}: not defined for {kind}")


# --- input kinds: the flow kinds and the consent kind (contract v2 §1) ---------------------------------

CONSENT_KIND = "consent"
# The consent kind's top-level keys (contract v2 §1), required then optional, in canonical JSON order;
# `domain.consent` validates them, the codec checks writer schemas against them.
CONSENT_REQUIRED: tuple[str, ...] = ("event_id", "occurred_at", "user_id", "consent_id", "purpose", "action")
CONSENT_OPTIONAL: tuple[str, ...] = ("notice_version",)

InputRole = Literal["flow", "consent"]
FLOW_ROLE: InputRole = "flow"
CONSENT_ROLE: InputRole = "consent"


@dataclass(frozen=True, slots=True)
class InputKind:
    """One kind of record that enters the system on its own topic (contract v2 §1).

    `role` says what it becomes: "flow", an `Event` of the entry of `KINDS` with the same name;
    "consent", a `ConsentEvent` for the consent ledger. `defined` holds every top-level key a record of
    the kind may carry (the JSON form's `event_type` included); a writer schema with a field outside it
    makes invalid events. The codec reads and writes `schemas/<avro_schema>.vN.avsc`.
    """

    name: str
    avro_schema: str
    role: InputRole
    defined: frozenset[str]

    @property
    def topic_setting(self) -> str:
        """The `Settings` field naming the kind's input topic."""
        return f"topic_{self.name}"


INPUT_KINDS: Mapping[str, InputKind] = {
    entry.name: entry
    for entry in (
        *(
            InputKind(kind.name, kind.avro_schema, "flow", DEFINED_FIELDS[kind.name])
            for kind in KINDS.values()
        ),
        InputKind(
            CONSENT_KIND,
            "consent",
            "consent",
            frozenset(("event_type", *CONSENT_REQUIRED, *CONSENT_OPTIONAL)),
        ),
    )
}

# The input kind names in table order: the flow kinds (`KIND_NAMES`), then `consent`.
INPUT_KIND_NAMES: tuple[str, ...] = tuple(INPUT_KINDS)
