-- name: subject-exposure
-- description: Breach scoping: whose data went to one recipient (--recipient, the registry's canonical name, any case) in a period. kind = subjects: distinct data subjects (from user_id and from bulk transfers' subjects), events and records, per decision; kind = unattributed: each bulk transfer that named no subjects, with its record_count, so the count of subjects is never silently low.
-- parameters: recipient, since, until
-- clickhouse-client: --param_recipient='mailchimp' --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Recipient matched on counterparty_name (the registry's canonical name; a sharing's recipient),
-- else (rows before row format 2) the counterparty as sent, trimmed; both lower-cased.
-- Output columns are named apart from audit_events' (data_subjects, not subjects): in ClickHouse a
-- SELECT alias shadows the column of the same name in the whole query.
-- data_subjects counts each subject once, whether its flows named it in user_id or in subjects (the bulk
-- transfer's own array, on its audit row: this report reads one recipient, not one subject).
-- Unattributed: flagged unattributed-bulk-transfer, or written before row format 2 with no user and
-- more than one record (such rows have no flags and no subjects; counted, never guessed).
-- Blocked rows are attempts that the gate stopped (nothing was disclosed); shown apart.
WITH lower(trimBoth({recipient:String})) AS wanted
SELECT * FROM
(
    SELECT
        'subjects' AS kind,
        any(coalesce(counterparty_name, trimBoth(counterparty))) AS recipient,
        decision,
        length(arrayDistinct(arrayConcat(groupArrayIf(assumeNotNull(user_id), user_id IS NOT NULL),
                                         groupArrayArray(subjects)))) AS data_subjects,
        uniqExactIf(user_id, user_id IS NOT NULL) AS via_user_id,
        length(groupUniqArrayArray(subjects)) AS via_subjects,
        count() AS events,
        sum(record_count) AS records,
        CAST(NULL AS Nullable(UUID)) AS transfer_event_id,
        min(occurred_at) AS first_seen,
        max(occurred_at) AS last_seen
    FROM audit_events
    WHERE lower(coalesce(counterparty_name, trimBoth(counterparty))) = wanted
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY decision
    UNION ALL
    SELECT
        'unattributed' AS kind,
        coalesce(counterparty_name, trimBoth(counterparty)) AS recipient,
        decision,
        0 AS data_subjects,
        0 AS via_user_id,
        0 AS via_subjects,
        1 AS events,
        record_count AS records,
        CAST(event_id AS Nullable(UUID)) AS transfer_event_id,
        occurred_at AS first_seen,
        occurred_at AS last_seen
    FROM audit_events
    WHERE lower(coalesce(counterparty_name, trimBoth(counterparty))) = wanted
      AND (has(flags, 'unattributed-bulk-transfer')
           OR (row_format = 1 AND user_id IS NULL AND record_count > 1))
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
)
ORDER BY kind, decision, first_seen, transfer_event_id
