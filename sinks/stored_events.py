"""The canonical event of a stored audit row: the inverse of `audit.RowBuilder` for the event's facts.

`event_from_stored(row)` takes a row as `STORED_EVENT_SQL` reads it (a mapping from column name to
value, timestamps as epoch milliseconds) and gives the `Event` the row was built from, as far as the
decision core reads it: deciding the rebuilt event under the policy that decided the original gives
the same decision (tests/sinks/test_stored_events.py round-trips every kind).

What a row does not keep, and why it does not matter to a decision:
- `firmware_version` (a device sync's, never stored): no rule reads it; the rebuilt event has None.
- `record_count` of a kind that has none: the row stores 1, the decision core reads `record_count or 1`;
  the rebuilt event has None again.
- `subjects` of a transfer that named none: the row stores [], the decision core reads `not subjects`;
  the rebuilt event has None.
Rows of row format 1 (written before contract v2) have no `subjects` column: a bulk transfer's subjects
were not recorded, and the rebuilt event names none (`replay` counts such rows as not exact).

The counterparty columns are mapped back through the kinds' own fields (`kinds.KINDS`): a kind with a
`recipient` field had `counterparty_type` = recipient type and `counterparty` = recipient, one with a
`subcontractor` field had `counterparty` = subcontractor, others had neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowaudit.domain.events import Event
from flowaudit.domain.kinds import KINDS

# Columns of the event's facts, in the order the row builder writes them (`audit.CONTENT_COLUMNS_V2`).
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "user_country",
    "destination_country",
    "counterparty_type",
    "counterparty",
    "device_model",
    "device_id",
    "record_count",
    "encrypted",
    "pseudonymized",
    "purpose",
    "consent_id",
    "fields",
    "subjects",
)
# Columns that a store of row format 1 only (never opened by a writer of format 2) lacks, and the value
# such a row reads as after the migration (schemas/sql/audit.sql: their DEFAULTs).
FORMAT_2_DEFAULTS: Mapping[str, Any] = {
    "row_format": 1,
    "special_category_condition": None,
    "transfer_mechanism": None,
    "flags": (),
    "counterparty_name": None,
    "subjects": (),
}
_TIMESTAMPS = frozenset({"occurred_at", "decided_at", "ingested_at"})

# per kind: which Event attributes its own fields are, found once
_HAS = {name: frozenset(kind.fields) for name, kind in KINDS.items()}


def select_list(columns: tuple[str, ...], present: frozenset[str]) -> str:
    """The SELECT list for `columns` of the table aliased `stored`: timestamps as epoch milliseconds
    (`occurred_at_ms` exactly), the event id as text, and a column the table lacks
    (`FORMAT_2_DEFAULTS`) as its default."""
    parts = []
    for name in columns:
        if present and name not in present:
            default = FORMAT_2_DEFAULTS[name]
            literal = "[]" if default == () else "NULL" if default is None else str(default)
            parts.append(f"{literal} AS {name}")
        elif name in _TIMESTAMPS:
            parts.append(f"toUnixTimestamp64Milli(stored.{name}) AS {name}")
        elif name == "event_id":
            parts.append("toString(stored.event_id) AS event_id")
        else:
            parts.append(name)
    return ", ".join(parts)


def event_from_stored(row: Mapping[str, Any]) -> Event:
    """The event a stored row was built from (see the module docstring for what is not kept)."""
    kind = row["event_type"]
    has = _HAS[kind]
    counterparty = row["counterparty"]
    subjects = row["subjects"]
    return Event(
        event_type=kind,
        event_id=row["event_id"],
        occurred_at_ms=row["occurred_at"],
        user_id=row["user_id"],
        user_country=row["user_country"],
        fields=tuple(row["fields"]),
        destination_country=row["destination_country"],
        purpose=row["purpose"],
        consent_id=row["consent_id"],
        device_model=row["device_model"],
        device_id=row["device_id"],
        recipient_type=row["counterparty_type"] if "recipient_type" in has else None,
        recipient=counterparty if "recipient" in has else None,
        subcontractor=counterparty if "subcontractor" in has else None,
        record_count=row["record_count"] if "record_count" in has else None,
        encrypted=row["encrypted"],
        pseudonymized=row["pseudonymized"],
        subjects=tuple(subjects) if subjects and "subjects" in has else None,
    )
