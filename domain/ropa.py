"""The Art. 30(1) record of processing, assembled from the policy and the audit store: pure.

`assemble(policy, flows, period)` takes the loaded `Policy` and the rows of the report `ropa-flows`
(`schemas/reports/ropa-flows.sql`) as `ObservedFlow`s (`observed_flow` reads one from the plain record
the store's rows become through `sinks.reports.as_records`, or a worker's web API returns), and gives
a `Record`: one `ControllerRecord` per controller of `policy/controllers.yaml`, each with one
`PurposeEntry` per purpose of the register (declared columns, then what was observed), the flows no
controller serves, and the drift between the two. Nothing here reads a file, the clock or a setting.

**Whose record a flow is in.** The controller whose `serves` holds the flow's `user_country` (zones.yaml's
members, undated: a 2020 flow of a GB resident is no controller's). A flow whose user country no
controller serves, or that names none (a bulk transfer without a subject), is `unassigned`: shown in
`Record.unassigned` and as drift `no-controller`, never dropped.

**Declared**, per controller and purpose: the purpose's legal basis, Art. 9(2) condition, categories,
retention and source (register.yaml); the categories of data subjects and of recipients that name the
purpose and the controller (controllers.yaml); its recipients: the registered subcontractors serving the
purpose (the controller serves every purpose) whose service area, if any, meets the countries the
controller serves; its transfers outside the protected zone: those of them storing outside it, with
their mechanism.

**Drift (a), flowed but not declared**: every observed combination of a controller's record, allowed or
blocked (an attempt counts; its blocked events are shown), checked in turn:
- `undeclared-purpose`: the purpose is not in the register (nothing else is checked for it);
- `undeclared-category`: a category carried that the purpose does not declare (`unclassified` too);
- `undeclared-recipient`: a transfer to a recipient that is not a registered subcontractor serving the
  purpose (an unregistered name included), or a sharing whose recipient type no recipient category of
  the purpose covers; a device sync goes to the controller's own platform and is always declared;
- `undeclared-destination`: a transfer or device sync to a country where its registered recipient (for
  a device sync the registry's controller entry) does not store;
- `transfer-without-mechanism`: outside the protected zone with mechanism `none`;
  `undeclared-mechanism`: outside with a mechanism the declarations do not give (they give `adequacy`,
  the subcontractor's own mechanism, and `consent_derogation` for a sharing). A null mechanism outside
  the zone (rows written before row format 2) means "not recorded" and is no drift.
Each drift line sums the events of the combinations it covers.

**Drift (b), declared but never flowed** in the period, per controller, counting allowed events only
(a blocked event did not flow):
- `purpose-never-flowed`: a purpose of the register with no allowed event;
- for a purpose that flowed: `recipient-never-received`, a declared subcontractor (not the controller)
  or a recipient category with sharing recipient types that received no allowed event of the purpose;
  `category-never-carried`, a declared category no allowed event of the purpose carried (not listed
  for purposes that declare every category: hosting and backup).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowaudit.domain.policy.model import Controller, Policy, Purpose, Subcontractor

PLATFORM = "platform"  # counterparty_type of a device sync (the controller's own platform)
SUBCONTRACTOR = "subcontractor"  # counterparty_type of a subcontractor transfer
NO_MECHANISM = "none"
ADEQUACY = "adequacy"
CONSENT_DEROGATION = "consent_derogation"

FLOWED_NOT_DECLARED = "flowed, not declared"
DECLARED_NEVER_FLOWED = "declared, never flowed"


@dataclass(frozen=True, slots=True)
class ObservedFlow:
    """One row of the report `ropa-flows`: a combination seen in the store, with its counts."""

    user_country: str | None
    purpose: str
    event_type: str
    recipient_type: str
    recipient: str | None  # canonical name (or as sent, before row format 2); None for a device sync
    destination_country: str
    outside_protected_zone: bool
    transfer_mechanism: str | None
    categories: tuple[str, ...]
    events: int
    blocked: int
    first_seen: str  # ISO-8601, UTC
    last_seen: str

    @property
    def allowed(self) -> int:
        return self.events - self.blocked


def observed_flow(record: Mapping[str, Any]) -> ObservedFlow:
    """An `ObservedFlow` from a plain record of `ropa-flows` (JSON values). Raises KeyError, ValueError
    or TypeError on a record of another shape."""
    return ObservedFlow(
        user_country=record["user_country"] or None,
        purpose=str(record["purpose"]),
        event_type=str(record["event_type"]),
        recipient_type=str(record["recipient_type"]),
        recipient=record["recipient"] or None,
        destination_country=str(record["destination_country"]),
        outside_protected_zone=bool(record["outside_protected_zone"]),
        transfer_mechanism=record["transfer_mechanism"],
        categories=tuple(sorted(str(c) for c in record["categories"])),
        events=int(record["events"]),
        blocked=int(record["blocked"]),
        first_seen=str(record["first_seen"]),
        last_seen=str(record["last_seen"]),
    )


@dataclass
class Tally:
    """Events of some combinations together: counts and the first and last time seen."""

    events: int = 0
    blocked: int = 0
    first_seen: str | None = None
    last_seen: str | None = None

    def add(self, flow: ObservedFlow) -> None:
        self.events += flow.events
        self.blocked += flow.blocked
        if self.first_seen is None or flow.first_seen < self.first_seen:
            self.first_seen = flow.first_seen
        if self.last_seen is None or flow.last_seen > self.last_seen:
            self.last_seen = flow.last_seen


@dataclass(frozen=True, slots=True)
class PurposeEntry:
    """One line of a controller's record: the register's purpose (declared) and what flowed."""

    purpose: str
    description: str
    legal_basis: str
    special_category_condition: str | None
    data_categories: tuple[str, ...]
    data_subjects: tuple[str, ...]
    recipients: tuple[str, ...]  # "Name (service)" of each subcontractor, then recipient categories
    transfers: tuple[str, ...]  # "Name: countries (mechanism)" of each recipient storing outside
    retention: str
    source: str
    observed: Tally
    observed_categories: tuple[str, ...]
    observed_recipients: tuple[str, ...]  # "Name (service or recipient type): N events[, M blocked]"
    observed_transfers: tuple[str, ...]  # "country via mechanism: N events[, M blocked]"


@dataclass(frozen=True, slots=True)
class ControllerRecord:
    controller: Controller
    entries: tuple[PurposeEntry, ...]  # the register's purposes, then purposes seen but not declared
    general_recipients: tuple[str, ...]  # recipient categories tied to no purpose


@dataclass(frozen=True, slots=True)
class UnassignedGroup:
    """Flows whose user country no controller serves (or that name none), per country and purpose."""

    user_country: str | None
    purpose: str
    tally: Tally


@dataclass(frozen=True, slots=True)
class Drift:
    controller: str  # the controller's name, or "(no controller)"
    direction: str  # FLOWED_NOT_DECLARED or DECLARED_NEVER_FLOWED
    kind: str
    purpose: str
    subject: str  # what is not declared or never flowed: a category, recipient, country, mechanism
    tally: Tally


@dataclass(frozen=True, slots=True)
class Record:
    since: str
    until: str
    protected_zone: str  # the zone id whose outside is a transfer (zones.yaml)
    policy_version: str
    generated_at: str
    controllers: tuple[ControllerRecord, ...]
    unassigned: tuple[UnassignedGroup, ...]
    drift: tuple[Drift, ...]


NO_CONTROLLER = "(no controller)"


@dataclass
class _Drifts:
    """Drift lines being summed, keyed by everything but the tally."""

    lines: dict[tuple[str, str, str, str, str], Tally] = field(default_factory=dict)

    def add(
        self,
        controller: str,
        direction: str,
        kind: str,
        purpose: str,
        subject: str,
        flow: ObservedFlow | None,
    ) -> None:
        tally = self.lines.setdefault((controller, direction, kind, purpose, subject), Tally())
        if flow is not None:
            tally.add(flow)

    def sorted(self) -> tuple[Drift, ...]:
        """By controller and direction, the lines with allowed events first (a blocked attempt is a
        drift the gate already stopped), then by kind, purpose and subject."""

        def order(line: tuple[tuple[str, str, str, str, str], Tally]) -> tuple[object, ...]:
            (controller, direction, kind, purpose, subject), tally = line
            only_blocked = tally.events > 0 and tally.events == tally.blocked
            return (controller, direction, only_blocked, kind, purpose, subject)

        return tuple(Drift(*key, tally) for key, tally in sorted(self.lines.items(), key=order))


def assemble(
    policy: Policy, flows: Iterable[ObservedFlow], since: str, until: str, generated_at: str
) -> Record:
    """The record of `policy`'s controllers over the observed `flows` of the period (see the module)."""
    by_controller: dict[str, list[ObservedFlow]] = {c.id: [] for c in policy.controllers}
    unassigned: dict[tuple[str | None, str], Tally] = {}
    drifts = _Drifts()
    for flow in flows:
        controller = policy.controller_for(flow.user_country)
        if controller is None:
            unassigned.setdefault((flow.user_country, flow.purpose), Tally()).add(flow)
            country = flow.user_country or "(not recorded)"
            drifts.add(NO_CONTROLLER, FLOWED_NOT_DECLARED, "no-controller", flow.purpose, country, flow)
        else:
            by_controller[controller.id].append(flow)
    records = []
    for controller in policy.controllers:
        seen = by_controller[controller.id]
        for flow in seen:
            _flowed_not_declared(policy, controller, flow, drifts)
        _declared_never_flowed(policy, controller, seen, drifts)
        general = tuple(
            c.description
            for c in policy.recipient_categories
            if c.for_controller(controller.id) and not c.purposes
        )
        records.append(ControllerRecord(controller, _entries(policy, controller, seen), general))
    groups = tuple(
        UnassignedGroup(country, purpose, tally)
        for (country, purpose), tally in sorted(unassigned.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
    )
    return Record(
        since,
        until,
        policy.protected_zone,
        policy.version,
        generated_at,
        tuple(records),
        groups,
        drifts.sorted(),
    )


# --- what is declared ---------------------------------------------------------------------------------


def declared_subcontractors(policy: Policy, controller: Controller, purpose: str) -> list[Subcontractor]:
    """The registered recipients of a purpose in a controller's record: the subcontractors serving it
    (the controller's own entry serves every purpose) whose service area, if any, meets the countries
    the controller serves."""
    return [
        sub
        for sub in policy.subcontractor_list
        if (sub.serves_any or purpose in sub.purposes)
        and (sub.service_area is None or sub.service_area & controller.serves)
    ]


def _sharing_types(policy: Policy, controller: Controller, purpose: str) -> dict[str, str]:
    """recipient type -> the recipient category that covers it for this purpose and controller."""
    covered: dict[str, str] = {}
    for category in policy.recipient_categories:
        if category.for_controller(controller.id) and purpose in category.purposes:
            for kind in sorted(category.recipient_types):
                covered.setdefault(kind, category.id)
    return covered


def _outside(sub: Subcontractor, policy: Policy) -> bool:
    return not sub.storage_countries <= policy.protected_countries


def _declared_columns(policy: Policy, controller: Controller, purpose: Purpose) -> dict[str, Any]:
    subs = declared_subcontractors(policy, controller, purpose.id)
    categories = [
        c.description
        for c in policy.recipient_categories
        if c.for_controller(controller.id) and purpose.id in c.purposes
    ]
    return {
        "purpose": purpose.id,
        "description": purpose.description,
        "legal_basis": purpose.legal_basis,
        "special_category_condition": purpose.special_category_condition,
        "data_categories": tuple(sorted(purpose.data_categories)),
        "data_subjects": tuple(
            s.description for s in policy.subject_categories if s.concerns(controller.id, purpose.id)
        ),
        # the controller's own entry (its platform) is no recipient (Art. 4(9)); it is declared all the same
        "recipients": tuple(f"{sub.name} ({sub.service})" for sub in subs if not sub.controller)
        + tuple(categories),
        "transfers": tuple(
            f"{sub.name}: {sub.storage_label} ({sub.transfer_mechanism or NO_MECHANISM})"
            for sub in subs
            if _outside(sub, policy)
        ),
        "retention": purpose.retention,
        "source": purpose.source,
    }


_UNDECLARED_PURPOSE: dict[str, Any] = {
    "description": "(not in the register)",
    "legal_basis": "",
    "special_category_condition": None,
    "data_categories": (),
    "data_subjects": (),
    "recipients": (),
    "transfers": (),
    "retention": "",
    "source": "",
}


# --- what was observed --------------------------------------------------------------------------------


def _recipient_label(policy: Policy, flow: ObservedFlow) -> str:
    if flow.recipient_type == PLATFORM or flow.recipient is None:
        return "(platform: device sync)"
    if flow.recipient_type == SUBCONTRACTOR:
        sub = policy.find_subcontractor(flow.recipient)
        return f"{sub.name} ({sub.service})" if sub else f"{flow.recipient} (not registered)"
    return f"{flow.recipient} ({flow.recipient_type})"


def _counted(tallies: Mapping[str, Tally]) -> tuple[str, ...]:
    """ "label: N events[, M blocked]", most events first."""
    ordered = sorted(tallies.items(), key=lambda kv: (-kv[1].events, kv[0]))
    return tuple(
        f"{label}: {t.events} {'event' if t.events == 1 else 'events'}"
        + (f", {t.blocked} blocked" if t.blocked else "")
        for label, t in ordered
    )


def _observed_columns(policy: Policy, flows: list[ObservedFlow]) -> dict[str, Any]:
    total = Tally()
    recipients: dict[str, Tally] = {}
    transfers: dict[str, Tally] = {}
    categories: set[str] = set()
    for flow in flows:
        total.add(flow)
        categories.update(flow.categories)
        recipients.setdefault(_recipient_label(policy, flow), Tally()).add(flow)
        if flow.outside_protected_zone:
            mechanism = flow.transfer_mechanism or "(not recorded)"
            transfers.setdefault(f"{flow.destination_country} via {mechanism}", Tally()).add(flow)
    return {
        "observed": total,
        "observed_categories": tuple(sorted(categories)),
        "observed_recipients": _counted(recipients),
        "observed_transfers": _counted(transfers),
    }


def _entries(policy: Policy, controller: Controller, flows: list[ObservedFlow]) -> tuple[PurposeEntry, ...]:
    by_purpose: dict[str, list[ObservedFlow]] = {}
    for flow in flows:
        by_purpose.setdefault(flow.purpose, []).append(flow)
    entries = [
        PurposeEntry(
            **_declared_columns(policy, controller, purpose),
            **_observed_columns(policy, by_purpose.get(purpose.id, [])),
        )
        for purpose in policy.purposes.values()
    ]
    for purpose_id in sorted(set(by_purpose) - set(policy.purposes)):
        entries.append(
            PurposeEntry(
                purpose=purpose_id,
                **_UNDECLARED_PURPOSE,
                **_observed_columns(policy, by_purpose[purpose_id]),
            )
        )
    return tuple(entries)


# --- drift --------------------------------------------------------------------------------------------


def _flowed_not_declared(policy: Policy, controller: Controller, flow: ObservedFlow, drifts: _Drifts) -> None:
    """Add the drift (a) lines of one observed combination of a controller's record."""
    name = controller.name

    def drift(kind: str, subject: str) -> None:
        drifts.add(name, FLOWED_NOT_DECLARED, kind, flow.purpose, subject, flow)

    purpose = policy.purposes.get(flow.purpose)
    if purpose is None:
        drift("undeclared-purpose", flow.purpose)
        return
    for category in flow.categories:
        if category not in purpose.data_categories:
            drift("undeclared-category", category)
    registered: Subcontractor | None = None
    if flow.recipient_type == PLATFORM:
        registered = next((sub for sub in policy.subcontractor_list if sub.controller), None)
    elif flow.recipient_type == SUBCONTRACTOR:
        found = policy.find_subcontractor(flow.recipient or "")
        if found is not None and found in declared_subcontractors(policy, controller, purpose.id):
            registered = found
        else:
            drift("undeclared-recipient", _recipient_label(policy, flow))
    elif flow.recipient_type not in _sharing_types(policy, controller, purpose.id):
        drift("undeclared-recipient", _recipient_label(policy, flow))
    if registered is not None and flow.destination_country not in registered.storage_countries:
        drift("undeclared-destination", f"{flow.destination_country} ({registered.name})")
    if flow.outside_protected_zone and flow.transfer_mechanism is not None:
        mechanism = flow.transfer_mechanism
        declared = {ADEQUACY}
        if registered is not None and registered.transfer_mechanism:
            declared.add(registered.transfer_mechanism)
        if flow.recipient_type not in (PLATFORM, SUBCONTRACTOR):
            declared.add(CONSENT_DEROGATION)
        subject = f"{flow.destination_country} via {mechanism}"
        if mechanism == NO_MECHANISM:
            drift("transfer-without-mechanism", subject)
        elif mechanism not in declared:
            drift("undeclared-mechanism", subject)


def _declared_never_flowed(
    policy: Policy, controller: Controller, flows: list[ObservedFlow], drifts: _Drifts
) -> None:
    """Add the drift (b) lines of a controller: what its record declares that no allowed event did."""
    allowed = [flow for flow in flows if flow.allowed > 0]
    for purpose in policy.purposes.values():
        mine = [flow for flow in allowed if flow.purpose == purpose.id]

        def never(kind: str, subject: str, purpose_id: str = purpose.id) -> None:
            drifts.add(controller.name, DECLARED_NEVER_FLOWED, kind, purpose_id, subject, None)

        if not mine:
            never("purpose-never-flowed", purpose.id)
            continue
        received = {
            found.name
            for flow in mine
            if flow.recipient_type == SUBCONTRACTOR
            and (found := policy.find_subcontractor(flow.recipient or "")) is not None
        }
        for sub in declared_subcontractors(policy, controller, purpose.id):
            if not sub.controller and sub.name not in received:
                never("recipient-never-received", f"{sub.name} ({sub.service})")
        shared = {flow.recipient_type for flow in mine}
        for category in policy.recipient_categories:
            if (
                category.for_controller(controller.id)
                and purpose.id in category.purposes
                and category.recipient_types
                and not category.recipient_types & shared
            ):
                never("recipient-never-received", category.description)
        if purpose.data_categories != frozenset(policy.categories):
            carried = {c for flow in mine for c in flow.categories}
            for name in sorted(purpose.data_categories - carried):
                never("category-never-carried", name)
