"""The metrics of a written batch are keyed on the policy's data, not on literal rule ids, and count
what contract v2 adds: the new rules, the advisory flags by id, transfers by Chapter V mechanism."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flowaudit.common import metrics
from flowaudit.domain.decision import Decision
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.domain.policy.checks import CHECKS
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.audit import AuditRecord
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.decide import DecidedBatch
from flowaudit.streams.measure import UNKNOWN_SUBCONTRACTOR_CHECK, BatchMetrics, zero_policy_series
from flowaudit.streams.messages import BatchResult
from flowaudit.streams.pipeline import BatchProcessor
from flowaudit.streams.route import Routes
from tests.conftest import read_data
from tests.fakes import MemorySink
from tests.streams.batches import CODEC, examples, messages_of

RENAMED = "processor-not-in-registry"


def _renamed_policy(tmp_path: Path) -> Policy:
    """The shipped policy with the `unknown_subcontractor` rule under another id."""
    copy = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_DIR, copy)
    rules = copy / "rules.yaml"
    text = rules.read_text()
    assert "  - id: unknown-subcontractor\n" in text
    rules.write_text(text.replace("  - id: unknown-subcontractor\n", f"  - id: {RENAMED}\n"))
    return load_policy(copy)


def _unknown_subcontractor_events(policy: Policy) -> int:
    kind = "subcontractor_transfer"
    processor = BatchProcessor(kind, policy, CODEC, MemorySink(), InvalidRatioGuard(0.5, 1000))
    before = metrics.UNKNOWN_SUBCONTRACTOR._value.get()
    decided = processor.decide(messages_of(policy, kind, examples(policy, kind)))
    asyncio.run(processor.write(decided))
    fired = sum(1 for record in decided.records if record.decision.rules)
    assert fired  # the examples include blocked transfers
    return int(metrics.UNKNOWN_SUBCONTRACTOR._value.get() - before)


def test_unknown_subcontractor_events_are_counted_by_the_rules_check(policy: Policy) -> None:
    assert UNKNOWN_SUBCONTRACTOR_CHECK in CHECKS  # a check the policy loader knows
    assert _unknown_subcontractor_events(policy) >= 1


def test_renaming_the_rule_keeps_the_unknown_subcontractor_metric(policy: Policy, tmp_path: Path) -> None:
    renamed = _renamed_policy(tmp_path)
    ids = {rule.id: rule.check for rule in renamed.rules}
    assert "unknown-subcontractor" not in ids and ids[RENAMED] == UNKNOWN_SUBCONTRACTOR_CHECK
    expected = _unknown_subcontractor_events(policy)
    assert _unknown_subcontractor_events(renamed) == expected >= 1


# Contract v2: advisory flags, the rules v2 adds, transfer mechanisms (tests/data/metrics/v2_decisions.yaml).
V2: dict[str, Any] = read_data("metrics/v2_decisions.yaml")
PER_KIND = (
    ("blocked_by_rule", metrics.BLOCKED_BY_RULE, ("rule",)),
    ("flagged", metrics.FLAGGED, ("flag",)),
    ("transfers", metrics.TRANSFERS_BY_MECHANISM, ("mechanism", "decision")),
)


@pytest.fixture(scope="module")
def v2_policy(policy: Policy) -> Policy:
    """The shipped policy, which holds every rule and flag the data file names."""
    assert set(V2["rules"]) <= {rule.id for rule in policy.rules}
    assert set(V2["flags"]) == {flag.id for flag in policy.flags}
    return policy


def _batch(kind: str, policy: Policy) -> tuple[DecidedBatch, BatchResult]:
    records = []
    for offset, case in enumerate(V2["batches"][kind]):
        event = event_from_mapping(case["event"], policy)
        d = case["decision"]
        decision = Decision(
            event.event_id,
            d["decision"],
            tuple(d["data_categories"]),
            d["legal_basis"],
            tuple(d["rules"]),
            policy.version,
            transfer_mechanism=d["transfer_mechanism"],
            flags=tuple(d["flags"]),
        )
        records.append(AuditRecord(event, decision, f"in.{kind}", 0, offset, 1_762_300_000_000))
    blocked = sum(1 for record in records if record.decision.blocked)
    decided = DecidedBatch(len(records), records, Routes([], [], []), Counter(), [])
    return decided, BatchResult(consumed=len(records), allowed=len(records) - blocked, blocked=blocked)


def _values(kind: str) -> dict[str, dict[str, float]]:
    """The v2-relevant counters of one kind: {counter: {label values joined by '/': value}}."""
    out: dict[str, dict[str, float]] = {}
    for name, counter, labels in PER_KIND:
        values = out.setdefault(name, {})
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["kind"] == kind:
                    values["/".join(sample.labels[label] for label in labels)] = sample.value
    return out


def _count(kind: str, policy: Policy) -> dict[str, dict[str, float]]:
    """What writing the kind's v2 batch adds to the counters (non-zero increments only)."""
    before = _values(kind)
    BatchMetrics(kind, policy).count(*_batch(kind, policy))
    after = _values(kind)
    return {
        name: {key: value - before[name].get(key, 0) for key, value in series.items()}
        for name, series in after.items()
    }


def _nonzero(counts: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: {k: v for k, v in series.items() if v} for name, series in counts.items()}


@pytest.mark.parametrize("kind", sorted(V2["batches"]))
def test_a_v2_batch_adds_its_rules_flags_and_mechanisms(v2_policy: Policy, kind: str) -> None:
    assert _nonzero(_count(kind, v2_policy)) == V2["expected"][kind]


def test_every_flag_and_every_v2_rule_is_counted(v2_policy: Policy) -> None:
    rules: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    for kind in V2["batches"]:
        counts = _count(kind, v2_policy)
        rules.update(counts["blocked_by_rule"])
        flags.update(counts["flagged"])
    assert {flag.id for flag in v2_policy.flags} == set(V2["flags"])
    for flag in v2_policy.flags:
        assert flags[flag.id] >= 1, f"flag {flag.id} was not counted"
    for rule_id in V2["rules"]:
        assert rules[rule_id] >= 1, f"rule {rule_id} was not counted"
    assert rules["transfer-without-safeguard"] == 3  # the alert FlowauditTransferWithoutSafeguard reads it


def test_transfers_are_counted_outside_the_zone_only_by_mechanism(v2_policy: Policy) -> None:
    assert tuple(V2["mechanisms"]) == metrics.TRANSFER_MECHANISMS
    for kind, cases in V2["batches"].items():
        outside = sum(1 for case in cases if case["decision"]["transfer_mechanism"] is not None)
        assert 0 < outside < len(cases)  # each batch has decisions inside and outside the zone
        transfers = _nonzero(_count(kind, v2_policy))["transfers"]
        assert sum(transfers.values()) == outside
        assert {key.split("/")[0] for key in transfers} <= set(metrics.TRANSFER_MECHANISMS)


def test_series_labelled_by_the_policy_start_at_zero(v2_policy: Policy) -> None:
    kind = "zero-series-test"  # a kind no other test counts
    zero_policy_series([kind], v2_policy)
    values = _values(kind)
    assert values["blocked_by_rule"] == {rule.id: 0.0 for rule in v2_policy.rules}
    assert values["flagged"] == {flag.id: 0.0 for flag in v2_policy.flags}
    assert values["transfers"] == {
        f"{mechanism}/{decision}": 0.0
        for mechanism in metrics.TRANSFER_MECHANISMS
        for decision in ("allowed", "blocked")
    }
    assert set(V2["rules"]) <= set(values["blocked_by_rule"])


@pytest.mark.parametrize("kind", sorted(V2["batches"]))
def test_legal_bases_count_each_event_once_whatever_it_carries(v2_policy: Policy, kind: str) -> None:
    """flowaudit_events_by_legal_basis_total adds one per event (an event with three categories adds
    three to the per-category counter), labelled by its purpose's basis and its decision."""
    decided, result = _batch(kind, v2_policy)
    expected: Counter[str] = Counter(
        f"{record.decision.legal_basis or 'none'}/{record.decision.decision}" for record in decided.records
    )
    assert any(len(record.decision.data_categories) > 1 for record in decided.records)

    def values() -> dict[str, float]:
        return {
            f"{s.labels['legal_basis']}/{s.labels['decision']}": s.value
            for family in metrics.EVENTS_BY_LEGAL_BASIS.collect()
            for s in family.samples
            if s.name.endswith("_total") and s.labels["kind"] == kind
        }

    before = values()
    BatchMetrics(kind, v2_policy).count(decided, result)
    added = {key: value - before.get(key, 0) for key, value in values().items() if value - before.get(key, 0)}
    assert added == dict(expected)
    assert sum(added.values()) == len(decided.records)
