"""`sinks.replay`: re-deciding a known stored history under what-if policies finds exactly the
expected changes, reproduces every decision under the same policy, and writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.policy import Policy, load_policy
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.replay import ReplayResult, as_json, recipient_rows, replay
from flowaudit.sinks.reports import DEFAULT_SINCE, DEFAULT_UNTIL
from tests.conftest import DATA_DIR, read_data
from tests.sinks.legacy_store import create_legacy_table, legacy_write
from tests.sinks.replay_history import DECIDED_AT_MS, history_lines, write_history

POLICIES = DATA_DIR / "policies"
# a what-if fixture is the shipped policy with one edit: this file changed, every other one the same
WHAT_IF_FILES = {"gb-adequacy-ended": "adequacy.yaml", "mailchimp-removed": "subcontractors.yaml"}


def _replay(store: AuditStore, baseline: Policy, whatif: Policy, **window: str) -> ReplayResult:
    since, until = window.get("since", DEFAULT_SINCE), window.get("until", DEFAULT_UNTIL)
    return replay(store, baseline, whatif, since, until)


def _fingerprint(store: AuditStore) -> list[tuple[Any, ...]]:
    """Row counts and a hash of every row of the store's tables."""
    out = []
    for table in ("audit_events", "consent_events", "consent_withdrawal_notices", "audit_subjects"):
        _, rows = store.query(
            qualify(f"SELECT count(), groupBitXor(cityHash64(*)) FROM {table}", store.table)
        )
        out.append((table, *rows[0]))
    return out


@pytest.mark.parametrize("name", sorted(WHAT_IF_FILES))
def test_a_what_if_fixture_is_the_shipped_policy_but_one_file(name: str) -> None:
    shipped = sorted(path.name for path in DEFAULT_POLICY_DIR.glob("*.yaml"))
    assert sorted(path.name for path in (POLICIES / name).glob("*.yaml")) == shipped
    for filename in shipped:
        same = (POLICIES / name / filename).read_bytes() == (DEFAULT_POLICY_DIR / filename).read_bytes()
        assert same == (filename != WHAT_IF_FILES[name]), (name, filename)
    assert load_policy(POLICIES / name).version != load_policy(DEFAULT_POLICY_DIR).version


@pytest.mark.integration
def test_the_same_policy_reproduces_every_stored_decision(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    flows = write_history(store, policy, history_lines())
    result = _replay(store, policy, policy)
    assert result.rows == len(flows) == 12
    assert result.changes == [] and result.not_reproduced == 0
    assert sum(result.not_exact.values()) == 0
    assert result.consent_events == 3


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(WHAT_IF_FILES))
def test_a_what_if_policy_changes_exactly_the_expected_decisions(
    store_factory: Any, policy: Policy, name: str
) -> None:
    expected = read_data("replay/expected.yaml")[name]
    store = store_factory()
    write_history(store, policy, history_lines())
    before = _fingerprint(store)
    result = _replay(store, policy, load_policy(POLICIES / name))
    found = as_json(result)
    changes = {
        c["event_id"]: [
            c["old_decision"],
            c["new_decision"],
            c["old_mechanism"],
            c["new_mechanism"],
            c["rules_added"],
            c["rules_removed"],
        ]
        for c in found["changes"]
    }
    assert changes == expected["changes"]
    assert all(change["reproduced"] is True for change in found["changes"])
    assert {s["subject"]: s["via"] for s in found["subjects"]} == expected["subjects"]
    assert {r[0]: [r[1], r[2], r[4]] for r in recipient_rows(result)} == expected["recipients"]
    assert [result.unattributed, result.unattributed_records] == expected["unattributed"]
    summary = found["summary"]
    assert summary["rows_replayed"] == 12 and summary["changed"] == len(expected["changes"])
    assert summary["allowed_to_blocked"] == sum(c[:2] == ["allowed", "blocked"] for c in changes.values())
    added = [rule for change in changes.values() for rule in change[4]]
    assert summary["rules_added"] == {rule: added.count(rule) for rule in set(added)}
    assert summary["rules_removed"] == {} and summary["not_reproduced"] == 0
    assert _fingerprint(store) == before  # nothing written


@pytest.mark.integration
def test_the_window_limits_the_rows_replayed(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    write_history(store, policy, history_lines())
    whatif = load_policy(POLICIES / "gb-adequacy-ended")
    result = _replay(store, policy, whatif, since="2025-09-02 00:00:00.000", until="2025-10-03 00:00:00.000")
    assert result.rows == 4  # b3, b4, b6, b7
    assert sorted(change[0][-1] for change in result.changes) == ["3", "6"]


@pytest.mark.integration
def test_a_generated_history_is_reproduced_under_its_own_policy(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    lines = list(EventGenerator(policy, seed=7).records(4000))
    flows = write_history(store, policy, lines)
    result = _replay(store, policy, policy)
    assert result.rows == len(flows) > 3000 and result.consent_events > 200
    assert result.changes == [] and result.not_reproduced == 0


@pytest.mark.integration
def test_a_withdrawal_the_worker_had_not_read_is_counted_not_hidden(
    store_factory: Any, policy: Policy
) -> None:
    """The worker decided b3 before it read the withdrawal (topics are read concurrently): stored
    allowed. The store's consent table has the withdrawal, recorded after b3 was decided."""
    store = store_factory()
    lines = history_lines()
    withdrawal = next(line for line in lines if line.get("action") == "withdrawn")
    write_history(store, policy, [line for line in lines if line is not withdrawal])
    late = write_history(store, policy, [withdrawal], consents_at_ms=DECIDED_AT_MS + 1000, topic="later")
    assert late == []
    result = _replay(store, policy, policy)
    # the same policy changes nothing: b3 comes out otherwise because of the consent, not the policy
    assert result.changes == []
    [row] = result.unreproduced
    assert row[0].endswith("000000000003") and row[4:6] == ("allowed", "blocked") and row[-1] is True
    assert result.not_reproduced == 1 and result.not_reproduced_unexplained == 0
    assert result.not_exact["consent_recorded_after_decision"] == 1


@pytest.mark.integration
def test_rows_of_format_1_are_counted_and_compared_on_decision_and_rules(
    store_factory: Any, chdb_path: Path, policy: Policy
) -> None:
    store = store_factory()
    flows = write_history(store, policy, history_lines())
    create_legacy_table(store.client, store.table)  # the same rows, as the code before format 2 wrote them
    legacy_write(store.client, store.table, policy, store.key, flows, {})
    reader = AuditStore(f"chdb://{chdb_path}", policy, store.key, database=store.database)
    reader.connect(writer=False)  # a store no writer of format 2 has opened: no format 2 column
    try:
        assert reader.missing_columns
        result = _replay(reader, policy, load_policy(POLICIES / "gb-adequacy-ended"))
    finally:
        reader.close()
    assert result.rows == 12 and result.not_exact["row_format_1"] == 12
    # mechanism not recorded: only the decisions whose rules change are listed
    assert sorted(change[0][-1] for change in result.changes) == ["3", "6"]
    assert {change[8] for change in result.changes} == {"(not recorded)"}
    assert result.not_reproduced == 0


@pytest.mark.integration
def test_a_store_without_a_consent_table_says_so(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    write_history(store, policy, history_lines())
    store.client.command(qualify("DROP TABLE consent_events", store.table))
    result = _replay(store, policy, policy)
    assert result.summary()["consent_table"] is False and result.consent_events == 0
    # b3 cited a withdrawn consent: with no consent known it reads as never granted (allowed, flagged)
    # (not reproduced, and not a change: the same policy judges it so, for want of the consents)
    assert result.changes == []
    assert [(r[0][-1], r[4], r[5]) for r in result.unreproduced] == [("3", "blocked", "allowed")]
