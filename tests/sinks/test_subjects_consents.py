"""Consent rows, withdrawal notices, the per-subject index and their reports, on a known input
(tests/data/reports/subjects_and_consents.yaml), against chDB; test_clickhouse_http.py runs the
store tests again over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

import pytest

from flowaudit.domain.consent import consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import event_from_mapping
from flowaudit.domain.policy import Policy
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import SUBJECTS_VIEW, AuditStore, StoreError, qualify
from flowaudit.sinks.consents import ConsentAuditRecord
from flowaudit.sinks.reports import load_reports, report_parameters
from flowaudit.sinks.verify import verify_store
from flowaudit.sinks.writer import ClickHouseSink
from tests.conftest import read_data

pytestmark = pytest.mark.integration

DATA = "reports/subjects_and_consents.yaml"


def flow_batches(policy: Policy) -> dict[int, list[AuditRecord]]:
    """The flows of the data file by batch, decided by the core with the file's overrides."""
    decider = Decider(policy)
    batches: dict[int, list[AuditRecord]] = {1: [], 2: []}
    for offset, row in enumerate(read_data(DATA)["flows"]):
        event = event_from_mapping(row["event"], policy)
        decision = decider.decide(event)._replace(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in row.get("decision", {}).items()})
        batches[row["batch"]].append(AuditRecord(event, decision, "flows", 0, offset, 1_762_300_000_000))
    return batches


def consent_records(policy: Policy) -> list[ConsentAuditRecord]:
    return [
        ConsentAuditRecord(consent_from_mapping(raw, policy), "consents", 0, offset)
        for offset, raw in enumerate(read_data(DATA)["consents"])
    ]


def run_report(store: AuditStore, name: str, **kwargs: str) -> list[dict[str, Any]]:
    report = load_reports()[name]
    params = report_parameters(
        report, kwargs.get("since"), kwargs.get("until"), kwargs.get("user"), kwargs.get("recipient")
    )
    columns, rows = store.query(qualify(report.sql, store.table), params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def notices(store: AuditStore) -> list[tuple[str, str]]:
    _, rows = store.query(
        qualify("SELECT counterparty, toString(flow_event_id) FROM consent_withdrawal_notices "
                "ORDER BY flow_event_id", store.table)
    )
    return [(str(r[0]), str(r[1])[-2:]) for r in rows]


def test_consents_are_written_once_with_the_notices_known_at_withdrawal(
    store_factory: Any, policy: Policy
) -> None:
    store = store_factory()
    batches = flow_batches(policy)
    store.write(batches[1])
    consents = consent_records(policy)
    assert store.write_consents(consents) == (2, 0)
    # the allowed flows before the withdrawal that the store held: Strava twice (not the blocked one)
    assert notices(store) == [("Strava", "01"), ("Strava", "02")]
    assert store.write_consents(consents) == (0, 2)  # re-delivered: nothing doubled
    assert store.write_consents(consents[1:] * 2) == (0, 2)  # twice in one batch: once
    assert notices(store) == [("Strava", "01"), ("Strava", "02")]
    _, rows = store.query(qualify("SELECT action, notice_version FROM consent_events ORDER BY occurred_at",
                                  store.table))
    assert rows == [("granted", "2025-11"), ("withdrawn", None)]
    store.write(batches[2])
    assert verify_store(store).ok  # the new tables are outside the chain and do not disturb it


def test_consent_withdrawals_report_is_complete(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    batches = flow_batches(policy)
    store.write(batches[1])
    store.write_consents(consent_records(policy))
    store.write(batches[2])  # RunTracker's flow happened before the withdrawal, written after it
    rows = run_report(store, "consent-withdrawals")
    got = {(r["kind"], r["recipient"], r["decision"]): (r["flows"], r["stored_notices"]) for r in rows}
    assert got == {
        ("notify", "Strava", "allowed"): (2, 2),
        ("notify", "RunTracker", "allowed"): (1, 0),  # not in the stored notice: the report has it
        ("after-withdrawal", "Strava", "blocked"): (1, 0),
    }
    assert {r["consent_id"] for r in rows} == {"c-a1"} and {r["user_id"] for r in rows} == {"alice"}
    assert run_report(store, "consent-withdrawals", user="alice") == rows
    assert run_report(store, "consent-withdrawals", user="bob") == []
    assert run_report(store, "consent-withdrawals", until="2025-11-04T00:00:00Z") == []  # exclusive


def _exposure(store: AuditStore, recipient: str) -> list[dict[str, Any]]:
    return run_report(store, "subject-exposure", recipient=recipient)


def test_subject_exposure_and_user_disclosures_count_bulk_transfers(
    store_factory: Any, policy: Policy
) -> None:
    store = store_factory()
    batches = flow_batches(policy)
    store.write(batches[1])
    store.write(batches[2])
    rows = _exposure(store, " mailCHIMP ")
    assert [(r["kind"], r["decision"]) for r in rows] == [
        ("subjects", "allowed"),
        ("unattributed", "allowed"),
    ]
    summary, unattributed = rows
    # bob is both a user_id and in two transfers' subjects: one subject
    assert (summary["data_subjects"], summary["via_user_id"], summary["via_subjects"]) == (5, 2, 4)
    assert (summary["events"], summary["records"]) == (5, 86)
    assert (str(unattributed["transfer_event_id"])[-2:], unattributed["records"]) == ("13", 50)
    assert _exposure(store, "Mailchimp") == rows
    assert [r["data_subjects"] for r in _exposure(store, "bso")] == [2]

    def disclosed(user: str) -> Counter[tuple[str, str, str]]:
        found: Counter[tuple[str, str, str]] = Counter()
        for row in run_report(store, "user-disclosures", user=user):
            found[(row["via"], row["recipient"], row["decision"])] += row["events"]
        return found

    assert disclosed("alice") == Counter({
        ("user_id", "Strava", "allowed"): 2,
        ("user_id", "Strava", "blocked"): 1,
        ("user_id", "RunTracker", "allowed"): 1,
        ("user_id", "HealthVault", "blocked"): 1,
        ("subjects", "Mailchimp", "allowed"): 1,
        ("subjects", "BSO", "allowed"): 1,
        ("unattributed", "Mailchimp", "allowed"): 1,
    })
    assert disclosed("bob") == Counter({
        ("user_id", "Mailchimp", "allowed"): 1,
        ("subjects", "Mailchimp", "allowed"): 2,
        ("unattributed", "Mailchimp", "allowed"): 1,
    })
    # a bulk transfer found through the per-subject index names its safeguard, from its audit row
    mailchimp = next(s for s in policy.subcontractor_list if s.name == "Mailchimp")
    assert mailchimp.transfer_mechanism
    mechanisms = {
        (row["via"], row["recipient"]): row["transfer_mechanism"]
        for row in run_report(store, "user-disclosures", user="alice")
    }
    assert mechanisms[("subjects", "Mailchimp")] == mailchimp.transfer_mechanism
    assert mechanisms[("subjects", "BSO")] == "(within EEA)"
    last = run_report(store, "user-disclosures", user="bob")[-1]
    assert last["via"] == "unattributed"  # the summary comes last
    early = run_report(store, "user-disclosures", user="bob", until="2025-11-07")
    assert {r["via"] for r in early} == {"subjects"}  # no unattributed transfer before 7 Nov


def test_an_older_store_gets_its_index_backfilled_once(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    store.client.command(f"DROP VIEW {qualify(SUBJECTS_VIEW, store.table)}")  # a store before the index
    store.client.command(f"TRUNCATE TABLE {qualify('audit_subjects', store.table)}")
    batches = flow_batches(policy)
    store.write(batches[1] + batches[2])
    index = qualify("audit_subjects", store.table)
    assert store.query(f"SELECT count() FROM {index}")[1] == [(0,)]
    store_factory()  # the next start-up copies the rows the view did not see
    # 3 + 2 + 2 subjects of the three transfers that name them
    assert store.query(f"SELECT count() FROM {index}")[1] == [(7,)]
    store_factory()
    assert store.query(f"SELECT count() FROM {index}")[1] == [(7,)]


def test_the_sink_orders_consents_after_flows_and_retries(store_factory: Any, policy: Policy) -> None:
    store = store_factory()
    batches = flow_batches(policy)
    consents = consent_records(policy)
    sink = ClickHouseSink(store, max_backoff=0.01)
    failing = [1]
    insert = store.insert_consents

    def flaky(batch: Any) -> None:
        if failing[0]:
            failing[0] -= 1
            raise StoreError("down")
        insert(batch)

    store.insert_consents = flaky  # type: ignore[method-assign]

    async def main() -> tuple[Any, ...]:
        # handed over together: the consents' notices must see the flows handed over before them
        return tuple(await asyncio.gather(sink.write(batches[1]), sink.write_consents(consents)))

    try:
        flows, written = asyncio.run(main())
    finally:
        sink.executor.shutdown(wait=True)
    assert flows == (len(batches[1]), 0) and written == (2, 0) and failing == [0]
    assert notices(store) == [("Strava", "01"), ("Strava", "02")]


def test_the_withdrawals_of_one_batch_are_notified_in_one_statement_each_with_its_own_flows(
    store_factory: Any, policy: Policy
) -> None:
    """Several withdrawals in a batch: each gets the flows of its own user and consent, before it."""
    store = store_factory()
    store.write(flow_batches(policy)[1])
    grant, withdrawal = consent_records(policy)
    others = [
        # alice's consent id withdrawn by bob (not his): none of alice's flows are his
        withdrawal._replace(event=dataclasses.replace(withdrawal.event, user_id="bob",
                                                      event_id="c0000000-0000-4000-8000-0000000000c3")),
        # alice's withdrawal of the same consent, dated before her flows: none relied on it then
        withdrawal._replace(event=dataclasses.replace(withdrawal.event, occurred_at_ms=0,
                                                      event_id="c0000000-0000-4000-8000-0000000000c4")),
    ]
    assert store.write_consents([grant, *others, withdrawal]) == (4, 0)
    _, rows = store.query(
        qualify(
            "SELECT toString(withdrawal_event_id), toString(flow_event_id) "
            "FROM consent_withdrawal_notices ORDER BY 1, 2",
            store.table,
        )
    )
    assert [(w[-2:], f[-2:]) for w, f in rows] == [("c2", "01"), ("c2", "02")]


def test_consent_requests_queued_together_share_one_lookup_insert_and_notices_statement(
    store_factory: Any, policy: Policy
) -> None:
    """Handed over while the store is busy: consent batches are written together, after the flow
    batches queued with them; each caller still gets its own counts (a repeat across them counts
    as present for the later one)."""
    store = store_factory()
    batches = flow_batches(policy)
    grant, withdrawal = consent_records(policy)
    sink = ClickHouseSink(store, max_backoff=0.01)
    calls: Counter[str] = Counter()
    for name in ("prepare_consent_requests", "insert_consents", "record_withdrawal_notices", "insert"):
        original = getattr(store, name)

        def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
            calls[_name] += 1
            return _original(*args)

        setattr(store, name, counted)

    async def main() -> tuple[Any, ...]:
        return tuple(
            await asyncio.gather(
                sink.write_consents([grant]),
                sink.write(batches[1]),
                sink.write_consents([withdrawal, grant]),  # the grant again: present
            )
        )

    try:
        first, flows, second = asyncio.run(main())
    finally:
        sink.executor.shutdown(wait=True)
    assert first == (1, 0) and second == (1, 1) and flows == (len(batches[1]), 0)
    assert calls == {
        "prepare_consent_requests": 1, "insert_consents": 1, "record_withdrawal_notices": 1, "insert": 1
    }
    # the withdrawal's notices see the flows queued after the grant's batch, written before them
    assert notices(store) == [("Strava", "01"), ("Strava", "02")]
