#!/bin/bash
# Runs once on an empty ClickHouse data directory (docker-entrypoint-initdb.d): creates the
# flowaudit database, the INSERT-only writer and SELECT-only reader roles and their users, from
# schemas/sql/roles.sql with the passwords taken from the environment.
set -euo pipefail
: "${FLOWAUDIT_WRITER_PASSWORD:?set FLOWAUDIT_WRITER_PASSWORD}"
: "${FLOWAUDIT_READER_PASSWORD:?set FLOWAUDIT_READER_PASSWORD}"
sed -e "s/\${FLOWAUDIT_WRITER_PASSWORD}/${FLOWAUDIT_WRITER_PASSWORD}/" \
    -e "s/\${FLOWAUDIT_READER_PASSWORD}/${FLOWAUDIT_READER_PASSWORD}/" /flowaudit/roles.sql \
  | clickhouse client --multiquery
