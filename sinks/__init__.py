"""Where decisions go: the audit store (ClickHouse) and the in-memory/file sinks used in tests."""
