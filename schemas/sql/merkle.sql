-- The Merkle log of each chain (issue 17; docs/merkle.md): RFC 6962 trees over the chain's rows, in
-- chain order (chain_seq, then link_index), one tree per chain_id. Leaf i of a chain is
-- SHA-256(0x00 || row_hash) of its i-th row; a node is SHA-256(0x01 || left || right).
--
-- audit_merkle_nodes holds every *complete* subtree, leaves included (level 0): node (level, i)
-- covers leaves [i * 2^level, (i + 1) * 2^level). A complete subtree never changes once its last
-- leaf is appended, so the table is append-only, and any inclusion or consistency proof is a few
-- dozen point reads by primary key (domain/merkle.py names them). About 2 rows per audit row.
-- index_granularity = 256 (default 8192): a proof reads one granule per node it needs, so small
-- granules keep a proof of ~40 nodes at ~40 x 256 rows instead of ~40 x 8192.
-- merge_selector_base = 10 (default 5), as for audit_events: background merges rewrite each node
-- row fewer times. Measured with bench/sink.py, alternating runs on a loaded 2-core machine: merged
-- rows per audit row 5.55 / 5.54 with the default, 4.00 / 3.87 with 10 (audit table alone: ~1.8),
-- engine CPU 12.1 / 11.7 against 11.9 / 10.7 us per audit row. Needs ClickHouse 24.11+.
-- A retried insert carries a deduplication token. A node stored twice with two different hashes is
-- never overwritten: the reader refuses the chain (sinks/merkle_store.py).
CREATE TABLE IF NOT EXISTS audit_merkle_nodes
(
    chain_id   LowCardinality(String),
    level      UInt8,
    node_index UInt64,
    hash       FixedString(32)
)
ENGINE = MergeTree
ORDER BY (chain_id, level, node_index)
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000, merge_selector_base = 10;

-- One signed checkpoint per link of a chain: the tree's size and root once the link's rows are
-- leaves, and the signed note (C2SP tlog-checkpoint in a signed note, Ed25519: domain/checkpoint.py)
-- that the worker also publishes to the Kafka topic flowaudit.checkpoints. Verifying it needs the
-- public key only. tree_size - link_rows + link_index is a row's leaf index.
CREATE TABLE IF NOT EXISTS audit_merkle_checkpoints
(
    chain_id   LowCardinality(String),
    chain_seq  UInt64,
    tree_size  UInt64,
    root_hash  FixedString(32),
    signed_at  DateTime64(3, 'UTC'),
    note       String
)
ENGINE = MergeTree
ORDER BY (chain_id, chain_seq)
SETTINGS non_replicated_deduplication_window = 10000;
