"""The table of event kinds: its shape, and that the code built on it agrees with it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from flowaudit.domain import policy as policy_module
from flowaudit.domain.codec import AvroCodec
from flowaudit.domain.events import Event, event_from_mapping
from flowaudit.domain.kinds import COMMON_FIELDS as COMMON_FIELDS_V2
from flowaudit.domain.kinds import (
    CONSENT_OPTIONAL,
    CONSENT_REQUIRED,
    DEFINED_FIELDS,
    INPUT_KIND_NAMES,
    INPUT_KINDS,
    KIND_NAMES,
    KINDS,
)
from flowaudit.domain.policy import Policy
from flowaudit.schemas import SCHEMA_DIR
from tests.conftest import DATA_DIR
from tests.helpers import REPO

COMMON_FIELDS = ("event_id", "event_type", "occurred_at", "user_id", "user_country", "fields")


def test_kind_names_are_the_table_in_order() -> None:
    assert KIND_NAMES == ("device_sync", "sharing", "subcontractor_transfer")
    assert tuple(KINDS) == KIND_NAMES
    assert all(KINDS[name].name == name for name in KIND_NAMES)
    assert policy_module.EVENT_TYPES is KIND_NAMES


def test_input_kinds_are_the_flow_kinds_then_consent() -> None:
    """Every input kind has an entry; the flow kinds keep theirs in `KINDS` (the policy's kinds)."""
    assert (*KIND_NAMES, "consent") == INPUT_KIND_NAMES
    assert tuple(INPUT_KINDS) == INPUT_KIND_NAMES
    assert "consent" not in KINDS and "consent" not in policy_module.EVENT_TYPES
    for name in KIND_NAMES:
        entry = INPUT_KINDS[name]
        assert (entry.role, entry.avro_schema, entry.defined) == (
            "flow",
            KINDS[name].avro_schema,
            DEFINED_FIELDS[name],
        )
        assert entry.topic_setting == KINDS[name].topic_setting
    consent = INPUT_KINDS["consent"]
    assert (consent.role, consent.avro_schema, consent.topic_setting) == (
        "consent",
        "consent",
        "topic_consent",
    )
    assert consent.defined == {"event_type", *CONSENT_REQUIRED, *CONSENT_OPTIONAL}


def test_every_input_kind_has_a_schema_with_exactly_its_fields() -> None:
    codec = AvroCodec(SCHEMA_DIR)
    for entry in INPUT_KINDS.values():
        names = {field["name"] for field in json.loads(codec.reader(entry.name).path.read_text())["fields"]}
        assert names <= entry.defined, entry.name
    consent = json.loads(codec.reader("consent").path.read_text())
    assert [field["name"] for field in consent["fields"]] == [*CONSENT_REQUIRED, *CONSENT_OPTIONAL]


def test_the_table_does_not_import_the_policy_model() -> None:
    probe = "import sys, flowaudit.domain.kinds; print('flowaudit.domain.policy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "False"


def test_the_kinds_fields_are_exactly_the_events_kind_specific_attributes() -> None:
    attributes = [field.name for field in dataclasses.fields(Event)]
    kind_specific = attributes[attributes.index("consent_id") + 1 :]
    declared = {name for kind in KINDS.values() for name in kind.fields}
    assert declared == set(kind_specific)
    for kind in KINDS.values():
        assert not set(kind.required) & set(kind.optional), kind.name


def test_canonical_json_ends_with_the_kinds_fields(policy: Policy) -> None:
    seen = set()
    for line in (DATA_DIR / "events" / "valid.jsonl").read_text().splitlines():
        event = event_from_mapping(json.loads(line), policy)
        kind = KINDS[event.event_type]
        own = [name for name in event.to_json_dict() if name in kind.fields]
        present = [n for n in kind.fields if n in kind.required or getattr(event, n) is not None]
        assert own == present
        assert list(event.to_json_dict())[: len(COMMON_FIELDS)] == list(COMMON_FIELDS)
        seen.add(kind.name)
    assert seen == set(KIND_NAMES)


def test_every_kind_has_its_schema_and_the_schema_carries_its_required_fields() -> None:
    codec = AvroCodec(SCHEMA_DIR)
    for kind in KINDS.values():
        assert list(SCHEMA_DIR.glob(f"{kind.avro_schema}.v*.avsc")), kind.name
        reader = json.loads(codec.reader(kind.name).path.read_text())
        assert set(kind.required) <= {field["name"] for field in reader["fields"]}, kind.name


def test_audit_counterparty_per_kind() -> None:
    base = dict(
        event_id="x",
        occurred_at_ms=0,
        user_id=None,
        user_country=None,
        fields=(),
        destination_country="FR",
        purpose="p",
        consent_id=None,
    )
    events = {
        "device_sync": Event(event_type="device_sync", device_model="m", device_id="d", **base),  # type: ignore[arg-type]
        "sharing": Event(event_type="sharing", recipient_type="other_user", recipient="Ann", **base),  # type: ignore[arg-type]
        "subcontractor_transfer": Event(event_type="subcontractor_transfer", subcontractor="BSO", **base),  # type: ignore[arg-type]
    }
    assert {name: KINDS[name].audit_counterparty(event) for name, event in events.items()} == {
        "device_sync": ("platform", None),
        "sharing": ("other_user", "Ann"),
        "subcontractor_transfer": ("subcontractor", "BSO"),
    }


def test_leaves_the_platform_per_kind() -> None:
    """Contract §5: a sharing leaves, a transfer does (the core exempts the controller), a sync not."""
    assert {name: kind.leaves_platform for name, kind in KINDS.items()} == {
        "device_sync": False,
        "sharing": True,
        "subcontractor_transfer": True,
    }


def test_the_defined_keys_are_the_common_fields_and_the_kinds() -> None:
    for name, kind in KINDS.items():
        assert DEFINED_FIELDS[name] == set(COMMON_FIELDS_V2) | set(kind.fields), name
    assert COMMON_FIELDS_V2[: len(COMMON_FIELDS)] == COMMON_FIELDS


def test_the_reader_schema_carries_the_kinds_fields_and_nothing_else() -> None:
    """Every field of a kind travels on Kafka, except device_sync's `pseudonymized` (JSON only: no
    device_sync schema has it; see tests/data/events/avro_unrepresentable.yaml)."""
    codec = AvroCodec(SCHEMA_DIR)
    json_only = {"device_sync": {"pseudonymized"}}
    for name, kind in KINDS.items():
        reader = {field["name"] for field in json.loads(codec.reader(name).path.read_text())["fields"]}
        assert reader <= DEFINED_FIELDS[name] - {"event_type"}, name
        assert set(kind.fields) - reader == json_only.get(name, set()), name
