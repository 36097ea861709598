"""Avro schemas and ClickHouse DDL/report SQL, as data.

`SCHEMA_DIR` holds the event kinds' writer schemas (`<kind>.vN.avsc`, one file per kind and version,
read by `flowaudit.domain.codec`), `sql/` the audit store's DDL and roles, `reports/` the report
queries. `HEADER_SCHEMA_DIR` (`headers/`) declares the shape of JSON headers the worker writes on
forwarded records (`decision.vN.avsc`: the `flowaudit-decision` header; the pipeline writes the
newest, v2); no codec reads it.
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
HEADER_SCHEMA_DIR = SCHEMA_DIR / "headers"
