"""The decision core: classify an event's fields, look up its legal basis, apply the rules.

Pure and I/O-free: `Decider.decide(event)` depends only on the event and the loaded policy, so it can
be tested exhaustively and benchmarked alone. The rules are compiled once, through the registry of
rule checks (`flowaudit.domain.policy.checks`), into a relevance test per (kind, purpose) and a small
predicate per event; nothing here names a check, country, purpose or field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from flowaudit.domain.events import Event
from flowaudit.domain.policy import Policy, PolicyException
from flowaudit.domain.policy.checks import Predicate, compile_rule

ALLOWED = "allowed"
BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class Classification:
    """The categories of a field list: as reported, and as the rules see them (fail closed)."""

    reported: tuple[str, ...]  # distinct, sorted; includes the unclassified category if any
    effective: frozenset[str]  # unclassified replaced by the category it is treated as
    unclassified_fields: tuple[str, ...]


class Decision(NamedTuple):
    """The decision on one event. A NamedTuple: built once per event on the hot path, so cheap."""

    event_id: str
    decision: str
    data_categories: tuple[str, ...]
    legal_basis: str | None
    rules: tuple[str, ...]
    policy_version: str
    waived: tuple[str, ...] = ()  # ids of the policy exceptions that waived a rule for this event
    unclassified_fields: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.decision == BLOCKED

    def to_contract_dict(self) -> dict[str, object]:
        """The `flowaudit evaluate` output object (contract §6)."""
        return {
            "event_id": self.event_id,
            "decision": self.decision,
            "data_categories": list(self.data_categories),
            "legal_basis": self.legal_basis,
            "rules": list(self.rules),
        }

    def to_dict(self) -> dict[str, object]:
        out = self.to_contract_dict()
        out["policy_version"] = self.policy_version
        out["waived"] = list(self.waived)
        out["unclassified_fields"] = list(self.unclassified_fields)
        return out


def _exception_applies(exc: PolicyException, event: Event) -> bool:
    return (
        (not exc.event_types or event.event_type in exc.event_types)
        and (not exc.purposes or event.purpose in exc.purposes)
        and (not exc.subcontractors or (event.subcontractor or "").strip().lower() in exc.subcontractors)
        and (not exc.recipients or (event.recipient or "").strip().lower() in exc.recipients)
        and (not exc.user_countries or event.user_country in exc.user_countries)
        and (not exc.destination_countries or event.destination_country in exc.destination_countries)
    )


Plan = tuple[tuple[str, Predicate], ...]


# Builds a Decision from a complete tuple, skipping NamedTuple's keyword-handling __new__ (hot path).
_new_decision: Callable[[tuple[object, ...]], Decision] = functools.partial(tuple.__new__, Decision)


class Decider:
    """Decides events against one loaded policy.

    Keeps two bounded memos, both pure functions of the policy: field list -> classification, and
    (kind, purpose) -> the rules that can fire for it.
    """

    _MEMO_LIMIT = 4096

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.version = policy.version
        self._rules = tuple((rule.id, *compile_rule(rule, policy)) for rule in policy.rules)
        self._bases = {purpose_id: p.legal_basis for purpose_id, p in policy.purposes.items()}
        self._classifications: dict[tuple[str, ...], Classification] = {}
        self._plans: dict[tuple[str, str], Plan] = {}

    def classify(self, fields: tuple[str, ...]) -> Classification:
        """Map fields to categories. Unknown fields are `unclassified`, seen by rules as health."""
        known = self._classifications.get(fields)
        if known is not None:
            return known
        policy = self.policy
        mapping = policy.field_categories
        reported: set[str] = set()
        unclassified: list[str] = []
        for field in fields:
            category = mapping.get(field)
            if category is None:
                unclassified.append(field)
                reported.add(policy.unclassified_category)
            else:
                reported.add(category)
        effective = set(reported)
        if unclassified:
            effective.discard(policy.unclassified_category)
            effective.add(policy.unclassified_treated_as)
        result = Classification(tuple(sorted(reported)), frozenset(effective), tuple(unclassified))
        if len(self._classifications) >= self._MEMO_LIMIT:
            self._classifications.clear()
        self._classifications[fields] = result
        return result

    def _plan(self, kind: str, purpose: str) -> Plan:
        basis = self._bases.get(purpose)
        plan = tuple(
            (rule_id, fires) for rule_id, relevant, fires in self._rules if relevant(kind, purpose, basis)
        )
        if len(self._plans) >= self._MEMO_LIMIT:
            self._plans.clear()
        self._plans[(kind, purpose)] = plan
        return plan

    def decide(self, event: Event) -> Decision:
        fields = event.fields
        classification = self._classifications.get(fields)
        if classification is None:
            classification = self.classify(fields)
        kind, purpose = event.event_type, event.purpose
        plan = self._plans.get((kind, purpose))
        if plan is None:
            plan = self._plan(kind, purpose)
        effective = classification.effective
        fired = [rule_id for rule_id, fires in plan if fires(event, effective)]
        if not fired:
            return _new_decision(
                (
                    event.event_id,
                    ALLOWED,
                    classification.reported,
                    self._bases.get(purpose),
                    (),
                    self.version,
                    (),
                    classification.unclassified_fields,
                )
            )
        waived: tuple[str, ...] = ()
        if self.policy.exceptions:
            fired, waived = self._apply_exceptions(event, fired)
        fired.sort()
        return _new_decision(
            (
                event.event_id,
                BLOCKED if fired else ALLOWED,
                classification.reported,
                self._bases.get(purpose),
                tuple(fired),
                self.version,
                waived,
                classification.unclassified_fields,
            )
        )

    def _apply_exceptions(self, event: Event, fired: list[str]) -> tuple[list[str], tuple[str, ...]]:
        remaining = list(fired)
        waived: list[str] = []
        for exc in self.policy.exceptions:
            if exc.waives in remaining and _exception_applies(exc, event):
                remaining.remove(exc.waives)
                waived.append(exc.id)
        return remaining, tuple(sorted(waived))
