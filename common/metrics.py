"""Every metric flowaudit exports, declared once with its meaning.

Label values come from closed sets: event kinds, decisions, rule ids, flag ids, categories and legal
bases of the loaded policy, Chapter V transfer mechanisms (`TRANSFER_MECHANISMS`), ISO country codes,
dead-letter reasons, topic roles, and topic/partition pairs of the input topics. No user id, event id
or free text ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

# The values of a decision's `transfer_mechanism` outside the protected zone (contract v2 §5), in the
# contract's order of precedence; the label set of `flowaudit_transfers_by_mechanism_total`.
TRANSFER_MECHANISMS = ("adequacy", "scc", "bcr", "dpf", "consent_derogation", "none")
DECISIONS = ("allowed", "blocked")

EVENTS = Counter(
    "flowaudit_events_total",
    "Events decided, by kind and decision (allowed or blocked).",
    ["kind", "decision"],
    registry=REGISTRY,
)
BLOCKED_BY_RULE = Counter(
    "flowaudit_blocked_events_total",
    "Blocked events by rule that fired (an event blocked by two rules counts once per rule).",
    ["kind", "rule"],
    registry=REGISTRY,
)
FLAGGED = Counter(
    "flowaudit_flagged_events_total",
    "Decided events by advisory flag raised, allowed or blocked (flags never block; an event with two flags "
    "counts once per flag).",
    ["kind", "flag"],
    registry=REGISTRY,
)
TRANSFERS_BY_MECHANISM = Counter(
    "flowaudit_transfers_by_mechanism_total",
    "Decided events sent outside the protected zone, by kind, Chapter V transfer mechanism "
    "('none' when no mechanism applies) and decision.",
    ["kind", "mechanism", "decision"],
    registry=REGISTRY,
)
EVENTS_BY_CATEGORY = Counter(
    "flowaudit_events_by_category_total",
    "Decided events by data category carried and legal basis of the purpose ('none' for an unknown purpose).",
    ["category", "legal_basis"],
    registry=REGISTRY,
)
EVENTS_BY_LEGAL_BASIS = Counter(
    "flowaudit_events_by_legal_basis_total",
    "Decided events by the legal basis of their purpose ('none' for an unknown purpose) and decision, each "
    "event counted once (flowaudit_events_by_category_total counts an event once per category it carries).",
    ["kind", "legal_basis", "decision"],
    registry=REGISTRY,
)
HEALTH_BY_DESTINATION = Counter(
    "flowaudit_health_data_events_total",
    "Events carrying health (or unclassified) data, by destination country and decision.",
    ["destination_country", "decision"],
    registry=REGISTRY,
)
UNKNOWN_SUBCONTRACTOR = Counter(
    "flowaudit_unknown_subcontractor_events_total",
    "Subcontractor transfers naming a processor that is not in the registry.",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "flowaudit_dead_letters_total",
    "Records sent to the dead-letter topic, by source kind and reason.",
    ["kind", "reason"],
    registry=REGISTRY,
)
RECORDS_CONSUMED = Counter(
    "flowaudit_records_consumed_total",
    "Records read from the input topics (valid or not), by kind.",
    ["kind"],
    registry=REGISTRY,
)
INVALID_RATIO = Gauge(
    "flowaudit_invalid_ratio",
    "Share of invalid records in the current window, by kind; the worker stops above the configured limit.",
    ["kind"],
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "flowaudit_decision_latency_seconds",
    "Time from a record's Kafka timestamp to its decision (sampled: up to 64 records per batch).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
# the contract's consent actions (v2 §1): the closed label set of CONSENTS
CONSENT_ACTIONS = ("granted", "withdrawn")
CONSENTS = Counter(
    "flowaudit_consents_total",
    "Consent events recorded in the consent ledger (durable in the store and the ledger's table), by action.",
    ["action"],
    registry=REGISTRY,
)
CONSENT_LEDGER_SIZE = Gauge(
    "flowaudit_consent_ledger_consents",
    "Consent ids the worker's consent ledger holds (the partitions of the consent topic it owns).",
    registry=REGISTRY,
)
CONSENT_PERIODS_DROPPED = Counter(
    "flowaudit_consent_periods_dropped_total",
    "Grant/withdrawal periods dropped from a consent id that exceeded the ledger's bound per consent.",
    registry=REGISTRY,
)
FORWARDED = Counter(
    "flowaudit_forwarded_total",
    "Events forwarded to the gate's output topics, by role (approved or blocked).",
    ["role"],
    registry=REGISTRY,
)
REBALANCE_REREADS = Counter(
    "flowaudit_rebalance_rereads_total",
    "Events whose batch finished during or after a rebalance, left unacknowledged so that whoever holds "
    "their partition reads them again (re-reads are skipped by the sink: nothing is audited twice).",
    ["reason"],  # during_rebalance, earlier_generation
    registry=REGISTRY,
)
AUDIT_BATCHES = Counter(
    "flowaudit_audit_batches_total", "Audit batches written to the store.", registry=REGISTRY
)
AUDIT_ROWS = Counter(
    "flowaudit_audit_rows_total",
    "Audit rows written to the store, by decision.",
    ["decision"],
    registry=REGISTRY,
)
AUDIT_ROWS_SKIPPED = Counter(
    "flowaudit_audit_rows_replayed_total",
    "Records already in the store when read again (after a restart), not written twice.",
    registry=REGISTRY,
)
AUDIT_INSERT_SECONDS = Histogram(
    "flowaudit_audit_insert_seconds",
    "Duration of one audit insert (one batch), successful attempts only.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
AUDIT_INSERT_FAILURES = Counter(
    "flowaudit_audit_insert_failures_total", "Audit insert attempts that failed.", registry=REGISTRY
)
AUDIT_INSERT_RETRIES = Counter(
    "flowaudit_audit_insert_retries_total",
    "Audit insert attempts that were retries of a failed one.",
    registry=REGISTRY,
)
BACKPRESSURE = Gauge(
    "flowaudit_backpressure",
    "1 while consumption is held back because the audit store is failing (inserts being retried), else 0.",
    registry=REGISTRY,
)
LAST_AUDIT_WRITE = Gauge(
    "flowaudit_last_audit_write_timestamp_seconds",
    "Unix time of the last successful audit insert.",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "flowaudit_consumer_lag",
    "Records behind the end of each input partition, measured after each batch.",
    ["topic", "partition"],
    registry=REGISTRY,
)
CHAIN_HEAD = Gauge(
    "flowaudit_audit_chain_head_seq",
    "Sequence number of the last durable link of each audit chain (one chain per input partition).",
    ["chain"],
    registry=REGISTRY,
)
POLICY = Info("flowaudit_policy", "Version (content hash) of the loaded policy.", registry=REGISTRY)

# The Merkle log (issue 17): the writer signs one checkpoint per link, the worker publishes them.
CHECKPOINTS_SIGNED = Counter(
    "flowaudit_checkpoints_signed_total",
    "Signed checkpoints (tree size and root of a chain's Merkle log) made durable in the store, "
    "one per link.",
    registry=REGISTRY,
)
MERKLE_TREE_SIZE = Gauge(
    "flowaudit_merkle_tree_size",
    "Leaves of each chain's Merkle log in its latest durable signed checkpoint "
    "(one chain per input partition).",
    ["chain"],
    registry=REGISTRY,
)
CHECKPOINTS_PUBLISHED = Counter(
    "flowaudit_checkpoints_published_total",
    "Signed checkpoints published to the checkpoints topic before their batch was acknowledged "
    "(a chain's latest one per batch: the same checkpoint may be published twice).",
    registry=REGISTRY,
)

# Kept by the worker's own process when the pipeline runs in a second process (which keeps the others):
# the worker's /metrics takes these from itself and everything else from the second process.
OFFSET_HOLE_REREADS = Counter(
    "flowaudit_offset_hole_rereads_total",
    "Times a partition was read again from its next commit offset because that offset stayed "
    "unacknowledged while later ones were acknowledged (an event the consumer failed to deliver; the commit "
    "waits at it, never passes it). The sink skips what it already holds.",
    registry=REGISTRY,
)

WORKER_PROCESS_METRICS = (
    CONSUMER_LAG,
    FORWARDED,
    REBALANCE_REREADS,
    OFFSET_HOLE_REREADS,
    POLICY,
    CHECKPOINTS_PUBLISHED,
)


def zero_known_series(kinds: list[str], rules: list[str], flags: list[str]) -> None:
    """Create the series with value 0 so dashboards and alerts see them before the first event
    (`increase()` misses the first event of a series that did not exist before it)."""
    for kind in kinds:
        RECORDS_CONSUMED.labels(kind)
        for decision in DECISIONS:
            EVENTS.labels(kind, decision)
            for mechanism in TRANSFER_MECHANISMS:
                TRANSFERS_BY_MECHANISM.labels(kind, mechanism, decision)
        for rule in rules:
            BLOCKED_BY_RULE.labels(kind, rule)
        for flag in flags:
            FLAGGED.labels(kind, flag)
    for role in ("approved", "blocked"):
        FORWARDED.labels(role)
    for action in CONSENT_ACTIONS:
        CONSENTS.labels(action)
    BACKPRESSURE.set(0)


# The witness (`flowaudit witness`, a process of its own with its own endpoint): its registry holds
# its metrics only. Outcomes of a checkpoint read from the checkpoints topic:
#   cosigned: it extends the latest one witnessed for its chain (consistency proof checked), cosigned;
#   unchanged: the same tree as the latest (re-published); stale: an older tree, consistent with the
#   latest (publishes that crossed); fork: same or larger size, inconsistent with the latest; shrink:
#   a smaller tree that is not a prefix of the latest; bad_signature: not signed by the log's key
#   for its origin; unprovable: no consistency proof could be read (retried on the next checkpoint).
WITNESS_OUTCOMES = ("cosigned", "unchanged", "stale", "fork", "shrink", "bad_signature", "unprovable")
WITNESS_REGISTRY = CollectorRegistry(auto_describe=True)
WITNESS_CHECKPOINTS = Counter(
    "flowaudit_witness_checkpoints_total",
    "Checkpoints the witness read from the checkpoints topic, by outcome (see WITNESS_OUTCOMES).",
    ["outcome"],
    registry=WITNESS_REGISTRY,
)
WITNESS_CONSISTENCY_FAILURES = Counter(
    "flowaudit_witness_consistency_failures_total",
    "Checkpoints that contradict what the witness saw before (fork: another tree of the same or a larger "
    "size; shrink: a smaller tree that is not a prefix), by chain: the log's history was rewritten.",
    ["chain"],
    registry=WITNESS_REGISTRY,
)
WITNESS_TREE_SIZE = Gauge(
    "flowaudit_witness_tree_size",
    "Leaves of each chain's latest checkpoint the witness has cosigned.",
    ["chain"],
    registry=WITNESS_REGISTRY,
)
WITNESS_ADVANCED = Gauge(
    "flowaudit_witness_chain_advanced_timestamp_seconds",
    "Unix time at which the witness last cosigned a larger tree for each chain.",
    ["chain"],
    registry=WITNESS_REGISTRY,
)
