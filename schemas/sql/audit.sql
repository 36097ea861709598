-- The audit store: one row per decision, append-only. Applied idempotently at start-up by the worker
-- (every statement is IF NOT EXISTS; `flowaudit report|verify` create nothing).
--
-- Ordering by (user_id, occurred_at) makes a data subject's access request (user-disclosures) a
-- primary-key range read; the other reports aggregate few columns over the whole table.
-- Partitioning by ingestion month keeps each insert (one batch, one ingested_at) in one partition,
-- so a batch is written as one part: all or nothing.
-- Chain columns: every batch of rows from one source partition is a link of the chain
-- `chain_id` = "<topic>/<partition>"; `link_hash` is an HMAC over the previous link and the batch's
-- row hashes; `row_hash` is SHA-256 over the row's content as written. `flowaudit verify` recomputes both.
-- Both are 32 raw bytes: `hex(row_hash)` shows them.
-- merge_selector_base = 10 (ClickHouse's default is 5; needs ClickHouse 24.11 or later): background
-- merges wait for about 10 parts of a size instead of 5, so each row is rewritten fewer times. Rows
-- are ordered by user, so every merge interleaves its parts row by row and is most of the engine's
-- work. Measured with chDB on 2 cores, 3,000,000 rows in 20,000-row batches: rows rewritten by
-- merges 2.52 -> 1.52 per row, engine CPU 12.2 -> 8.1 us per row; partitions keep more small
-- parts while they are young (ClickHouse lowers the base again as parts age or pile up).
CREATE TABLE IF NOT EXISTS audit_events
(
    event_id               UUID,
    event_type             LowCardinality(String),
    occurred_at            DateTime64(3, 'UTC'),
    user_id                Nullable(String),
    user_country           LowCardinality(Nullable(String)),
    destination_country    LowCardinality(String),
    outside_protected_zone Bool,
    protected_zone         LowCardinality(String),
    counterparty_type      LowCardinality(String),
    counterparty           Nullable(String),
    device_model           LowCardinality(Nullable(String)),
    device_id              Nullable(String),
    record_count           UInt64,
    encrypted              Nullable(Bool),
    pseudonymized          Nullable(Bool),
    purpose                LowCardinality(String),
    consent_id             Nullable(String),
    fields                 Array(String),
    data_categories        Array(LowCardinality(String)),
    special_category       Bool,
    undeclared_categories  Array(LowCardinality(String)),
    legal_basis            LowCardinality(Nullable(String)),
    decision               Enum8('allowed' = 1, 'blocked' = 2),
    rules                  Array(LowCardinality(String)),
    waived                 Array(LowCardinality(String)),
    policy_version         LowCardinality(String),
    decided_at             DateTime64(3, 'UTC'),
    source_topic           LowCardinality(String),
    source_partition       UInt32,
    source_offset          UInt64,
    ingested_at            DateTime64(3, 'UTC'),
    row_format             UInt8 DEFAULT 1,
    special_category_condition LowCardinality(Nullable(String)),
    transfer_mechanism     LowCardinality(Nullable(String)),
    flags                  Array(LowCardinality(String)),
    counterparty_name      Nullable(String),
    subjects               Array(String),
    chain_id               LowCardinality(String),
    chain_seq              UInt64,
    link_rows              UInt32,
    link_index             UInt32,
    link_hash              FixedString(32),
    row_hash               FixedString(32),
    INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_counterparty counterparty TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (user_id, occurred_at, event_id)
SETTINGS allow_nullable_key = 1, non_replicated_deduplication_window = 10000, merge_selector_base = 10;

-- Row format 2 (contract v2), on a store created before it: the same columns, added in the same
-- places. Rows written before read row_format 1 (the DEFAULT), NULL for the nullable columns and []
-- for the arrays; `flowaudit verify` hashes each row in the columns of its own format
-- (sinks/audit.py). Needs ALTER ADD COLUMN on the table (schemas/sql/roles.sql), nothing more: adding
-- a column with a DEFAULT rewrites no part. Keep each definition identical to the CREATE above.
ALTER TABLE audit_events
    ADD COLUMN IF NOT EXISTS row_format UInt8 DEFAULT 1 AFTER ingested_at,
    ADD COLUMN IF NOT EXISTS special_category_condition LowCardinality(Nullable(String)) AFTER row_format,
    ADD COLUMN IF NOT EXISTS transfer_mechanism LowCardinality(Nullable(String)) AFTER special_category_condition,
    ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER transfer_mechanism,
    ADD COLUMN IF NOT EXISTS counterparty_name Nullable(String) AFTER flags,
    ADD COLUMN IF NOT EXISTS subjects Array(String) AFTER counterparty_name;
