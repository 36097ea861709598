"""`flowaudit replay`: re-decide the stored history under another policy and list what changes.

Contract:
- Reads only. The store is opened by the caller as a reader (`AuditStore.connect(writer=False)`);
  this module runs SELECTs and nothing else, so it never writes to the audit store.
- Consents first: the store's `consent_events` are read once, in the order the worker applied them
  (ingestion, then source partition and offset), into the worker's own ledger (`domain.ledger.
  StreamLedger`, the same bound of periods per consent); each flow's cited consent is then judged as of
  its `occurred_at`, as the worker and `flowaudit evaluate` judge it. This ledger is in memory: a few
  hundred bytes per consent id (README, "The consent ledger in the stream").
- Then the audit rows stream in primary-key order (`user_id, occurred_at, event_id`), block by block
  (`AuditStore.stream`; chDB streams too): memory does not grow with the rows, only with the changes
  found (each is kept for the listing). Each row is rebuilt into its event (`sinks.stored_events`),
  decided under the what-if policy and under its own policy, and the two are compared on (decision,
  rules, transfer mechanism). A row where they differ is a change, the policy's doing: old = what its
  own policy decides (what was stored, when the row is reproduced), new = what the what-if policy
  decides. A row whose own policy is not loaded is compared with what was stored.
- Exactness, counted and never hidden. Each row is also replayed under its own policy when it is one
  of the two loaded (the baseline, `FLOWAUDIT_POLICY_DIR`, or the what-if one) and compared with what
  was stored: a row that does not come out the same is "not reproduced" (counted and listed apart,
  with what was stored and what its policy gives now: the policy is not what changed it), and each
  change says whether its row was reproduced. The reasons a row may not be
  reproducible are counted: decided under another policy version (not checked); row format 1 (written
  before contract v2: no subjects, no transfer mechanism recorded, so compared on decision and rules
  only); a cited consent with an event the store recorded after the flow was decided (the worker's
  ledger may not have held it yet: topics are read concurrently).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flowaudit.domain.consent import ConsentEvent
from flowaudit.domain.decision import Decider, Decision
from flowaudit.domain.events import format_millis
from flowaudit.domain.ledger import StreamLedger
from flowaudit.domain.policy import Policy
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.startup import table_exists
from flowaudit.sinks.stored_events import EVENT_COLUMNS, event_from_stored, select_list

READ_COLUMNS: tuple[str, ...] = (
    *EVENT_COLUMNS,
    "decision",
    "rules",
    "transfer_mechanism",
    "policy_version",
    "row_format",
    "counterparty_name",
    "decided_at",
)
CHANGE_COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "event_type",
    "user_id",
    "recipient",
    "destination_country",
    "old_decision",
    "new_decision",
    "old_mechanism",
    "new_mechanism",
    "rules_added",
    "rules_removed",
    "subjects",
    "reproduced",
)
UNREPRODUCED_COLUMNS = (
    "event_id",
    "occurred_at",
    "event_type",
    "user_id",
    "stored_decision",
    "replayed_decision",
    "stored_rules",
    "replayed_rules",
    "consent_recorded_after_decision",
)
SUBJECT_COLUMNS = ("subject", "via", "changed", "allowed_to_blocked", "blocked_to_allowed")
RECIPIENT_COLUMNS = ("recipient", "changed", "allowed_to_blocked", "blocked_to_allowed", "subjects")
NOT_RECORDED = "(not recorded)"  # the transfer mechanism of a row of format 1
_CONSENT_SQL = (
    "SELECT toString(event_id), toUnixTimestamp64Milli(occurred_at), user_id, consent_id, purpose, "
    "toString(action), notice_version, toUnixTimestamp64Milli(ingested_at) FROM consent_events "
    "ORDER BY ingested_at, source_topic, source_partition, source_offset"
)


class StoreConsents:
    """The store's consents as the worker's ledger, and when each consent event was recorded."""

    def __init__(self) -> None:
        self.ledger = StreamLedger()
        self.events = 0
        self.table = True  # whether the store has a consent table at all
        # consent id -> (occurred_at, ingested_at) of each of its events, by occurred_at
        self._recorded: dict[str, list[tuple[int, int]]] = {}

    def apply(self, event: ConsentEvent, ingested_at_ms: int) -> None:
        self.ledger.apply(event)
        self.events += 1
        bisect.insort(self._recorded.setdefault(event.consent_id, []), (event.occurred_at_ms, ingested_at_ms))

    def recorded_after(self, consent_id: str, occurred_at_ms: int, decided_at_ms: int) -> bool:
        """Whether an event of `consent_id` that bears on a flow at `occurred_at_ms` (it happened at
        or before it) was recorded after the flow was decided: the worker may not have known it."""
        times = self._recorded.get(consent_id, ())
        return any(happened <= occurred_at_ms and recorded > decided_at_ms for happened, recorded in times)


def load_consents(store: AuditStore) -> StoreConsents:
    """Every consent event of the store, applied in the order the worker applied them."""
    consents = StoreConsents()
    table = qualify("consent_events", store.table)
    if not table_exists(store.client, table):
        consents.table = False
        return consents
    for row in store.stream(qualify(_CONSENT_SQL, store.table)):
        event_id, occurred, user, consent_id, purpose, action, notice, ingested = row.values()
        event = ConsentEvent(event_id, occurred, user, consent_id, purpose, action, notice)
        consents.apply(event, ingested)
    return consents


@dataclass
class _Affected:
    changed: int = 0
    allowed_to_blocked: int = 0
    blocked_to_allowed: int = 0
    subjects: set[str] = field(default_factory=set)

    def add(self, direction: str) -> None:
        self.changed += 1
        if direction == "allowed_to_blocked":
            self.allowed_to_blocked += 1
        elif direction == "blocked_to_allowed":
            self.blocked_to_allowed += 1


@dataclass
class ReplayResult:
    """What a replay found. `changes` rows are in CHANGE_COLUMNS order."""

    policy_dir: str
    policy_version: str
    baseline_version: str
    rows: int = 0
    directions: Counter[str] = field(default_factory=Counter)
    rules_added: Counter[str] = field(default_factory=Counter)
    rules_removed: Counter[str] = field(default_factory=Counter)
    not_exact: Counter[str] = field(default_factory=Counter)
    not_reproduced: int = 0
    not_reproduced_unexplained: int = 0  # of those, rows citing no consent recorded after the decision
    changes: list[tuple[Any, ...]] = field(default_factory=list)
    unreproduced: list[tuple[Any, ...]] = field(default_factory=list)  # in UNREPRODUCED_COLUMNS order
    subjects: dict[tuple[str, str], _Affected] = field(default_factory=dict)
    recipients: dict[str, _Affected] = field(default_factory=dict)
    unattributed: int = 0  # changed bulk transfers that name no subjects
    unattributed_records: int = 0
    consent_events: int = 0
    consent_table: bool = True  # False: the store has none, every cited consent reads as unknown
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "policy": {"directory": self.policy_dir, "version": self.policy_version},
            "baseline_policy_version": self.baseline_version,
            "rows_replayed": self.rows,
            "changed": len(self.changes),
            "allowed_to_blocked": self.directions["allowed_to_blocked"],
            "blocked_to_allowed": self.directions["blocked_to_allowed"],
            "same_decision_other_grounds": self.directions["same_decision"],
            "rules_added": dict(sorted(self.rules_added.items())),
            "rules_removed": dict(sorted(self.rules_removed.items())),
            "subjects_affected": len({subject for subject, _ in self.subjects}),
            "recipients_affected": len(self.recipients),
            "unattributed_bulk_transfers_changed": self.unattributed,
            "their_records": self.unattributed_records,
            "not_reproduced": self.not_reproduced,
            "not_reproduced_unexplained": self.not_reproduced_unexplained,
            "not_exact": {
                "row_format_1": self.not_exact["row_format_1"],
                "other_policy_version": self.not_exact["other_policy_version"],
                "consent_recorded_after_decision": self.not_exact["consent_recorded_after_decision"],
            },
            "consent_events": self.consent_events,
            "consent_table": self.consent_table,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else None,
        }


def _unreproduced(
    row: dict[str, Any], stored: tuple[Any, ...], own: tuple[Any, ...], late: bool
) -> tuple[Any, ...]:
    return (
        row["event_id"],
        format_millis(row["occurred_at"]),
        row["event_type"],
        row["user_id"],
        stored[0],
        own[0],
        list(stored[1]),
        list(own[1]),
        late,
    )


def _direction(old: str, new: str) -> str:
    return "same_decision" if old == new else f"{old}_to_{new}"


class _Replayer:
    """Replays rows one at a time into a ReplayResult (the loop of `replay`)."""

    def __init__(
        self, baseline: Policy, whatif: Policy, consents: StoreConsents, result: ReplayResult
    ) -> None:
        self.whatif = Decider(whatif, consents.ledger)
        self.own = {baseline.version: Decider(baseline, consents.ledger), whatif.version: self.whatif}
        self.consents = consents
        self.result = result

    def row(self, row: dict[str, Any]) -> None:
        result = self.result
        result.rows += 1
        event = event_from_stored(row)
        new = self.whatif.decide(event)
        exact_format = row["row_format"] >= 2
        stored = (row["decision"], tuple(row["rules"]), row["transfer_mechanism"] if exact_format else None)
        new_outcome = (new.decision, new.rules, new.transfer_mechanism if exact_format else None)
        if not exact_format:
            result.not_exact["row_format_1"] += 1
        consent_id = event.consent_id
        late = consent_id is not None and self.consents.recorded_after(
            consent_id, event.occurred_at_ms, row["decided_at"]
        )
        if late:
            result.not_exact["consent_recorded_after_decision"] += 1
        own = self._own_outcome(row, event, new_outcome, exact_format)
        reproduced = None if own is None else own == stored
        if own is not None and not reproduced:
            result.not_reproduced += 1
            result.not_reproduced_unexplained += 0 if late else 1
            result.unreproduced.append(_unreproduced(row, stored, own, late))
        reference = stored if own is None else own
        if new_outcome != reference:
            self._change(row, new, reference, reproduced)

    def _own_outcome(
        self, row: dict[str, Any], event: Any, new: tuple[Any, ...], exact: bool
    ) -> tuple[Any, ...] | None:
        """What the row's own policy decides now, replayed (None: that policy is not loaded)."""
        own = self.own.get(row["policy_version"])
        if own is None:
            self.result.not_exact["other_policy_version"] += 1
            return None
        if own is self.whatif:
            return new
        again: Decision = own.decide(event)
        return (again.decision, again.rules, again.transfer_mechanism if exact else None)

    def _change(
        self, row: dict[str, Any], new: Decision, stored: tuple[Any, ...], reproduced: bool | None
    ) -> None:
        result = self.result
        old_decision, old_rules, old_mechanism = stored
        direction = _direction(old_decision, new.decision)
        result.directions[direction] += 1
        added = tuple(rule for rule in new.rules if rule not in old_rules)
        removed = tuple(rule for rule in old_rules if rule not in new.rules)
        result.rules_added.update(added)
        result.rules_removed.update(removed)
        # a flow with no named recipient (a device sync) is listed by its counterparty type: "(platform)"
        recipient = (
            row["counterparty_name"]
            or (row["counterparty"] or "").strip()
            or (f"({row['counterparty_type']})" if row.get("counterparty_type") else None)
        )
        subjects = tuple(row["subjects"])
        exact = row["row_format"] >= 2
        result.changes.append(
            (
                row["event_id"],
                format_millis(row["occurred_at"]),
                row["event_type"],
                row["user_id"],
                recipient,
                row["destination_country"],
                old_decision,
                new.decision,
                old_mechanism if exact else NOT_RECORDED,
                new.transfer_mechanism,
                list(added),
                list(removed),
                list(subjects),
                reproduced,
            )
        )
        named = [(row["user_id"], "user_id")] if row["user_id"] is not None else []
        named += [(subject, "subjects") for subject in subjects]
        for key in named:
            result.subjects.setdefault(key, _Affected()).add(direction)
        if row["user_id"] is None and not subjects:
            result.unattributed += 1
            result.unattributed_records += int(row["record_count"])
        if recipient is not None:
            affected = result.recipients.setdefault(recipient, _Affected())
            affected.add(direction)
            affected.subjects.update(subject for subject, _ in named)


def replay(
    store: AuditStore,
    baseline: Policy,
    whatif: Policy,
    since: str,
    until: str,
    on_rows: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Re-decide the rows with `since <= occurred_at < until` (ClickHouse DateTime64 text) under
    `whatif`; `baseline` is the policy the store is configured with. Reads only."""
    started = time.perf_counter()
    consents = load_consents(store)
    result = ReplayResult(str(whatif.directory), whatif.version, baseline.version)
    result.consent_events = consents.events
    result.consent_table = consents.table
    replayer = _Replayer(baseline, whatif, consents, result)
    # `stored.` names the columns: the select list's aliases (occurred_at as epoch milliseconds,
    # event_id as text) would shadow them in WHERE and ORDER BY, and the order must be the key's
    sql = (
        f"SELECT {select_list(READ_COLUMNS, store.columns)} FROM {store.table} AS stored "
        "WHERE stored.occurred_at >= {since:DateTime64(3, 'UTC')} "
        "AND stored.occurred_at < {until:DateTime64(3, 'UTC')} "
        "ORDER BY stored.user_id, stored.occurred_at, stored.event_id"
    )
    replay_row = replayer.row
    for row in store.stream(sql, {"since": since, "until": until}):
        replay_row(row)
        if on_rows is not None and result.rows % 1_000_000 == 0:
            on_rows(result.rows)
    result.seconds = time.perf_counter() - started
    return result


def subject_rows(result: ReplayResult) -> list[tuple[Any, ...]]:
    """The subjects affected (SUBJECT_COLUMNS), most changes first."""
    rows = [
        (subject, via, a.changed, a.allowed_to_blocked, a.blocked_to_allowed)
        for (subject, via), a in result.subjects.items()
    ]
    return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))


def recipient_rows(result: ReplayResult) -> list[tuple[Any, ...]]:
    """The recipients affected (RECIPIENT_COLUMNS), most changes first."""
    rows = [
        (name, a.changed, a.allowed_to_blocked, a.blocked_to_allowed, len(a.subjects))
        for name, a in result.recipients.items()
    ]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def summary_lines(result: ReplayResult) -> list[str]:
    """The summary for a person: what was replayed, what changed, by direction and rule, and what
    could not be replayed exactly."""
    s = result.summary()
    lines = [
        f"replay under {s['policy']['directory']} (policy {s['policy']['version']}; "
        f"the store's configured policy {s['baseline_policy_version']})",
        f"  rows replayed {s['rows_replayed']:,}  changed {s['changed']:,}  (allowed -> blocked "
        f"{s['allowed_to_blocked']:,}, blocked -> allowed {s['blocked_to_allowed']:,}, same decision on "
        f"other grounds {s['same_decision_other_grounds']:,})  in {s['seconds']:.1f} s",
    ]
    lines += _by_rule(result.rules_added, result.rules_removed)
    lines.append(
        f"  subjects affected {s['subjects_affected']:,}  recipients affected {s['recipients_affected']:,}"
        f"  changed bulk transfers naming no subjects {s['unattributed_bulk_transfers_changed']:,} "
        f"({s['their_records']:,} records)"
    )
    not_exact = s["not_exact"]
    lines.append(
        f"  not reproduced under their own policy {s['not_reproduced']:,}, listed apart and not counted as "
        f"changes (unexplained by a consent recorded after the decision: {s['not_reproduced_unexplained']:,})"
    )
    lines.append(
        f"  not exact: row format 1 "
        f"{not_exact['row_format_1']:,}, decided under another policy version (not checked) "
        f"{not_exact['other_policy_version']:,}, citing a consent recorded after the decision "
        f"{not_exact['consent_recorded_after_decision']:,}; consent events read {s['consent_events']:,}"
    )
    if not s["consent_table"]:
        lines.append("  the store has no consent table: every cited consent was judged as never granted")
    return lines


def _by_rule(added: Counter[str], removed: Counter[str]) -> list[str]:
    rules = sorted(set(added) | set(removed))
    if not rules:
        return ["  no rule added or removed"]
    width = max(len(rule) for rule in rules)
    return [f"  {rule:<{width}}  added {added[rule]:>9,}  removed {removed[rule]:>9,}" for rule in rules]


def _records(columns: Iterable[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    names = tuple(columns)
    return [dict(zip(names, row, strict=True)) for row in rows]


def as_json(result: ReplayResult) -> dict[str, Any]:
    """The whole result as one JSON object: summary, changes, subjects, recipients."""
    return {
        "summary": result.summary(),
        "changes": _records(CHANGE_COLUMNS, result.changes),
        "not_reproduced": _records(UNREPRODUCED_COLUMNS, result.unreproduced),
        "subjects": _records(SUBJECT_COLUMNS, subject_rows(result)),
        "recipients": _records(RECIPIENT_COLUMNS, recipient_rows(result)),
    }
