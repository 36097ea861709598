-- ClickHouse server deployment: least-privilege roles for the audit store. Apply as an admin once
-- (docker-compose mounts this into the server's init directory). The worker connects as a user with
-- the writer role: it may create the table at start-up and INSERT, and add the columns of row
-- format 2 to a table created before it (ALTER ADD COLUMN of those columns only, run only while one
-- is missing); never UPDATE/DELETE/DROP, MODIFY or DROP COLUMN, or any other ALTER.
-- The consent rows, the withdrawal notices and the per-subject index (schemas/sql/consent.sql,
-- subjects.sql) are append-only the same way: INSERT and SELECT. CREATE VIEW lets the writer create
-- the index's materialized view at start-up; the view runs with its definer's rights (ClickHouse's
-- default SQL SECURITY DEFINER), the writer's: INSERT on audit_subjects.
-- Compliance users get the reader role: SELECT only.
CREATE DATABASE IF NOT EXISTS flowaudit;

CREATE ROLE IF NOT EXISTS flowaudit_writer;
GRANT CREATE TABLE, CREATE VIEW ON flowaudit.* TO flowaudit_writer;
GRANT INSERT, SELECT ON flowaudit.audit_events TO flowaudit_writer;
GRANT INSERT, SELECT ON flowaudit.consent_events TO flowaudit_writer;
GRANT INSERT, SELECT ON flowaudit.consent_withdrawal_notices TO flowaudit_writer;
GRANT INSERT, SELECT ON flowaudit.audit_subjects TO flowaudit_writer;
GRANT SELECT ON flowaudit.audit_subjects_mv TO flowaudit_writer;
-- The Merkle log (schemas/sql/merkle.sql): the writer appends nodes and signed checkpoints, and reads
-- them back for its right edges, the last checkpoints and the recovery after a crash.
GRANT INSERT, SELECT ON flowaudit.audit_merkle_nodes TO flowaudit_writer;
GRANT INSERT, SELECT ON flowaudit.audit_merkle_checkpoints TO flowaudit_writer;
-- ALTER ADD COLUMN is a column-level privilege: granted for the columns schemas/sql/audit.sql adds.
-- A later row format that adds columns must list them here too.
GRANT ALTER ADD COLUMN(row_format, special_category_condition, transfer_mechanism, flags, counterparty_name, subjects)
    ON flowaudit.audit_events TO flowaudit_writer;

CREATE ROLE IF NOT EXISTS flowaudit_reader;
GRANT SELECT ON flowaudit.audit_events TO flowaudit_reader;
GRANT SELECT ON flowaudit.consent_events TO flowaudit_reader;
GRANT SELECT ON flowaudit.consent_withdrawal_notices TO flowaudit_reader;
GRANT SELECT ON flowaudit.audit_subjects TO flowaudit_reader;
-- verify, receipts and the witness's consistency proofs read the Merkle log with this role
GRANT SELECT ON flowaudit.audit_merkle_nodes TO flowaudit_reader;
GRANT SELECT ON flowaudit.audit_merkle_checkpoints TO flowaudit_reader;

-- Passwords come from the environment of the init script (see docker-compose.yml).
CREATE USER IF NOT EXISTS flowaudit_worker IDENTIFIED WITH sha256_password BY '${FLOWAUDIT_WRITER_PASSWORD}'
    DEFAULT ROLE flowaudit_writer DEFAULT DATABASE flowaudit;
CREATE USER IF NOT EXISTS flowaudit_dpo IDENTIFIED WITH sha256_password BY '${FLOWAUDIT_READER_PASSWORD}'
    DEFAULT ROLE flowaudit_reader DEFAULT DATABASE flowaudit;
GRANT flowaudit_writer TO flowaudit_worker;
GRANT flowaudit_reader TO flowaudit_dpo;
