"""The assembly of the Art. 30 record (domain/ropa.py), pure: hand-made observed rows, no store."""

from __future__ import annotations

from typing import Any

from flowaudit.domain.policy import Policy
from flowaudit.domain.ropa import (
    DECLARED_NEVER_FLOWED,
    FLOWED_NOT_DECLARED,
    NO_CONTROLLER,
    ObservedFlow,
    Record,
    assemble,
    declared_subcontractors,
    observed_flow,
)

ROW: dict[str, Any] = {
    "user_country": "FR",
    "purpose": "customer_support",
    "event_type": "subcontractor_transfer",
    "recipient_type": "subcontractor",
    "recipient": "Zendesk",
    "destination_country": "IE",
    "outside_protected_zone": False,
    "transfer_mechanism": None,
    "categories": ["identity"],
    "events": 3,
    "blocked": 1,
    "first_seen": "2025-11-02T00:00:00.000Z",
    "last_seen": "2025-11-05T00:00:00.000Z",
}


def flow(**changes: Any) -> ObservedFlow:
    return observed_flow(ROW | changes)


def drift_of(record: Record, direction: str = FLOWED_NOT_DECLARED) -> list[tuple[str, str, str, str]]:
    return [(d.controller, d.kind, d.purpose, d.subject) for d in record.drift if d.direction == direction]


def test_a_plain_record_reads_into_a_flow() -> None:
    got = flow(categories=["technical", "identity"], recipient="", user_country="")
    assert got.categories == ("identity", "technical") and got.recipient is None and got.user_country is None
    assert (got.events, got.blocked, got.allowed) == (3, 1, 2)


def test_flows_go_to_the_controller_serving_the_subjects_country(policy: Policy) -> None:
    record = assemble(
        policy,
        [flow(), flow(user_country="US"), flow(user_country="GB"), flow(user_country=None)],
        "s",
        "u",
        "now",
    )
    sa, inc = record.controllers
    assert next(e for e in sa.entries if e.purpose == "customer_support").observed.events == 3
    assert next(e for e in inc.entries if e.purpose == "customer_support").observed.events == 3
    assert [(g.user_country, g.tally.events) for g in record.unassigned] == [(None, 3), ("GB", 3)]
    assert (NO_CONTROLLER, "no-controller", "customer_support", "GB") in drift_of(record)
    assert (NO_CONTROLLER, "no-controller", "customer_support", "(not recorded)") in drift_of(record)


def test_tallies_sum_events_and_keep_the_first_and_last_seen(policy: Policy) -> None:
    rows = [flow(), flow(events=2, blocked=0, first_seen="2025-10-01T00:00:00.000Z")]
    rows.append(flow(last_seen="2025-12-01T00:00:00.000Z", categories=["activity"]))
    entry = next(
        e
        for e in assemble(policy, rows, "s", "u", "now").controllers[0].entries
        if e.purpose == "customer_support"
    )
    assert (entry.observed.events, entry.observed.blocked) == (8, 2)
    assert (entry.observed.first_seen, entry.observed.last_seen) == (
        "2025-10-01T00:00:00.000Z",
        "2025-12-01T00:00:00.000Z",
    )
    assert entry.observed_categories == ("activity", "identity")
    assert entry.observed_recipients == ("Zendesk (CRM): 8 events, 2 blocked",)


def test_a_mechanism_not_recorded_is_no_drift_and_a_sharing_may_rest_on_consent(policy: Policy) -> None:
    old_row = flow(
        purpose="marketing",
        recipient="Mailchimp",
        destination_country="US",
        outside_protected_zone=True,
        transfer_mechanism=None,  # written before row format 2
    )
    sharing = flow(
        purpose="third_party_sharing",
        event_type="sharing",
        recipient_type="third_party_app",
        recipient="Strava",
        destination_country="US",
        outside_protected_zone=True,
        transfer_mechanism="consent_derogation",
        categories=["activity"],
    )
    adequacy = flow(destination_country="JP", outside_protected_zone=True, transfer_mechanism="adequacy")
    record = assemble(policy, [old_row, sharing, adequacy], "s", "u", "now")
    assert drift_of(record) == [("Withings SA", "undeclared-destination", "customer_support", "JP (Zendesk)")]


def test_the_same_sharing_under_another_purpose_is_an_undeclared_recipient(policy: Policy) -> None:
    record = assemble(
        policy,
        [
            flow(
                purpose="ecg_review",
                event_type="sharing",
                recipient_type="third_party_app",
                recipient="Strava",
            )
        ],
        "s",
        "u",
        "now",
    )
    assert drift_of(record) == [
        ("Withings SA", "undeclared-recipient", "ecg_review", "Strava (third_party_app)")
    ]


def test_declared_never_flowed_counts_allowed_events_only(policy: Policy) -> None:
    blocked_only = flow(blocked=3)
    record = assemble(policy, [blocked_only], "s", "u", "now")
    never = drift_of(record, DECLARED_NEVER_FLOWED)
    assert ("Withings SA", "purpose-never-flowed", "customer_support", "customer_support") in never
    allowed = assemble(policy, [flow()], "s", "u", "now")
    never = drift_of(allowed, DECLARED_NEVER_FLOWED)
    assert ("Withings SA", "purpose-never-flowed", "customer_support", "customer_support") not in never
    assert ("Withings SA", "recipient-never-received", "customer_support", "CPM (Customer Support)") in never
    assert ("Withings SA", "category-never-carried", "customer_support", "health") in never


def test_purposes_that_declare_every_category_list_none_never_carried(policy: Policy) -> None:
    backup = flow(purpose="backup", recipient="GCS", destination_country="BE", categories=["health"])
    never = drift_of(assemble(policy, [backup], "s", "u", "now"), DECLARED_NEVER_FLOWED)
    assert not [line for line in never if line[:3:2] == ("Withings SA", "backup")]  # GCS received it, `all`


def test_service_areas_choose_the_recipients_of_each_controller(policy: Policy) -> None:
    sa, inc = policy.controllers
    names = {sub.name for sub in declared_subcontractors(policy, sa, "logistics")}
    assert "Dimotrans" in names and "Logistech" not in names
    names = {sub.name for sub in declared_subcontractors(policy, inc, "logistics")}
    assert "Logistech" in names and "Dimotrans" not in names
    assert "Withings" in names  # the controller's own entry serves every purpose


def test_drift_with_allowed_events_comes_before_the_attempts_the_gate_stopped(policy: Policy) -> None:
    stopped = flow(categories=["identity", "activity"], events=2, blocked=2)  # activity: undeclared
    allowed = flow(categories=["identity", "location"], events=2, blocked=0)  # location: undeclared
    record = assemble(policy, [stopped, allowed], "s", "u", "now")
    ours = [d for d in record.drift if d.controller == "Withings SA" and d.direction == FLOWED_NOT_DECLARED]
    assert [(d.subject, d.tally.blocked) for d in ours] == [("location", 0), ("activity", 2)]
