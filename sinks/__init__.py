"""Where decisions go, above the domain: audit rows and their hash chain (`audit`), their Arrow
encoding (`encoding`), the ClickHouse store (`clickhouse`), the batching writer the pipeline calls
(`writer`), the verifier (`verify`) and the compliance reports (`reports`).

Imports the domain and the ground floor (`flowaudit.common`), never the streams or the CLI.
"""
