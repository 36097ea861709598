"""The metrics of a written batch, kept by the process that writes the audit store.

`BatchMetrics.count(decided, result)` is called once per batch, after its audit rows are durable, so
the counters say what the audit trail holds. Forwarding is counted where it happens (the worker's
process: `streams.route`). Metrics are declared once, in `flowaudit.common.metrics`.

Labels and special series are keyed on the policy's data (a rule's `check`, the special categories),
never on literal rule ids: renaming a rule in policy/rules.yaml must not silently zero a metric and
the alert built on it. The label sets are closed: the rule ids and flag ids of the loaded policy
(`zero_policy_series` creates each series at 0), and the contract's transfer mechanisms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flowaudit.common import metrics
from flowaudit.domain.kinds import CONSENT_ROLE, INPUT_KINDS
from flowaudit.domain.policy import Policy
from flowaudit.streams.decide import DecidedBatch
from flowaudit.streams.messages import BatchResult

# the rule check whose firing feeds `flowaudit_unknown_subcontractor_events_total`
UNKNOWN_SUBCONTRACTOR_CHECK = "unknown_subcontractor"


def flow_kinds(kinds: Iterable[str]) -> list[str]:
    """The flow kinds among input kinds: those decided against the policy (not the consent kind)."""
    return [kind for kind in kinds if INPUT_KINDS[kind].role != CONSENT_ROLE]


def zero_policy_series(kinds: Iterable[str], policy: Policy) -> None:
    """Create every series whose labels come from the policy (rules, flags) at 0, for each kind.

    The one place that reads the label sets off the loaded policy: the worker's process and the
    pipeline process both call it at start-up, so an alert on `increase()` sees the first event.
    """
    metrics.zero_known_series(
        list(kinds), [rule.id for rule in policy.rules], [flag.id for flag in policy.flags]
    )


class BatchMetrics:
    """Counts one kind's written batches. Pure CPU; one pass over the batch's audit records."""

    def __init__(self, kind: str, policy: Policy) -> None:
        self.kind = kind
        self._special = policy.special_reported_categories
        self._unknown_subcontractor_rules = frozenset(
            rule.id for rule in policy.rules if rule.check == UNKNOWN_SUBCONTRACTOR_CHECK
        )

    def count(self, decided: DecidedBatch, result: BatchResult) -> None:
        """Metrics of a written batch (all but forwarding)."""
        kind = self.kind
        metrics.RECORDS_CONSUMED.labels(kind).inc(result.consumed)
        if result.allowed:
            metrics.EVENTS.labels(kind, "allowed").inc(result.allowed)
        if result.blocked:
            metrics.EVENTS.labels(kind, "blocked").inc(result.blocked)
        for reason, count in decided.reasons.items():
            metrics.DEAD_LETTERS.labels(kind, reason).inc(count)
        by_rule: Counter[str] = Counter()
        by_flag: Counter[str] = Counter()
        by_mechanism: Counter[tuple[str, str]] = Counter()
        by_category: Counter[tuple[str, str]] = Counter()
        by_basis: Counter[tuple[str, str]] = Counter()
        health: Counter[tuple[str, str]] = Counter()
        unknown_subcontractor = 0
        special, unknown_rules = self._special, self._unknown_subcontractor_rules
        for record in decided.records:
            decision = record.decision
            rules = decision.rules
            if rules:  # an allowed event fired none: no Counter.update call (Python code) for it
                by_rule.update(rules)
                if not unknown_rules.isdisjoint(rules):  # an event counts once, whichever rule fired
                    unknown_subcontractor += 1
            if decision.flags:  # most events raise none
                by_flag.update(decision.flags)
            mechanism = decision.transfer_mechanism
            if mechanism is not None:  # None inside the protected zone
                by_mechanism[(mechanism, decision.decision)] += 1
            basis = decision.legal_basis or "none"
            by_basis[(basis, decision.decision)] += 1
            for category in decision.data_categories:
                by_category[(category, basis)] += 1
            if not special.isdisjoint(decision.data_categories):
                health[(record.event.destination_country, decision.decision)] += 1
        for rule, count in by_rule.items():
            metrics.BLOCKED_BY_RULE.labels(kind, rule).inc(count)
        for flag, count in by_flag.items():
            metrics.FLAGGED.labels(kind, flag).inc(count)
        for (mechanism, verdict), count in by_mechanism.items():
            metrics.TRANSFERS_BY_MECHANISM.labels(kind, mechanism, verdict).inc(count)
        for (category, basis), count in by_category.items():
            metrics.EVENTS_BY_CATEGORY.labels(category, basis).inc(count)
        for (basis, verdict), count in by_basis.items():
            metrics.EVENTS_BY_LEGAL_BASIS.labels(kind, basis, verdict).inc(count)
        for (country, verdict), count in health.items():
            metrics.HEALTH_BY_DESTINATION.labels(country, verdict).inc(count)
        if unknown_subcontractor:
            metrics.UNKNOWN_SUBCONTRACTOR.inc(unknown_subcontractor)
        for latency in decided.latencies:
            metrics.DECISION_LATENCY.observe(latency)
