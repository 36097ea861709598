"""The metric declarations: Prometheus naming, a meaning for each, closed label sets created at 0."""

from __future__ import annotations

import re

from flowaudit.common import metrics

NAME = re.compile(r"^flowaudit_[a-z0-9_]+$")


def test_every_metric_is_named_and_documented() -> None:
    for collector in list(metrics.REGISTRY._collector_to_names):
        for family in collector.describe():
            assert NAME.match(family.name), family.name
            assert family.documentation.strip().endswith((".", ")")), family.name
            assert not {"user_id", "event_id"} & set(getattr(collector, "_labelnames", ())), family.name


def test_counters_of_flags_and_mechanisms_are_declared() -> None:
    assert metrics.FLAGGED._name == "flowaudit_flagged_events"  # exported with the _total suffix
    assert metrics.FLAGGED._labelnames == ("kind", "flag")
    assert metrics.TRANSFERS_BY_MECHANISM._name == "flowaudit_transfers_by_mechanism"
    assert metrics.TRANSFERS_BY_MECHANISM._labelnames == ("kind", "mechanism", "decision")
    assert metrics.TRANSFER_MECHANISMS == ("adequacy", "scc", "bcr", "dpf", "consent_derogation", "none")


def test_zero_known_series_creates_every_closed_label_value() -> None:
    kind = "zero-known-test"  # a kind no other test counts
    metrics.zero_known_series([kind], ["rule-a", "rule-b"], ["flag-a"])
    sample = metrics.REGISTRY.get_sample_value
    for rule in ("rule-a", "rule-b"):
        assert sample("flowaudit_blocked_events_total", {"kind": kind, "rule": rule}) == 0.0
    assert sample("flowaudit_flagged_events_total", {"kind": kind, "flag": "flag-a"}) == 0.0
    for mechanism in metrics.TRANSFER_MECHANISMS:
        for decision in metrics.DECISIONS:
            labels = {"kind": kind, "mechanism": mechanism, "decision": decision}
            assert sample("flowaudit_transfers_by_mechanism_total", labels) == 0.0
    assert sample("flowaudit_flagged_events_total", {"kind": kind, "flag": "flag-b"}) is None
