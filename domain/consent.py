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
from flowaudit.domain.fields import InvalidEvent, required_str
from flowaudit.domain.policy import Policy

CONSENT_KIND = "consent"
ACTIONS = ("granted", "withdrawn")
_REQUIRED = ("event_id", "occurred_at", "user_id", "consent_id", "purpose", "action")
_DEFINED = frozenset({"event_type", *_REQUIRED, "notice_version"})


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
        periods = list(record.periods)
        if event.granted:
            if not periods or periods[-1][1] is not None:
                periods.append((event.occurred_at_ms, None))
        elif periods and periods[-1][1] is None:
            periods[-1] = (periods[-1][0], max(event.occurred_at_ms, periods[-1][0]))
        updated = ConsentRecord(record.consent_id, record.user_id, record.purpose, tuple(periods))
        self._records[event.consent_id] = updated
        return updated


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
    """Validate a consent event in its canonical JSON form (contract v2 §1), or raise InvalidEvent."""
    if not isinstance(record, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    unknown = sorted(str(key) for key in record if key not in _DEFINED)
    if unknown:
        raise InvalidEvent(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(a {CONSENT_KIND} event does not define it)"
        )
    for name in _REQUIRED:
        if record.get(name) is None:
            raise InvalidEvent(f"missing field {name!r}")
    raw_id = record["event_id"]
    try:
        event_id = str(uuid.UUID(raw_id)) if isinstance(raw_id, str) else None
    except ValueError:
        event_id = None
    if event_id is None:
        raise InvalidEvent(f"event_id is not a UUID: {raw_id!r}")
    purpose = required_str(record, "purpose").strip().lower()
    if purpose not in policy.purposes:
        raise InvalidEvent(f"purpose {record['purpose']!r} is not in the processing register")
    action = record["action"]
    if action not in ACTIONS:
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
