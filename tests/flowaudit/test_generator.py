"""The generated mix (flowaudit/generator.py): realistic, seeded, valid, and it exercises every rule
and flag of the policy within its first few thousand events, decided here without a broker; with its
consent events, `flowaudit evaluate`'s ledger judges every sort of wrong consent."""

from __future__ import annotations

import io
from collections import Counter
from itertools import islice
from typing import Any

import orjson

from flowaudit.domain.consent import CONSENT_KIND, MemoryConsentLedger, consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import RECIPIENT_TYPES, event_from_mapping, parse_occurred_at
from flowaudit.domain.kinds import INPUT_KINDS, KINDS
from flowaudit.domain.policy import Policy
from flowaudit.evaluate import evaluate_lines
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
    """Decided with the consent ledger built from the consents before each flow in the stream (the
    worker's ledger when it reads the consent topic ahead of the flows)."""
    ledger = MemoryConsentLedger()
    decider = Decider(policy, ledger)
    rules: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    mechanisms: Counter[str | None] = Counter()
    blocked = 0
    events = []
    for raw in EventGenerator(policy, seed=COVERAGE["seed"]).records(COVERAGE["first_events"]):
        if raw["event_type"] == CONSENT_KIND:
            ledger.apply(consent_from_mapping(raw, policy))
            continue
        events.append(raw)
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


# --- consent events: one ordered stream of flows and consents (`records()`) ------------------------------


def _records(policy: Policy, count: int = COVERAGE["first_events"]) -> list[dict[str, Any]]:
    return list(EventGenerator(policy, seed=COVERAGE["seed"]).records(count))


def test_consents_are_about_a_tenth_valid_and_in_time_order(policy: Policy) -> None:
    low, high = COVERAGE["consent_share"]
    for count in (COVERAGE["first_events"], 20_000):
        records = _records(policy, count)
        consents = [raw for raw in records if raw["event_type"] == CONSENT_KIND]
        assert low <= len(consents) / count <= high, len(consents) / count
        assert {raw["action"] for raw in consents} == {"granted", "withdrawn"}
        for raw in consents:
            assert set(raw) <= INPUT_KINDS[CONSENT_KIND].defined
            consent_from_mapping(raw, policy)
        moments = [parse_occurred_at(raw["occurred_at"]) for raw in records]
        assert moments == sorted(moments)  # a grant comes before the flows that rely on it
    assert _records(policy, 500) == _records(policy, 500)  # seeded


def test_events_are_the_flows_of_the_same_stream(policy: Policy) -> None:
    flows = [raw for raw in _records(policy, 1000) if raw["event_type"] != CONSENT_KIND]
    assert _first(policy, len(flows)) == flows


def _evaluated(policy: Policy, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`flowaudit evaluate`'s output for the records, as one input file (the ledger in input order)."""
    out = io.BytesIO()
    stats = evaluate_lines((orjson.dumps(raw) for raw in records), policy, out)
    assert stats.errors == 0
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_evaluated_the_stream_has_every_sort_of_invalid_and_unverified_consent(policy: Policy) -> None:
    """Judged by evaluate's ledger: flows after a withdrawal, flows citing another user's consent or a
    consent for another purpose (consent-not-valid), and flows citing a consent never granted
    (consent-unverified); most cited consents are valid."""
    records = _records(policy)
    ledger = MemoryConsentLedger()  # a second ledger, to tell the sorts apart
    sorts: Counter[str] = Counter()
    for raw, output in zip(records, _evaluated(policy, records), strict=True):
        assert output["event_id"] == raw["event_id"]
        if raw["event_type"] == CONSENT_KIND:
            ledger.apply(consent_from_mapping(raw, policy))
            continue
        if not raw["consent_id"]:
            continue
        held = ledger.find(raw["consent_id"], raw["user_id"])
        if "consent-unverified" in output["flags"]:
            assert held is None
            sorts["unverified"] += 1
        elif "consent-not-valid" in output["rules"]:
            assert held is not None
            if held.user_id != raw["user_id"]:
                sorts["another user"] += 1
            elif held.purpose != raw["purpose"].strip().lower():
                sorts["another purpose"] += 1
            else:
                sorts["withdrawn"] += 1
        else:
            sorts["valid"] += 1
    assert {"unverified", "another user", "another purpose", "withdrawn"} <= set(sorts), sorts
    assert sorts["valid"] > 5 * (sum(sorts.values()) - sorts["valid"]), sorts
