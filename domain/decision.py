"""The decision core: classify an event's fields, look up its legal basis, apply the rules and flags,
decide the Chapter V transfer mechanism, and apply the exceptions (contract v2 §5, §7).

Pure and I/O-free: `Decider.decide(event)` depends only on the event, the loaded policy and what the
consent ledger holds (an in-memory lookup behind `domain.consent.ConsentLedger`), so it can be tested
exhaustively and benchmarked alone. Rules and flags are compiled once, through the registry of rule
checks (`flowaudit.domain.policy.checks`), into a plan per *route* — (kind, purpose, subcontractor,
destination, residence, era of the adequacy registry) — of the rules that always fire on it and the
small per-event predicates of those that may; nothing here names a check, country, purpose or field.
"""

from __future__ import annotations

import bisect
import functools
import operator
from collections.abc import Callable
from typing import NamedTuple

from flowaudit.domain.classify import Classification as Classification
from flowaudit.domain.classify import FieldClassifier
from flowaudit.domain.consent import ConsentLedger, EmptyLedger, consent_status
from flowaudit.domain.events import Event
from flowaudit.domain.kinds import KINDS
from flowaudit.domain.policy import Policy, PolicyException, Subcontractor
from flowaudit.domain.policy.checks import (
    ADEQUACY,
    ALWAYS,
    CONSENT_ABSENT,
    CONSENT_DEROGATION,
    CONSENT_NOT_VALID,
    CONSENT_UNKNOWN,
    NO_MECHANISM,
    ConsentGate,
    EventPredicate,
    Route,
    Specializer,
    Traits,
    compile_rule,
)
from flowaudit.domain.policy.model import Era

ALLOWED = "allowed"
BLOCKED = "blocked"


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
    special_category_condition: str | None = None  # the purpose's Art. 9(2) condition, when health is carried
    transfer_mechanism: str | None = None  # Chapter V mechanism; None inside the protected zone (contract §5)
    flags: tuple[str, ...] = ()  # advisory flags raised (never block)
    counterparty: str | None = None  # registry's canonical subcontractor name, sharing recipient, or None

    @property
    def blocked(self) -> bool:
        return self.decision == BLOCKED

    def to_contract_dict(self) -> dict[str, object]:
        """The `flowaudit evaluate` output object (contract v2 §7), keys in the contract's order."""
        return {
            "event_id": self.event_id,
            "decision": self.decision,
            "data_categories": list(self.data_categories),
            "legal_basis": self.legal_basis,
            "rules": list(self.rules),
            "special_category_condition": self.special_category_condition,
            "transfer_mechanism": self.transfer_mechanism,
            "flags": list(self.flags),
            "waived": list(self.waived),
            "counterparty": self.counterparty,
            "policy_version": self.policy_version,
        }

    def to_dict(self) -> dict[str, object]:
        """The contract object and what `evaluate --verbose` adds (the fields it could not classify)."""
        out = self.to_contract_dict()
        out["unclassified_fields"] = list(self.unclassified_fields)
        return out


Checks = tuple[tuple[str, EventPredicate], ...]


class _Plan(NamedTuple):
    """What the Decider remembers per route: the rules and flags that can fire, and the route's facts."""

    # by consent status (`checks.CONSENT_*`, 0..3): the rules that fire on every event of the route
    # with that status (ALWAYS and consent-gated ones), sorted
    fired: tuple[tuple[str, ...], ...]
    checks: Checks  # rules decided per event by a predicate
    flagged: tuple[tuple[str, ...], ...]
    flag_checks: Checks
    basis: str | None
    condition: str | None
    mechanism: str | None
    derogation: bool
    canonical: str | None  # the registry's name of the subcontractor
    exceptions: tuple[PolicyException, ...]  # enabled exceptions whose route-level scope matches
    by_recipient: bool  # an exception in scope names recipients: the outcome depends on the recipient
    outcomes: dict[tuple[object, ...], _Outcome]  # remembered per (mask, consent, traits[, recipient])


class _Outcome(NamedTuple):
    """The part of a decision that a plan, a classification, a consent status and the traits decide."""

    decision: str
    reported: tuple[str, ...]  # the classification's reported categories
    rules: tuple[str, ...]
    flags: tuple[str, ...]
    waived: tuple[str, ...]
    mechanism: str | None
    condition: str | None


_or_all = functools.partial(functools.reduce, operator.or_)

# Builds a Decision from a complete tuple, skipping NamedTuple's keyword-handling __new__ (hot path).
_new_decision: Callable[[tuple[object, ...]], Decision] = functools.partial(tuple.__new__, Decision)


_STATUSES = range(CONSENT_UNKNOWN + 1)


def _specialize(
    compiled: tuple[tuple[str, Specializer], ...], route: Route
) -> tuple[tuple[tuple[str, ...], ...], Checks]:
    """(per consent status, the ids that fire without a per-event test; the per-event predicates)."""
    by_status: list[list[str]] = [[] for _ in _STATUSES]
    checks: list[tuple[str, EventPredicate]] = []
    for rule_id, specialize in compiled:
        answer = specialize(route)
        if answer is None:
            continue
        if answer is ALWAYS:
            statuses: frozenset[int] | range = _STATUSES
        elif isinstance(answer, ConsentGate):
            statuses = answer.statuses
        else:
            checks.append((rule_id, answer))  # type: ignore[arg-type]  # a predicate
            continue
        for status in statuses:
            by_status[status].append(rule_id)
    return tuple(tuple(sorted(ids)) for ids in by_status), tuple(checks)


def _route_scope_matches(exc: PolicyException, route: Route) -> bool:
    """The part of an exception's scope that the route decides (recipient and consent are per event)."""
    return (
        (not exc.event_types or route.kind in exc.event_types)
        and (not exc.purposes or route.purpose in exc.purposes)
        and (
            not exc.subcontractors
            or (route.registered is not None and route.registered.name in exc.subcontractors)
        )
        and (not exc.user_countries or route.user_country in exc.user_countries)
        and (not exc.destination_countries or route.destination in exc.destination_countries)
    )


class Decider:
    """Decides events against one loaded policy and a consent ledger (empty by default).

    Keeps two memos, both pure functions of the policy: category mask -> classification
    (`classify.FieldClassifier`), and route -> plan (bounded). The ledger is read per event that
    cites a consent.
    """

    _ROUTE_LIMIT = 65_536

    def __init__(self, policy: Policy, consents: ConsentLedger | None = None) -> None:
        self.policy = policy
        self.version = policy.version
        self.consents: ConsentLedger = consents if consents is not None else EmptyLedger()
        self._rules = tuple((rule.id, compile_rule(rule, policy)) for rule in policy.rules)
        self._flags = tuple((flag.id, compile_rule(flag, policy)) for flag in policy.flags)
        self._classifier = FieldClassifier(policy)
        self.classify = self._classifier.classify
        self._bit_of = self._classifier.bit_of
        self._of_mask = self._classifier.of_mask
        self._unclassified_bit = self._classifier.unclassified_bit
        self._plans: dict[tuple[str, str, str | None, str, str | None, int], _Plan] = {}
        self._outcomes: dict[tuple[object, ...], dict[tuple[object, ...], _Outcome]] = {}
        timeline = policy.timeline
        self._boundaries = timeline.boundaries
        self._eras = timeline.eras
        # the era last looked up: its index, its first millisecond, the first one after it
        self._era_index, self._era_starts, self._era_ends = 0, 0, 0

    def era_index(self, occurred_at_ms: int) -> int:
        """The index of the adequacy registry's era that `occurred_at_ms` falls in."""
        if self._era_starts <= occurred_at_ms < self._era_ends:
            return self._era_index
        boundaries = self._boundaries
        index = bisect.bisect_right(boundaries, occurred_at_ms)
        self._era_index = index
        self._era_starts = boundaries[index - 1] if index > 0 else -(2**63)
        self._era_ends = boundaries[index] if index < len(boundaries) else 2**63
        return index

    def route(self, event: Event, era: int) -> Route:
        """The route facts of an event in an era (what `_plan` compiles the rules against)."""
        policy = self.policy
        purpose = policy.purposes.get(event.purpose)
        registered = None if event.subcontractor is None else policy.find_subcontractor(event.subcontractor)
        facts = self._eras[era] if self._eras else None  # a hand-built Policy may have no timeline
        zones = facts.zones if facts is not None else policy.zones
        protected = zones[policy.protected_zone]
        destination = event.destination_country
        outside = destination not in protected
        mechanism: str | None = None
        derogation = False
        if outside:
            mechanism, derogation = self._mechanism(event, registered, facts)
        return Route(
            kind=event.event_type,
            purpose=event.purpose,
            basis=purpose.legal_basis if purpose is not None else None,
            declared=purpose.data_categories if purpose is not None else None,
            condition=purpose.special_category_condition if purpose is not None else None,
            subcontractor=event.subcontractor,
            registered=registered,
            leaves_platform=KINDS[event.event_type].leaves_platform
            and not (registered is not None and registered.controller),
            destination=destination,
            user_country=event.user_country,
            zones=zones,
            protected=protected,
            outside_zone=outside,
            mechanism=mechanism,
            derogation=derogation,
        )

    def _mechanism(self, event: Event, registered: Subcontractor | None, era: Era | None) -> tuple[str, bool]:
        """(mechanism, whether the consent decides it per event) of a transfer outside the protected
        zone (contract v2 §5): an adequacy decision in force; else the registered subcontractor's own
        (a dated framework only while in force for the destination); else, for data the user sends
        to a recipient of their choice (a kind that leaves the platform without a subcontractor: a
        sharing), a consent derogation when the cited consent holds; else none."""
        destination = event.destination_country
        if era is not None and destination in era.adequate:
            return ADEQUACY, False
        own = registered.transfer_mechanism if registered is not None else None
        if own is not None:
            if own not in self.policy.timeline.frameworks:
                return own, False
            if era is not None and destination in era.frameworks.get(own, frozenset()):
                return own, False
        if event.subcontractor is None and KINDS[event.event_type].leaves_platform:
            return NO_MECHANISM, True
        return NO_MECHANISM, False

    def _plan(self, key: tuple[str, str, str | None, str, str | None, int], event: Event) -> _Plan:
        route = self.route(event, key[5])
        exceptions = tuple(exc for exc in self.policy.exceptions if _route_scope_matches(exc, route))
        fired, checks = _specialize(self._rules, route)
        flagged, flag_checks = _specialize(self._flags, route)
        by_recipient = any(exc.recipients for exc in exceptions)
        # Routes whose plans decide alike (most residences, destinations, processors of a purpose)
        # share one outcome memo: the outcome does not depend on the canonical name.
        alike: tuple[object, ...] = (fired, checks, flagged, flag_checks, route.basis, route.condition)
        alike += (route.mechanism, route.derogation, exceptions, by_recipient)
        if len(self._plans) >= self._ROUTE_LIMIT:
            self._plans.clear()
            self._outcomes.clear()
        plan = _Plan(
            fired,
            checks,
            flagged,
            flag_checks,
            route.basis,
            route.condition,
            route.mechanism,
            route.derogation,
            route.registered.name if route.registered is not None else None,
            exceptions,
            by_recipient,
            self._outcomes.setdefault(alike, {}),
        )
        self._plans[key] = plan
        return plan

    def consent_of(self, event: Event) -> int:
        """The consent status of the event (`domain.consent.ConsentStatus` values)."""
        consent_id = event.consent_id
        if not consent_id or consent_id.isspace():
            return CONSENT_ABSENT
        record = self.consents.find(consent_id, event.user_id)
        return consent_status(record, event.user_id, event.purpose, event.occurred_at_ms)

    def decide(self, event: Event) -> Decision:
        occurred_at = event.occurred_at_ms
        if self._era_starts <= occurred_at < self._era_ends:
            era = self._era_index
        else:
            era = self.era_index(occurred_at)
        key = (
            event.event_type,
            event.purpose,
            event.subcontractor,
            event.destination_country,
            event.user_country,
            era,
        )
        plan = self._plans.get(key) or self._plan(key, event)
        fields = event.fields
        mask = _or_all(map(self._bit_of, fields), 0)  # `FieldClassifier.mask`, inlined (hot path)
        consent = self.consent_of(event) if event.consent_id else CONSENT_ABSENT
        # everything the predicates may read (checks.Traits), so the outcome can be remembered
        case: tuple[object, ...] = (
            mask,
            consent,
            event.pseudonymized,
            event.encrypted,
            event.user_id is None,
            not event.subjects,
            (event.record_count or 1) > 1,
        )
        if plan.by_recipient:
            case += ((event.recipient or "").strip().lower(),)
        outcome = plan.outcomes.get(case) or self._outcome(plan, case, event)
        unclassified: tuple[str, ...] = ()
        if mask & self._unclassified_bit:
            unclassified = self._classifier.unclassified(fields)
        return _new_decision(
            (
                event.event_id,
                outcome.decision,
                outcome.reported,
                plan.basis,
                outcome.rules,
                self.version,
                outcome.waived,
                unclassified,
                outcome.condition,
                outcome.mechanism,
                outcome.flags,
                plan.canonical or event.subcontractor or event.recipient,
            )
        )

    _OUTCOME_LIMIT = 1024  # per plan

    def _outcome(self, plan: _Plan, case: tuple[object, ...], event: Event) -> _Outcome:
        mask, consent = case[0], case[1]
        assert isinstance(mask, int) and isinstance(consent, int)
        classified = self._of_mask(mask)
        pseudonymized, encrypted, anonymous, no_subjects, bulk = case[2:7]
        traits = Traits(pseudonymized, encrypted, anonymous, not no_subjects, bulk)  # type: ignore[arg-type]
        fired = plan.fired[consent]
        more = [rule_id for rule_id, fires in plan.checks if fires(traits, classified, consent)]
        if more:
            fired = tuple(sorted((*fired, *more)))
        flags = plan.flagged[consent]
        raised = [flag_id for flag_id, test in plan.flag_checks if test(traits, classified, consent)]
        if raised:
            flags = tuple(sorted((*flags, *raised)))
        waived: tuple[str, ...] = ()
        if fired and plan.exceptions:
            fired, waived = self._apply_exceptions(plan.exceptions, event, consent, fired)
        mechanism = plan.mechanism
        if plan.derogation:
            mechanism = NO_MECHANISM if consent in (CONSENT_ABSENT, CONSENT_NOT_VALID) else CONSENT_DEROGATION
        outcome = _Outcome(
            BLOCKED if fired else ALLOWED,
            classified.reported,
            fired,
            flags,
            waived,
            mechanism,
            plan.condition if classified.special else None,
        )
        if len(plan.outcomes) >= self._OUTCOME_LIMIT:
            plan.outcomes.clear()
        plan.outcomes[case] = outcome
        return outcome

    @staticmethod
    def _apply_exceptions(
        exceptions: tuple[PolicyException, ...], event: Event, consent: int, fired: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Waive the fired rules that an exception in scope for this event waives."""
        remaining = list(fired)
        waived: list[str] = []
        for exc in exceptions:
            if exc.waives not in remaining:
                continue
            if exc.requires_consent_id and consent == CONSENT_ABSENT:
                continue
            if exc.recipients and (event.recipient or "").strip().lower() not in exc.recipients:
                continue
            remaining.remove(exc.waives)
            waived.append(exc.id)
        return tuple(remaining), tuple(sorted(waived))
