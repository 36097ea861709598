"""Consent events and the consent ledger (contract v2 §6), as the decision core reads them.

A `consent` event says that a user granted or withdrew a consent (`consent_id`) for a purpose. The
ledger keeps, per consent id, who gave it, for which purpose, and the periods it was in force. The
decision core asks one question of it, through `ConsentLedger.find`, and judges the answer with
`consent_status` as of the flow's `occurred_at`, never as of processing time:

- ABSENT     the flow cites no consent (null, empty or blank `consent_id`);
- VALID      the ledger holds it, granted by this user for this purpose, in force at `occurred_at`;
- NOT_VALID  the ledger holds it, and another user or purpose gave it, or it was granted after
             `occurred_at`, or withdrawn at or before it (rule `consent-not-valid`);
- UNKNOWN    the ledger holds no record of it (flag `consent-unverified`).

Two gates make a `ConsentEvent` of outside input, with the same checks and messages:
`consent_from_mapping` for the canonical JSON form (`flowaudit evaluate`, `flowaudit produce`) and
`consent_from_avro` for a record the codec read with the consent kind's reader schema (the consent
topic). Neither judges `occurred_at` against the clock: callers apply `events.check_occurred_at`, as
they do for flows.

`MemoryConsentLedger` is the ledger of `flowaudit evaluate`: built from the consent lines read so far,
in input order. The stream's ledger (a table over the consent topic) implements the same protocol.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from flowaudit.domain.events import parse_occurred_at
from flowaudit.domain.fields import InvalidEvent, non_empty, required_str
from flowaudit.domain.kinds import CONSENT_KIND as CONSENT_KIND
from flowaudit.domain.kinds import CONSENT_REQUIRED, INPUT_KINDS, undefined_fields_error
from flowaudit.domain.policy import Policy

ACTIONS = ("granted", "withdrawn")  # the order of the Avro enum `ConsentAction`
_REQUIRED = CONSENT_REQUIRED
_DEFINED = INPUT_KINDS[CONSENT_KIND].defined  # the JSON form's keys, `event_type` included


class ConsentStatus(IntEnum):
    ABSENT = 0
    VALID = 1
    NOT_VALID = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """A validated consent event. `purpose` is folded to the register's spelling (lower case)."""

    event_id: str
    occurred_at_ms: int
    user_id: str
    consent_id: str
    purpose: str
    action: str
    notice_version: str | None = None

    @property
    def granted(self) -> bool:
        return self.action == ACTIONS[0]


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """What the ledger holds for one consent id. `periods`: (granted at, withdrawn at or None), in
    the order they were recorded; a withdrawal with no grant before it leaves no period."""

    consent_id: str
    user_id: str
    purpose: str
    periods: tuple[tuple[int, int | None], ...]


class ConsentLedger(Protocol):
    """What the decision core reads of a consent ledger."""

    def find(self, consent_id: str, user_id: str | None) -> ConsentRecord | None:
        """The record of `consent_id` (`user_id`: the flow's subject, for ledgers kept per user)."""
        ...


class EmptyLedger:
    """A ledger that holds nothing: every cited consent is UNKNOWN (flagged, never blocked)."""

    def find(self, consent_id: str, user_id: str | None) -> ConsentRecord | None:
        return None


class MemoryConsentLedger:
    """The in-memory ledger: consent events applied in the order they are read."""

    def __init__(self) -> None:
        self._records: dict[str, ConsentRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def find(self, consent_id: str, user_id: str | None) -> ConsentRecord | None:
        return self._records.get(consent_id)

    def apply(self, event: ConsentEvent) -> ConsentRecord:
        """Record a grant or a withdrawal. The first event of a consent id fixes its user and purpose
        (a later event of another user or purpose cannot take it over: it is kept as it was)."""
        record = self._records.get(event.consent_id) or ConsentRecord(
            event.consent_id, event.user_id, event.purpose, ()
        )
        if (record.user_id, record.purpose) != (event.user_id, event.purpose):
            return record
        updated = ConsentRecord(
            record.consent_id, record.user_id, record.purpose, next_periods(record.periods, event)
        )
        self._records[event.consent_id] = updated
        return updated


Period = tuple[int, int | None]


def next_periods(periods: tuple[Period, ...], event: ConsentEvent) -> tuple[Period, ...]:
    """A consent's periods after one of its events (both ledgers apply this rule). A grant opens a
    period unless one is open; a withdrawal closes the open one, never before its grant (an
    out-of-order withdrawal closes it at the grant: the period is empty, not negative)."""
    if event.granted:
        if not periods or periods[-1][1] is not None:
            return (*periods, (event.occurred_at_ms, None))
        return periods
    if periods and periods[-1][1] is None:
        granted_ms = periods[-1][0]
        return (*periods[:-1], (granted_ms, max(event.occurred_at_ms, granted_ms)))
    return periods


def consent_status(
    record: ConsentRecord | None, user_id: str | None, purpose: str, at_ms: int
) -> ConsentStatus:
    """How the ledger judges a cited consent for a flow of `user_id` for `purpose` at `at_ms`."""
    if record is None:
        return ConsentStatus.UNKNOWN
    if record.user_id != user_id or record.purpose != purpose:
        return ConsentStatus.NOT_VALID
    for granted_ms, withdrawn_ms in record.periods:
        if granted_ms <= at_ms and (withdrawn_ms is None or at_ms < withdrawn_ms):
            return ConsentStatus.VALID
    return ConsentStatus.NOT_VALID


def consent_from_mapping(record: Mapping[str, Any], policy: Policy) -> ConsentEvent:
    """Validate a consent event in its canonical JSON form (contract v2 §1), or raise InvalidEvent.

    The checks run in a fixed order (undefined keys, presence, event_id, purpose, action,
    notice_version, occurred_at, user_id, consent_id): a record with several faults gets the first.
    `occurred_at` is parsed, not judged against the clock: like a flow's, the caller checks it
    (`events.check_occurred_at`) against the moment it decides.
    """
    if not isinstance(record, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    unknown = record.keys() - _DEFINED
    if unknown:
        raise undefined_fields_error(CONSENT_KIND, unknown)
    for name in _REQUIRED:
        if record.get(name) is None:
            raise InvalidEvent(f"missing field {name!r}")
    event_id = _event_id(record["event_id"])
    purpose = _purpose(required_str(record, "purpose"), policy)
    action = record["action"]
    if not isinstance(action, str) or action not in ACTIONS:  # a list: not comparable as a string
        raise InvalidEvent(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    notice = record.get("notice_version")
    if notice is not None and not isinstance(notice, str):
        raise InvalidEvent(f"notice_version must be a string or null, got {type(notice).__name__}")
    return ConsentEvent(
        event_id=event_id,
        occurred_at_ms=parse_occurred_at(record["occurred_at"]),
        user_id=required_str(record, "user_id"),
        consent_id=required_str(record, "consent_id"),
        purpose=purpose,
        action=action,
        notice_version=notice,
    )


def consent_from_avro(record: Mapping[str, Any], policy: Policy) -> ConsentEvent:
    """Validate a consent record already typed by its Avro reader schema (`schemas/consent.vN.avsc`).

    Gives exactly what `consent_from_mapping` gives for the same record, or the same error, with the
    same order of checks. The schema guarantees the types (strings, the `occurred_at` long, the
    `action` enum, `notice_version` a string or null), so only what a schema cannot express remains:
    event_id a UUID, the purpose in the register, non-blank strings. Keys the kind does not define are
    not looked for: the codec refuses their writer schemas (`AvroCodec.decode`). `occurred_at` is left
    to the caller's `events.check_occurred_at`, as for flows (`event_from_avro`).
    """
    event_id = _event_id(record["event_id"])
    purpose = _purpose(non_empty(record, "purpose"), policy)
    return ConsentEvent(
        event_id=event_id,
        occurred_at_ms=record["occurred_at"],
        user_id=non_empty(record, "user_id"),
        consent_id=non_empty(record, "consent_id"),
        purpose=purpose,
        action=record["action"],
        notice_version=record["notice_version"],
    )


def _event_id(raw: object) -> str:
    """The UUID in its canonical spelling, or InvalidEvent (both paths: the same message)."""
    if isinstance(raw, str):
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            pass
    raise InvalidEvent(f"event_id is not a UUID: {raw!r}")


def _purpose(given: str, policy: Policy) -> str:
    """The purpose folded as flows fold it (stripped, lower case), if the register holds it: unlike a
    flow's, a consent's purpose must be known (contract v2 §1), or the ledger would hold a record no
    flow can rely on."""
    purpose = given.strip().lower()
    if purpose not in policy.purposes:
        raise InvalidEvent(f"purpose {given!r} is not in the processing register")
    return purpose
