"""The generated mix (flowaudit/generator.py): realistic, seeded, valid, and it exercises every rule
and flag of the policy within its first few thousand events, decided here without a broker."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import RECIPIENT_TYPES, event_from_mapping
from flowaudit.domain.kinds import KINDS
from flowaudit.domain.policy import Policy
from flowaudit.generator import FAULTS, EventGenerator, load_catalog
from tests.conftest import read_data

COVERAGE: dict[str, Any] = read_data("generator_coverage.yaml")
COMMON_KEYS = {
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "user_country",
    "fields",
    "destination_country",
    "purpose",
    "consent_id",
}


def _first(policy: Policy, count: int = COVERAGE["first_events"]) -> list[dict[str, Any]]:
    return list(EventGenerator(policy, seed=COVERAGE["seed"]).events(count))


def test_the_first_events_fire_every_rule_and_raise_every_flag(policy: Policy) -> None:
    decider = Decider(policy)  # no consent ledger, as on the stream
    rules: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    mechanisms: Counter[str | None] = Counter()
    blocked = 0
    events = _first(policy)
    for raw in events:
        decision = decider.decide(event_from_mapping(raw, policy))
        rules.update(decision.rules)
        flags.update(decision.flags)
        mechanisms[decision.transfer_mechanism] += 1
        blocked += decision.blocked
    not_on_stream = set(COVERAGE["not_on_stream"])
    assert not_on_stream <= {rule.id for rule in policy.rules}
    assert set(rules) == {rule.id for rule in policy.rules} - not_on_stream
    assert set(flags) == {flag.id for flag in policy.flags}
    assert set(COVERAGE["mechanisms"]) <= set(mechanisms)
    assert blocked <= COVERAGE["max_blocked_share"] * len(events)


def test_every_cited_consent_is_unverified_without_a_ledger(policy: Policy) -> None:
    decider = Decider(policy)
    cited = 0
    for raw in _first(policy, 1000):
        decision = decider.decide(event_from_mapping(raw, policy))
        if raw["consent_id"]:
            cited += 1
            assert "consent-unverified" in decision.flags
        assert "consent-not-valid" not in decision.rules
    assert cited > 0


def test_every_fault_makes_its_mistake(policy: Policy) -> None:
    generator = EventGenerator(policy, seed=5)
    decider = Decider(policy)
    for name in FAULTS:
        decision = decider.decide(event_from_mapping(getattr(generator, name)(), policy))
        assert decision.rules or decision.flags, name


def test_the_mix_is_valid_seeded_and_uses_only_the_kinds_fields(policy: Policy) -> None:
    events = _first(policy)
    for raw in events:
        event_from_mapping(raw, policy)
        kind = KINDS[raw["event_type"]]
        assert set(raw) <= COMMON_KEYS | set(kind.fields), raw
        assert set(kind.required) <= set(raw), raw
        assert raw["fields"], raw
    assert "subjects" in KINDS["subcontractor_transfer"].fields
    assert [e["event_id"] for e in events[:100]] == [
        e["event_id"] for e in islice(EventGenerator(policy, seed=COVERAGE["seed"]).events(100), 100)
    ]
    assert _first(policy, 200) == events[:200]


def test_bulk_transfers_with_and_without_subjects(policy: Policy) -> None:
    bulk = [e for e in _first(policy) if e["event_type"] == "subcontractor_transfer" and e["user_id"] is None]
    named = [e for e in bulk if "subjects" in e]
    assert named and len(named) < len(bulk)
    for raw in named:
        subjects = raw["subjects"]
        assert subjects and len(set(subjects)) == len(subjects) and all(subjects)
        assert raw["record_count"] >= len(subjects) and raw["user_country"] is None


def test_bulk_transfers_naming_their_subjects_are_not_flagged(policy: Policy) -> None:
    decider = Decider(policy)
    named = [e for e in _first(policy) if e.get("subjects")]
    for raw in named:
        assert "unattributed-bulk-transfer" not in decider.decide(event_from_mapping(raw, policy)).flags


def test_the_catalogue_names_what_the_policy_knows(policy: Policy) -> None:
    catalog = load_catalog()
    fields = {f for device in catalog["devices"] for f in device["fields"]} | set(
        catalog["sync_technical_fields"]
    )
    assert fields <= set(policy.field_categories)
    assert not set(catalog["unknown_fields"]) & set(policy.field_categories)
    purposes = set(catalog["sync_purposes"]) | {
        p for weights in catalog["sharing_purposes"].values() for p in weights
    }
    assert purposes <= set(policy.purposes)
    assert not set(catalog["unknown_purposes"]) & set(policy.purposes)
    assert set(catalog["recipients"]) == set(catalog["recipient_weights"]) == set(RECIPIENT_TYPES)
    assert set(catalog["sharing_purposes"]) == set(RECIPIENT_TYPES)
    countries = set(catalog["user_countries"]) | set(catalog["outside_countries"])
    countries |= {r["country"] for rs in catalog["recipients"].values() for r in rs if r["country"]}
    countries |= {p["country"] for p in catalog["unknown_processors"]}
    assert countries <= policy.countries
    assert not set(catalog["outside_countries"]) & policy.protected_countries
    assert all(policy.find_subcontractor(p["name"]) is None for p in catalog["unknown_processors"])
