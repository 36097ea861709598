from __future__ import annotations

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


def test_every_rule_has_a_firing_and_a_quiet_case(policy: Policy) -> None:
    fired: set[str] = set()
    for case in CASES["cases"]:
        fired.update(case["expect"].get("rules", []))
    assert fired == {rule.id for rule in policy.rules}


@pytest.mark.parametrize("name", list(read_data("contract.yaml")["subcontractors"]))
def test_each_registered_subcontractor_inside_and_outside_its_place(policy: Policy, name: str) -> None:
    inside, outside = read_data("contract.yaml")["subcontractors"][name]
    decider = Decider(policy)
    base = {
        "subcontractor": name.lower(),
        "purpose": "customer_support",
        "consent_id": None,
        "fields": ["email"],
    }
    ok = decider.decide(
        event_from_mapping(build("subcontractor_transfer", base | {"destination_country": inside}), policy)
    )
    assert ok.rules == (), ok
    bad = decider.decide(
        event_from_mapping(build("subcontractor_transfer", base | {"destination_country": outside}), policy)
    )
    assert bad.rules == ("subcontractor-location-mismatch",)
    health = decider.decide(
        event_from_mapping(
            build("subcontractor_transfer", base | {"destination_country": inside, "fields": ["ecg"]}), policy
        )
    )
    expected = () if inside in policy.protected_countries else ("health-data-leaves-eea",)
    assert health.rules == expected


@pytest.mark.parametrize(
    "category", ["identity", "health", "activity", "environmental", "location", "technical", "financial"]
)
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


def test_memo_is_bounded(policy: Policy) -> None:
    decider = Decider(policy)
    decider._MEMO_LIMIT = 8  # type: ignore[misc]
    for index in range(50):
        decider.decide(event_from_mapping(build("device_sync", {"fields": ["weight", f"x{index}"]}), policy))
    assert len(decider._classifications) <= 8
