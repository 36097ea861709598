"""Avro schemas (`*.avsc`, one file per kind and version) and ClickHouse DDL/report SQL, as data.

`SCHEMA_DIR` is the directory these files live in.
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
