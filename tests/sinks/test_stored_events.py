"""Event -> audit row -> event: the rebuilt event is decided as the original was (unit, no store)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from flowaudit.domain.consent import MemoryConsentLedger, consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import Event, InvalidEvent, event_from_mapping
from flowaudit.domain.kinds import KIND_NAMES
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.sinks.audit import CONTENT_COLUMNS, AuditRecord, RowBuilder
from flowaudit.sinks.stored_events import EVENT_COLUMNS, event_from_stored, select_list
from tests.conftest import DATA_DIR


def _as_stored(policy: Policy, records: list[AuditRecord]) -> list[dict[str, Any]]:
    """The rows as the store holds them (content columns by name), lists where ClickHouse gives lists."""
    contents = RowBuilder(policy).contents(records, 1_764_000_000_000)
    return [
        {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in zip(CONTENT_COLUMNS, c, strict=True)
        }
        for c in contents
    ]


def _decided(policy: Policy, lines: list[dict[str, Any]]) -> tuple[list[AuditRecord], MemoryConsentLedger]:
    """Flows decided in input order against the consents read before them (as `evaluate` does)."""
    ledger = MemoryConsentLedger()
    decider = Decider(policy, ledger)
    records = []
    for offset, line in enumerate(lines):
        try:
            if line.get("event_type") == "consent":
                ledger.apply(consent_from_mapping(line, policy))
                continue
            event = event_from_mapping(line, policy)
        except InvalidEvent:  # the generator's few invalid records: dead letters, never stored
            continue
        records.append(AuditRecord(event, decider.decide(event), "in", 0, offset, 1_764_000_000_000))
    return records, ledger


def _lines() -> list[dict[str, Any]]:
    files = ("events/valid_v2.jsonl", "events/contract_v2_flows.jsonl")
    files += ("events/consents.jsonl", "replay/history.jsonl")
    out = []
    for name in files:
        out += [json.loads(line) for line in (DATA_DIR / name).read_text().splitlines() if line.strip()]
    return out


def test_every_stored_row_rebuilds_an_event_decided_the_same(policy: Policy) -> None:
    generated = list(EventGenerator(policy, seed=11).records(3000))
    records, ledger = _decided(policy, _lines() + generated)
    assert {record.event.event_type for record in records} == set(KIND_NAMES)
    decider = Decider(policy, ledger)  # the ledger as it ended: judged as of each flow's occurred_at
    for record, row in zip(records, _as_stored(policy, records), strict=True):
        rebuilt = event_from_stored(row)
        # what a row does not keep (sinks/stored_events.py) and nothing else
        original = dataclasses.replace(
            record.event,
            firmware_version=None,
            subjects=record.event.subjects or None,
        )
        assert rebuilt == original, record.event.event_id
        assert decider.decide(rebuilt) == decider.decide(record.event), record.event.event_id


def test_the_generated_mix_decides_the_same_with_the_final_ledger(policy: Policy) -> None:
    """What `replay` relies on: the ledger as it ends judges each flow as the growing ledger did
    (consents are judged as of occurred_at, and the generator emits grants before the flows)."""
    records, ledger = _decided(policy, list(EventGenerator(policy, seed=5).records(3000)))
    decider = Decider(policy, ledger)
    assert any(record.event.consent_id for record in records)
    assert [decider.decide(r.event) for r in records] == [r.decision for r in records]


def test_a_row_without_subjects_or_a_count_of_its_own_reads_them_as_none(policy: Policy) -> None:
    event = Event(
        "device_sync",
        "5f0c0d1e-0000-4000-8000-000000000001",
        1_760_000_000_000,
        "u-1",
        "FR",
        ("steps",),
        "FR",
        "hosting",
        None,
        device_model="Body+",
        device_id="d-1",
    )
    [row] = _as_stored(policy, [AuditRecord(event, Decider(policy).decide(event), "in", 0, 0, 0)])
    assert row["record_count"] == 1 and row["subjects"] == []
    assert event_from_stored(row) == event


@pytest.mark.parametrize("missing", [frozenset({"subjects"}), frozenset()])
def test_the_select_list_reads_a_column_a_format_1_table_lacks_as_its_default(
    missing: frozenset[str],
) -> None:
    present = frozenset(EVENT_COLUMNS) - missing
    text = select_list(EVENT_COLUMNS, present)
    assert ("[] AS subjects" in text) == bool(missing)
    assert "toUnixTimestamp64Milli(stored.occurred_at) AS occurred_at" in text
    assert "toString(stored.event_id) AS event_id" in text
