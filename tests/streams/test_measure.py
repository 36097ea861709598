"""The metrics of a written batch are keyed on the policy's data, not on literal rule ids."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from flowaudit.common import metrics
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.domain.policy.checks import CHECKS
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.streams.deadletter import InvalidRatioGuard
from flowaudit.streams.measure import UNKNOWN_SUBCONTRACTOR_CHECK
from flowaudit.streams.pipeline import BatchProcessor
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
