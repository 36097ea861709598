"""The registry of rule checks: the one list both the loader and the decision core read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy, PolicyError, Rule, checks, load_policy
from flowaudit.domain.policy.checks import (
    CHECKS,
    Answer,
    Classified,
    Route,
    Specializer,
    Traits,
    compile_rule,
)
from flowaudit.domain.policy.files import RuleParams
from tests.conftest import DATA_DIR

MINIMAL = DATA_DIR / "policies" / "minimal"


def test_every_needed_param_is_a_rule_param() -> None:
    for check in CHECKS.values():
        for group in check.needs:
            assert group, check.name
            assert set(group) <= set(RuleParams.model_fields), check.name


def test_the_shipped_rules_compile_through_the_registry(policy: Policy) -> None:
    for rule in (*policy.rules, *policy.flags):
        assert callable(compile_rule(rule, policy)), rule.id


def test_a_hand_built_rule_with_an_unregistered_check_is_refused(policy: Policy) -> None:
    rule = Rule(
        id="x",
        check="no_such_check",
        description="x",
        severity="low",
        categories=frozenset(),
        purposes=frozenset(),
        legal_bases=frozenset(),
        event_types=frozenset(),
        zone_countries=frozenset(),
        zone="eea",
        source="test",
    )
    with pytest.raises(ValueError, match="no predicate for rule check 'no_such_check'"):
        compile_rule(rule, policy)


def test_registering_a_check_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        checks.rule_check("unknown_purpose")(lambda rule, policy: lambda route: None)


def test_an_unknown_check_is_refused_listing_the_registered_ones(tmp_path: Path) -> None:
    copy = tmp_path / "p"
    shutil.copytree(MINIMAL, copy)
    rules = copy / "rules.yaml"
    rules.write_text(rules.read_text().replace("check: unknown_purpose", "check: nope"))
    with pytest.raises(PolicyError) as caught:
        load_policy(copy)
    assert caught.value.entry == "rules[2](unknown-purpose).check"
    names = [repr(name) for name in CHECKS]
    assert caught.value.message == f"Input should be {', '.join(names[:-1])} or {names[-1]}"


def _large_batches(rule: Rule, policy: Policy) -> Specializer:
    purposes = rule.purposes

    def large(event: Traits, classified: Classified, consent: int) -> bool:
        return event.bulk

    def specialize(route: Route) -> Answer:
        return large if route.subcontractor is not None and route.purpose in purposes else None

    return specialize


def test_adding_a_check_is_one_registry_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check registered here is accepted by the loader, its `needs` enforced, and the Decider runs it."""
    monkeypatch.setitem(
        checks._REGISTRY, "test_only", checks.Check("test_only", (("purposes",),), _large_batches)
    )
    copy = tmp_path / "p"
    shutil.copytree(MINIMAL, copy)
    rules = copy / "rules.yaml"
    rules.write_text(
        rules.read_text()
        + "  - {id: test-only, check: test_only, description: x, severity: low, params: {}, source: test}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(copy)
    assert caught.value.entry == "rules[3](test-only).params.purposes"
    assert caught.value.message == "check 'test_only' needs purposes"

    rules.write_text(rules.read_text().replace("params: {}, source", "params: {purposes: [care]}, source"))
    loaded = load_policy(copy)
    assert [rule.id for rule in loaded.rules][-1] == "test-only"
    event = {
        "event_id": "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
        "event_type": "subcontractor_transfer",
        "occurred_at": "2025-01-01T00:00:00Z",
        "user_id": None,
        "user_country": None,
        "fields": ["email"],
        "destination_country": "AT",
        "purpose": "care",
        "consent_id": None,
        "subcontractor": "Lab One",
        "record_count": 2,
        "encrypted": True,
        "pseudonymized": False,
    }
    decider = Decider(loaded)
    assert decider.decide(event_from_mapping(event, loaded)).rules == ("test-only",)
    assert decider.decide(event_from_mapping(event | {"record_count": 1}, loaded)).rules == ()
    assert (
        decider.decide(event_from_mapping(event | {"purpose": "newsletter", "consent_id": "c"}, loaded)).rules
        == ()
    )
