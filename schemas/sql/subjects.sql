-- The per-subject index of bulk transfers: one row per (subject, transfer) for every audit row that
-- names its `subjects` (contract v2 §1), so a subject's access request (user-disclosures) and a
-- breach report (subject-exposure) find the bulk transfers that carried their records with a
-- primary-key range read instead of a scan of audit_events (ordered by user_id, null for these).
-- It copies the columns those reports read, so they never go back to audit_events for it.
--
-- Fed by a materialized view: ClickHouse runs its SELECT on every block inserted into audit_events,
-- in the same INSERT (an insert trigger; a failed push fails the insert, which the writer retries).
-- The view only sees rows inserted after it exists: AuditStore.apply_subjects_index backfills the
-- older ones once (sinks/clickhouse.py). Rows here may repeat (a retried insert, the backfill racing
-- another writer): the reports select event ids IN the index, so a repeat changes no count.
-- Not part of the hash chain: it is derived from chained rows and can be rebuilt from them.
CREATE TABLE IF NOT EXISTS audit_subjects
(
    subject             String,
    occurred_at         DateTime64(3, 'UTC'),
    event_id            UUID,
    event_type          LowCardinality(String),
    counterparty_type   LowCardinality(String),
    counterparty        Nullable(String),
    counterparty_name   Nullable(String),
    destination_country LowCardinality(String),
    purpose             LowCardinality(String),
    legal_basis         LowCardinality(Nullable(String)),
    decision            Enum8('allowed' = 1, 'blocked' = 2),
    data_categories     Array(LowCardinality(String)),
    record_count        UInt64,
    row_format          UInt8,
    ingested_at         DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (subject, occurred_at, event_id);

-- The SELECT of the view and of the backfill (AuditStore.apply_subjects_index): keep them identical.
CREATE MATERIALIZED VIEW IF NOT EXISTS audit_subjects_mv TO audit_subjects AS
SELECT
    arrayJoin(subjects) AS subject,
    occurred_at,
    event_id,
    event_type,
    counterparty_type,
    counterparty,
    counterparty_name,
    destination_country,
    purpose,
    legal_basis,
    decision,
    data_categories,
    record_count,
    row_format,
    ingested_at
FROM audit_events
WHERE notEmpty(subjects);
