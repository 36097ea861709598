"""The registry of rule checks, read by the policy loader and by the decision core.

A rule (or an advisory flag) in rules.yaml names a `check` and gives it params. Each check is one
`@rule_check` entry here: its name, the params a rule using it must give (`needs`), and its compiler.
The loader accepts only the names registered here and checks `needs` (naming the file and the entry
at fault); the Decider compiles every enabled rule and flag through `compile_rule`. Adding a check is
adding one entry; nothing else lists the checks.

A compiler turns one rule of a loaded policy into a *specializer*: given the `Route` of an event (what
is fixed by its kind, purpose, subcontractor, destination, the subject's residence and the era of its
`occurred_at`), it answers once per route, and the Decider remembers the answer:

- `None`: the rule cannot fire on this route;
- `ALWAYS`: it fires for every event of this route;
- a `ConsentGate`: it fires exactly when the event's consent status is one of the gate's (the Decider
  turns these into one precomputed list per status: no call per event);
- a predicate(event, classification, consent status): does it fire for this event? It runs per event
  on the hot path, so it is a closure over what the specializer looked up, doing no lookups by name.

Predicates see the event only through its `Traits` (see there why), and the consent status as the
integer of `domain.consent.ConsentStatus` (0 absent, 1 valid, 2 not valid,
3 unknown to the ledger).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple, Protocol

from flowaudit.domain.policy.model import Policy, Rule, Subcontractor

# The consent status values (`domain.consent.ConsentStatus`, an IntEnum of the same values).
CONSENT_ABSENT: Final = 0
CONSENT_VALID: Final = 1
CONSENT_NOT_VALID: Final = 2
CONSENT_UNKNOWN: Final = 3

# Transfer mechanisms the core itself decides (contract v2 §5); registered ones come from the registry.
ADEQUACY: Final = "adequacy"
CONSENT_DEROGATION: Final = "consent_derogation"
NO_MECHANISM: Final = "none"


class Traits(NamedTuple):
    """What the predicates may read of an event besides its route, classification and consent: the
    Decider remembers each plan's outcome per (classification, consent, traits), so a predicate that
    read anything else would be wrong for the next event with the same key. Hence this, not the event."""

    pseudonymized: bool | None
    encrypted: bool | None
    anonymous: bool  # user_id is null (a bulk transfer)
    subjects_named: bool  # the transfer lists its data subjects (`subjects`)
    bulk: bool  # record_count > 1


class Classified(Protocol):
    """What the predicates read of an event's field classification (`decision.Classification`)."""

    @property
    def effective(self) -> frozenset[str]: ...
    @property
    def direct_identifiers(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Route:
    """What the rules may know before looking at an event's fields and consent: decided once per
    (kind, purpose, subcontractor, destination, residence, era) and remembered by the Decider.

    `zones`, `adequate` and `frameworks` are the adequacy registry's era (`model.Era`) at the event's
    `occurred_at`. `mechanism` is the transfer mechanism when it does not depend on the consent (None
    inside the protected zone); when `derogation` is true it is decided per event: a cited consent
    that the ledger does not reject makes it `consent_derogation`, else `none`.
    """

    kind: str
    purpose: str
    basis: str | None  # the purpose's legal basis; None for a purpose the register does not know
    declared: frozenset[str] | None  # categories the purpose declares; None for an unknown purpose
    condition: str | None  # the purpose's Art. 9(2) condition
    subcontractor: str | None  # as sent; None for kinds without one
    registered: Subcontractor | None
    leaves_platform: bool
    destination: str
    user_country: str | None
    zones: Mapping[str, frozenset[str]]
    protected: frozenset[str]  # the protected zone's members at the era
    outside_zone: bool
    mechanism: str | None
    derogation: bool


class EventPredicate(Protocol):
    def __call__(self, event: Traits, classified: Classified, consent: int) -> bool: ...


class _Always:
    """The specializer's answer for a rule that fires on every event of the route."""

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Final = _Always()


@dataclass(frozen=True, slots=True)
class ConsentGate:
    """The specializer's answer for a rule decided by the consent status alone."""

    statuses: frozenset[int]


Answer = EventPredicate | _Always | ConsentGate | None
Specializer = Callable[[Route], Answer]
Compiler = Callable[[Rule, Policy], Specializer]


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


def compile_rule(rule: Rule, policy: Policy) -> Specializer:
    """The specializer of one rule (or flag) of `policy`."""
    check = CHECKS.get(rule.check)
    if check is None:  # the loader rejects such a rule; only a hand-built Rule gets here
        raise ValueError(f"no predicate for rule check {rule.check!r}")
    return check.compile(rule, policy)


def _when(condition: bool, answer: Answer = ALWAYS) -> Answer:
    return answer if condition else None


def _carries(categories: frozenset[str]) -> EventPredicate:
    def carries(event: Traits, classified: Classified, consent: int) -> bool:
        return not categories.isdisjoint(classified.effective)

    return carries


_NO_CONSENT = ConsentGate(frozenset({CONSENT_ABSENT}))


# --- the checks that block (contract v2 §5 rules) ---------------------------------------------------------


@rule_check("special_category_leaves_zone", needs=["categories"])
def _special_category_leaves_zone(rule: Rule, policy: Policy) -> Specializer:
    """Data of the rule's categories sent outside its zone (`params.zone`, else the protected one) as
    the zone stood at `occurred_at`."""
    carries = _carries(rule.categories)
    return lambda route: _when(route.destination not in route.zones[rule.zone], carries)


@rule_check("unknown_subcontractor")
def _unknown_subcontractor(rule: Rule, policy: Policy) -> Specializer:
    """A subcontractor transfer to a processor the registry does not know (by name or alias)."""
    return lambda route: _when(route.subcontractor is not None and route.registered is None)


@rule_check("subcontractor_location_mismatch")
def _subcontractor_location_mismatch(rule: Rule, policy: Policy) -> Specializer:
    """A registered processor receiving data outside its registered storage place."""
    return lambda route: _when(
        route.registered is not None and route.destination not in route.registered.storage_countries
    )


@rule_check("unknown_purpose")
def _unknown_purpose(rule: Rule, policy: Policy) -> Specializer:
    """A purpose the register does not declare: decided by the purpose alone."""
    return lambda route: _when(route.declared is None)


@rule_check("consent_missing", needs=[("legal_bases", "event_types")])
def _consent_missing(rule: Rule, policy: Policy) -> Specializer:
    """No consent reference on an event whose purpose has one of the rule's legal bases, or whose kind
    is one of its event types."""
    bases, kinds = rule.legal_bases, rule.event_types
    return lambda route: _when(route.basis in bases or route.kind in kinds, _NO_CONSENT)


@rule_check("categories_for_purposes", needs=["categories", "purposes"])
def _categories_for_purposes(rule: Rule, policy: Policy) -> Specializer:
    """Data of the rule's categories used for one of its purposes."""
    carries = _carries(rule.categories)
    return lambda route: _when(route.purpose in rule.purposes, carries)


def _not_pseudonymized(event: Traits, classified: Classified, consent: int) -> bool:
    return event.pseudonymized is not True


@rule_check("requires_pseudonymization", needs=["purposes"])
def _requires_pseudonymization(rule: Rule, policy: Policy) -> Specializer:
    """Data for one of the rule's purposes leaves the platform without being marked pseudonymized."""
    return lambda route: _when(route.purpose in rule.purposes and route.leaves_platform, _not_pseudonymized)


def _identifiers_in_pseudonymized(event: Traits, classified: Classified, consent: int) -> bool:
    return event.pseudonymized is True and classified.direct_identifiers


@rule_check("identifiers_in_pseudonymized_data")
def _identifiers_in_pseudonymized_data(rule: Rule, policy: Policy) -> Specializer:
    """Data marked pseudonymized that carries a direct identifier (the taxonomy's list)."""
    return lambda route: _identifiers_in_pseudonymized


@rule_check("special_category_without_condition", needs=["categories"])
def _special_category_without_condition(rule: Rule, policy: Policy) -> Specializer:
    """Data of the rule's categories for a known purpose that names no Art. 9(2) condition."""
    carries = _carries(rule.categories)
    return lambda route: _when(route.declared is not None and route.condition is None, carries)


@rule_check("categories_without_consent", needs=["categories", "purposes"])
def _categories_without_consent(rule: Rule, policy: Policy) -> Specializer:
    """Data of the rule's categories for one of its purposes without a consent reference."""
    categories = rule.categories

    def without_consent(event: Traits, classified: Classified, consent: int) -> bool:
        return consent == CONSENT_ABSENT and not categories.isdisjoint(classified.effective)

    return lambda route: _when(route.purpose in rule.purposes, without_consent)


@rule_check("subcontractor_purpose_mismatch")
def _subcontractor_purpose_mismatch(rule: Rule, policy: Policy) -> Specializer:
    """A registered processor receiving data for a purpose it does not serve (an unknown purpose is
    served only by an entry serving every purpose)."""

    def specialize(route: Route) -> Answer:
        sub = route.registered
        return _when(sub is not None and not sub.serves_any and route.purpose not in sub.purposes)

    return specialize


@rule_check("subcontractor_outside_service_area")
def _subcontractor_outside_service_area(rule: Rule, policy: Policy) -> Specializer:
    """A registered processor with a service area receiving data of a subject who resides outside it,
    or whose residence is not known (fail closed)."""

    def specialize(route: Route) -> Answer:
        area = route.registered.service_area if route.registered is not None else None
        return _when(area is not None and (route.user_country is None or route.user_country not in area))

    return specialize


def _unencrypted(event: Traits, classified: Classified, consent: int) -> bool:
    return event.encrypted is False


@rule_check("unencrypted_transfer")
def _unencrypted_transfer(rule: Rule, policy: Policy) -> Specializer:
    """A registered processor that must receive data encrypted receives it unencrypted."""
    return lambda route: _when(
        route.registered is not None and route.registered.encryption_required, _unencrypted
    )


@rule_check("categories_leave_platform", needs=["categories"])
def _categories_leave_platform(rule: Rule, policy: Policy) -> Specializer:
    """Data of the rule's categories leaves the platform, for a purpose not among `unless_purposes`."""
    carries = _carries(rule.categories)
    return lambda route: _when(route.leaves_platform and route.purpose not in rule.unless_purposes, carries)


# a sharing outside the zone has a mechanism only through a cited consent the ledger does not reject
_NO_DEROGATION = ConsentGate(frozenset({CONSENT_ABSENT, CONSENT_NOT_VALID}))


@rule_check("transfer_without_safeguard")
def _transfer_without_safeguard(rule: Rule, policy: Policy) -> Specializer:
    """Data of a subject who may reside in the protected zone (residence inside it, or unknown) sent
    outside it with no transfer mechanism (contract v2 §5)."""

    def specialize(route: Route) -> Answer:
        may_be_resident = route.user_country is None or route.user_country in route.protected
        if not (route.outside_zone and may_be_resident):
            return None
        if route.derogation:
            return _NO_DEROGATION
        return _when(route.mechanism == NO_MECHANISM)

    return specialize


_REJECTED = ConsentGate(frozenset({CONSENT_NOT_VALID}))


@rule_check("consent_not_valid")
def _consent_not_valid(rule: Rule, policy: Policy) -> Specializer:
    """The ledger holds the consent cited and rejects it for this user, purpose or moment."""
    return lambda route: _REJECTED


# --- the checks of advisory flags -----------------------------------------------------------------------


@rule_check("undeclared_category")
def _undeclared_category(rule: Rule, policy: Policy) -> Specializer:
    """A category the register does not declare for the (known) purpose (data minimisation)."""
    predicates: dict[frozenset[str], EventPredicate] = {}  # one per declaration: routes share it

    def undeclared_beyond(declared: frozenset[str]) -> EventPredicate:
        def undeclared(event: Traits, classified: Classified, consent: int) -> bool:
            return not classified.effective <= declared

        return predicates.setdefault(declared, undeclared)

    def specialize(route: Route) -> Answer:
        declared = route.declared
        if declared is None or len(declared) == len(policy.categories):
            return None
        return undeclared_beyond(declared)

    return specialize


@rule_check("unattributed_bulk_transfer")
def _unattributed_bulk_transfer(rule: Rule, policy: Policy) -> Specializer:
    """A transfer of several records with no subject (`user_id` null, no `subjects`) carrying a
    category besides the rule's `except_categories`."""
    exempt = rule.except_categories

    def unattributed(event: Traits, classified: Classified, consent: int) -> bool:
        unattributed = event.anonymous and not event.subjects_named and event.bulk
        return unattributed and not classified.effective <= exempt

    return lambda route: _when(route.subcontractor is not None, unattributed)


_UNKNOWN = ConsentGate(frozenset({CONSENT_UNKNOWN}))


@rule_check("consent_unverified")
def _consent_unverified(rule: Rule, policy: Policy) -> Specializer:
    """A consent is cited that the ledger holds no record of."""
    return lambda route: _UNKNOWN
