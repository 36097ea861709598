from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy, load_policy
from tests.conftest import DATA_DIR, read_data

CASES = read_data("decision_cases.yaml")
UUID = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"


def build(kind: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    event = dict(CASES["defaults"][kind])
    event["event_id"] = UUID
    event.update(overrides or {})
    return event


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_decision_cases(policy: Policy, case: dict[str, Any]) -> None:
    decision = Decider(policy).decide(event_from_mapping(build(case["kind"], case.get("event")), policy))
    got = decision.to_contract_dict()
    for key, expected in case["expect"].items():
        assert got[key] == expected, f"{key}: {got}"
    assert got["event_id"] == UUID
    assert decision.policy_version == policy.version


def test_every_rule_and_flag_has_a_firing_and_a_quiet_case(policy: Policy) -> None:
    fired: set[str] = set()
    for case in CASES["cases"]:
        fired.update(case["expect"].get("rules", []))
        fired.update(case["expect"].get("flags", []))
    # consent-not-valid needs a ledger that holds the consent: tests/domain/test_consent.py
    assert fired == {rule.id for rule in (*policy.rules, *policy.flags)} - {"consent-not-valid"}


@pytest.mark.parametrize(
    "rule_id", [rule.id for rule in load_policy(DATA_DIR.parent.parent / "policy").rules]
)
def test_removing_a_rule_makes_its_firing_cases_fail(rule_id: str) -> None:
    """The cases are not vacuous: without the rule, every case that expects it decides otherwise."""
    import dataclasses

    shipped = load_policy(DATA_DIR.parent.parent / "policy")
    without = dataclasses.replace(shipped, rules=tuple(r for r in shipped.rules if r.id != rule_id))
    decider = Decider(without)
    for case in CASES["cases"]:
        if rule_id in case["expect"].get("rules", []):
            got = decider.decide(event_from_mapping(build(case["kind"], case.get("event")), without))
            assert rule_id not in got.rules


@pytest.mark.parametrize("name", list(read_data("contract.yaml")["subcontractors"]))
def test_each_registered_subcontractor_inside_and_outside_its_place(policy: Policy, name: str) -> None:
    inside, outside = read_data("contract.yaml")["subcontractors"][name]
    registry = read_data("contract.yaml")["registry"][name]
    decider = Decider(policy)
    purpose = "hosting" if registry["purposes"] == "any" else registry["purposes"][0]
    area = registry["area"]
    base = {
        "subcontractor": name.lower(),
        "purpose": purpose,
        "consent_id": "c-1",  # some of the purposes rest on consent
        "user_id": "u-1",
        "user_country": "FR" if area in (None, "EEA") else area[0],
        "fields": ["email"],
    }
    ok = decider.decide(
        event_from_mapping(build("subcontractor_transfer", base | {"destination_country": inside}), policy)
    )
    assert ok.rules == (), ok
    bad = decider.decide(
        event_from_mapping(build("subcontractor_transfer", base | {"destination_country": outside}), policy)
    )
    assert "subcontractor-location-mismatch" in bad.rules
    # outside the EEA with no mechanism of its own, an EEA resident's data also lacks a safeguard
    adequate = set(read_data("contract.yaml")["adequacy"])
    unsafe = (
        outside not in policy.protected_countries
        and outside not in adequate
        and registry["mechanism"] is None
    )
    assert set(bad.rules) - {"subcontractor-location-mismatch"} == (
        {"transfer-without-safeguard"} if unsafe and base["user_country"] == "FR" else set()
    )
    health = decider.decide(
        event_from_mapping(
            build("subcontractor_transfer", base | {"destination_country": inside, "fields": ["ecg"]}), policy
        )
    )
    leaves = inside not in policy.protected_countries
    assert ("health-data-leaves-eea" in health.rules) is (leaves and not health.waived)


@pytest.mark.parametrize("category", list(read_data("contract.yaml")["categories"]))
def test_every_contract_field_is_reported_in_its_category(policy: Policy, category: str) -> None:
    fields = read_data("contract.yaml")["categories"][category]
    decider = Decider(policy)
    for field in fields:
        decision = decider.decide(event_from_mapping(build("device_sync", {"fields": [field]}), policy))
        assert decision.data_categories == (category,), field


def test_categories_are_distinct_and_sorted(policy: Policy) -> None:
    decision = Decider(policy).decide(
        event_from_mapping(
            build("device_sync", {"fields": ["weight", "email", "steps", "weight", "ip_address"]}), policy
        )
    )
    assert decision.data_categories == ("activity", "health", "identity", "technical")


def test_unclassified_fields_are_listed(policy: Policy) -> None:
    decision = Decider(policy).decide(
        event_from_mapping(build("device_sync", {"fields": ["zz_top", "weight"]}), policy)
    )
    assert decision.unclassified_fields == ("zz_top",)


def test_enabled_exception_waives_its_rule_and_is_recorded() -> None:
    minimal = load_policy(DATA_DIR / "policies" / "minimal")
    decider = Decider(minimal)
    event = {
        "event_id": UUID,
        "event_type": "subcontractor_transfer",
        "occurred_at": "2025-01-01T00:00:00Z",
        "user_id": None,
        "user_country": None,
        "fields": ["glucose"],
        "destination_country": "US",
        "purpose": "care",
        "consent_id": None,
        "subcontractor": "Lab One",
        "record_count": 1,
        "encrypted": True,
        "pseudonymized": False,
    }
    waived = decider.decide(event_from_mapping(event, minimal))
    assert waived.rules == () and waived.decision == "allowed" and waived.waived == ("lab-in-us",)
    # outside the scope (another purpose), the rule still fires
    blocked = decider.decide(
        event_from_mapping(event | {"purpose": "newsletter", "consent_id": "c"}, minimal)
    )
    assert blocked.rules == ("medical-leaves-alps",) and blocked.waived == ()
    # a disabled rule never fires: unknown purposes pass in this fixture
    unknown = decider.decide(
        event_from_mapping(event | {"purpose": "zzz", "destination_country": "AT"}, minimal)
    )
    assert unknown.rules == () and unknown.legal_basis is None


def test_a_decision_that_depends_on_the_recipient_is_not_remembered_for_another(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    shutil.copytree(DATA_DIR / "policies" / "minimal", directory)
    shutil.copy(DATA_DIR / "policies" / "recipient-exception.yaml", directory / "exceptions.yaml")
    scoped = load_policy(directory)
    event = {
        "event_id": UUID,
        "event_type": "sharing",
        "occurred_at": "2025-01-01T00:00:00Z",
        "user_id": "u-1",
        "user_country": "CH",
        "fields": ["glucose"],
        "destination_country": "US",
        "purpose": "care",
        "consent_id": None,
        "recipient_type": "third_party_app",
    }
    decider = Decider(scoped)
    for _ in range(2):  # cold, then warm memos
        waived = decider.decide(event_from_mapping(event | {"recipient": "Lab Two"}, scoped))
        other = decider.decide(event_from_mapping(event | {"recipient": "Lab Three"}, scoped))
        assert (waived.decision, waived.waived, waived.counterparty) == (
            "allowed",
            ("certified-lab-in-us",),
            "Lab Two",
        )
        assert (other.decision, other.rules, other.counterparty) == (
            "blocked",
            ("medical-leaves-alps",),
            "Lab Three",
        )


def test_memos_are_bounded(policy: Policy) -> None:
    decider = Decider(policy)
    decider._ROUTE_LIMIT = 8  # type: ignore[misc]
    decider._OUTCOME_LIMIT = 2  # type: ignore[misc]
    for index in range(50):
        fields = ["weight", f"x{index}"] if index % 2 else ["weight", "steps", "email"][: 1 + index % 3]
        decider.decide(
            event_from_mapping(
                build("device_sync", {"fields": fields, "user_id": f"u{index}", "purpose": f"p{index}"}),
                policy,
            )
        )
    assert len(decider._plans) <= 8
    assert all(len(plan.outcomes) <= 2 for plan in decider._plans.values())


def test_a_remembered_outcome_is_the_outcome_decided_afresh(policy: Policy) -> None:
    """The memos change nothing: every generated event decides the same with warm and cold memos."""
    from flowaudit.generator import EventGenerator

    events = [event_from_mapping(raw, policy) for raw in EventGenerator(policy, seed=3).events(3000)]
    warm = Decider(policy)
    for event in events:
        warm.decide(event)
    for event in events:
        assert warm.decide(event) == Decider(policy).decide(event)
