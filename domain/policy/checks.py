"""The registry of rule checks, read by the policy loader and by the decision core.

A rule in rules.yaml names a `check` and gives it params. Each check is one `@rule_check` entry here:
its name, the params a rule using it must give (`needs`), and its compiler. The loader accepts only
the names registered here and checks `needs` (naming the file and the entry at fault); the Decider
compiles every enabled rule through `compile_rule`. Adding a check is adding one entry; nothing else
lists the checks.

A compiler turns one rule of a loaded policy into the pair the decision core runs:

- relevance(kind, purpose, legal basis of the purpose or None): can the rule fire at all for events
  of that kind and purpose? The Decider asks once per (kind, purpose) and remembers the answer, so
  whatever can be decided from those three belongs here, not in the predicate;
- predicate(event, effective categories): does it fire for this event? Runs per event on the hot
  path, so it is a closure over what the compiler looked up (frozensets), doing no lookups by name.

This module sits below `flowaudit.domain.events`, which imports the policy package; predicates
therefore see the event through the `CheckedEvent` protocol, which `events.Event` satisfies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from flowaudit.domain.policy.model import Policy, Rule


class CheckedEvent(Protocol):
    """What the predicates read of an event."""

    @property
    def destination_country(self) -> str: ...
    @property
    def subcontractor(self) -> str | None: ...
    @property
    def consent_id(self) -> str | None: ...
    @property
    def pseudonymized(self) -> bool | None: ...


Relevance = Callable[[str, str, str | None], bool]
Predicate = Callable[[CheckedEvent, frozenset[str]], bool]
Compiler = Callable[[Rule, Policy], tuple[Relevance, Predicate]]


@dataclass(frozen=True, slots=True)
class Check:
    """A registered check. `needs`: for each group, at least one of its params must be non-empty."""

    name: str
    needs: tuple[tuple[str, ...], ...]
    compile: Compiler


_REGISTRY: dict[str, Check] = {}
# In registration order, which is the order the loader's "Input should be ..." message lists them in.
CHECKS: Mapping[str, Check] = MappingProxyType(_REGISTRY)


def rule_check(name: str, *, needs: Sequence[str | tuple[str, ...]] = ()) -> Callable[[Compiler], Compiler]:
    """Register the decorated compiler as check `name`. A `needs` item that is a tuple means
    "one of these"; a plain name means that param itself."""

    def register(compiler: Compiler) -> Compiler:
        if name in _REGISTRY:
            raise ValueError(f"rule check {name!r} is registered twice")
        groups = tuple((item,) if isinstance(item, str) else tuple(item) for item in needs)
        _REGISTRY[name] = Check(name, groups, compiler)
        return compiler

    return register


def compile_rule(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """The (relevance, predicate) pair of one rule of `policy`."""
    check = CHECKS.get(rule.check)
    if check is None:  # the loader rejects such a rule; only a hand-built Rule gets here
        raise ValueError(f"no predicate for rule check {rule.check!r}")
    return check.compile(rule, policy)


def _always(kind: str, purpose: str, basis: str | None) -> bool:
    return True


def _fires(event: CheckedEvent, effective: frozenset[str]) -> bool:
    return True


def _transfers_only(kind: str, purpose: str, basis: str | None) -> bool:
    return kind == "subcontractor_transfer"


# --- the checks ---------------------------------------------------------------------------------------


@rule_check("special_category_leaves_zone", needs=["categories"])
def _special_category_leaves_zone(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """Data of the rule's categories sent outside its zone (`params.zone`, else the protected one)."""
    categories, zone = rule.categories, rule.zone_countries

    def leaves_zone(event: CheckedEvent, effective: frozenset[str]) -> bool:
        return event.destination_country not in zone and not categories.isdisjoint(effective)

    return _always, leaves_zone


@rule_check("unknown_subcontractor")
def _unknown_subcontractor(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """A subcontractor transfer to a processor the registry does not know (by name or alias)."""

    def unknown_subcontractor(event: CheckedEvent, effective: frozenset[str]) -> bool:
        return event.subcontractor is not None and policy.find_subcontractor(event.subcontractor) is None

    return _transfers_only, unknown_subcontractor


@rule_check("subcontractor_location_mismatch")
def _subcontractor_location_mismatch(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """A registered processor receiving data outside its registered storage place."""

    def location_mismatch(event: CheckedEvent, effective: frozenset[str]) -> bool:
        if event.subcontractor is None:
            return False
        registered = policy.find_subcontractor(event.subcontractor)
        return registered is not None and event.destination_country not in registered.storage_countries

    return _transfers_only, location_mismatch


@rule_check("unknown_purpose")
def _unknown_purpose(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """A purpose the register does not declare: decided by the purpose alone."""
    purposes = policy.purposes
    return (lambda kind, purpose, basis: purpose not in purposes), _fires


@rule_check("consent_missing", needs=[("legal_bases", "event_types")])
def _consent_missing(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """No consent reference on an event whose purpose has one of the rule's legal bases, or whose kind
    is one of its event types."""
    bases, kinds = rule.legal_bases, rule.event_types

    def consent_missing(event: CheckedEvent, effective: frozenset[str]) -> bool:
        consent = event.consent_id
        return not consent or not consent.strip()

    return (lambda kind, purpose, basis: basis in bases or kind in kinds), consent_missing


@rule_check("categories_for_purposes", needs=["categories", "purposes"])
def _categories_for_purposes(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """Data of the rule's categories used for one of its purposes."""
    categories, purposes = rule.categories, rule.purposes

    def categories_used(event: CheckedEvent, effective: frozenset[str]) -> bool:
        return not categories.isdisjoint(effective)

    return (lambda kind, purpose, basis: purpose in purposes), categories_used


@rule_check("requires_pseudonymization", needs=["purposes"])
def _requires_pseudonymization(rule: Rule, policy: Policy) -> tuple[Relevance, Predicate]:
    """Data for one of the rule's purposes that is not marked pseudonymized."""
    purposes = rule.purposes

    def not_pseudonymized(event: CheckedEvent, effective: frozenset[str]) -> bool:
        return event.pseudonymized is not True

    return (lambda kind, purpose, basis: purpose in purposes), not_pseudonymized
