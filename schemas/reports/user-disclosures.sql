-- name: user-disclosures
-- description: For one data subject (GDPR Art. 15): every recipient of their data with dates, categories, purpose and legal basis, including the bulk transfers that named them among their subjects (via = subjects), and the bulk transfers of the period that named no subjects (via = unattributed: they may hold this subject's records). Blocked rows are attempts that the gate stopped.
-- parameters: user, since, until
-- policy: retention
-- clickhouse-client: --param_user='u-7f3a' --param_since='1970-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
--   --param_retention_purposes="['marketing']" --param_retention_texts="['3 years']" --param_retention_periods="['P3Y']"
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient). Rows written
-- before row format 2 have none: they are grouped with it by their counterparty as sent, trimmed and
-- lower-cased (an alias, such as 'Google Cloud Storage' for GCS, stays a group of its own).
-- via: 'user_id' (the flow was this subject's: audit_events by its primary key), 'subjects' (a bulk
-- transfer that listed this subject: the per-subject index audit_subjects, schemas/sql/subjects.sql;
-- events counts distinct transfers), 'unattributed' (bulk transfers of the period, to any subject,
-- flagged unattributed-bulk-transfer, or written before row format 2 with no user and more than one
-- record: whether this subject's records were among them is not known; events counts them, per
-- recipient). Rows before row format 2 have no subjects: their bulk transfers are 'unattributed'.
-- transfer_mechanism (Art. 15(2)): what the decision relied on for a flow that left the protected
-- zone: an adequacy decision, an Art. 46 safeguard (scc, bcr, ...) or an Art. 49 derogation
-- (consent_derogation), 'none' when it had none
-- (such flows are blocked), '(not recorded)' for rows written before row format 2, and
-- '(within EEA)' (the row's protected zone) when the data did not leave it. Bulk transfers found
-- through the per-subject index take it from their audit row (by event id: the bloom-filter index).
-- retention, retention_period (Art. 15(1)(d)): the register's, for the purpose, as the policy in
-- force when the report runs states it (parameters from the loaded policy: sinks/reports.py);
-- retention_period is ISO-8601, '' where the documents give no duration ("until deletion").
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    *,
    transform(purpose, {retention_purposes:Array(String)}, {retention_texts:Array(String)},
              if(empty({retention_purposes:Array(String)}), '(register not given)', '(not in the register)'))
        AS retention,
    transform(purpose, {retention_purposes:Array(String)}, {retention_periods:Array(String)}, '')
        AS retention_period
FROM
(
    SELECT
        argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform: device sync)'),
               (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
        counterparty_type AS recipient_type,
        event_type,
        destination_country,
        multiIf(NOT outside_protected_zone, concat('(within ', upper(protected_zone), ')'),
                e.transfer_mechanism IS NOT NULL, e.transfer_mechanism,
                row_format = 1, '(not recorded)', 'none') AS transfer_mechanism,
        purpose,
        coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
        decision,
        arraySort(groupUniqArrayArray(data_categories)) AS categories,
        count() AS events,
        min(occurred_at) AS first_disclosed,
        max(occurred_at) AS last_disclosed,
        'user_id' AS via
    FROM audit_events AS e
    WHERE user_id = {user:String}
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY recipient_key, recipient_type, event_type, destination_country, transfer_mechanism, purpose,
             legal_basis, decision
    UNION ALL
    SELECT
        argMax(coalesce(counterparty_name, trimBoth(counterparty), '(unnamed)'),
               (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
        counterparty_type AS recipient_type,
        event_type,
        destination_country,
        multiIf(NOT outside_protected_zone, concat('(within ', upper(protected_zone), ')'),
                t_mechanism IS NOT NULL, t_mechanism,
                row_format = 1, '(not recorded)', 'none') AS transfer_mechanism,
        purpose,
        coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
        decision,
        arraySort(groupUniqArrayArray(data_categories)) AS categories,
        uniqExact(event_id) AS events,
        min(occurred_at) AS first_disclosed,
        max(occurred_at) AS last_disclosed,
        'subjects' AS via
    FROM audit_subjects AS s
    LEFT JOIN (
        SELECT event_id AS t_event, transfer_mechanism AS t_mechanism, outside_protected_zone, protected_zone
        FROM audit_events
        WHERE event_id IN (SELECT event_id FROM audit_subjects WHERE subject = {user:String})
    ) AS t ON t.t_event = s.event_id
    WHERE subject = {user:String}
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY recipient_key, recipient_type, event_type, destination_country, transfer_mechanism, purpose,
             legal_basis, decision
    UNION ALL
    SELECT
        argMax(coalesce(counterparty_name, trimBoth(counterparty), '(unnamed)'),
               (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
        counterparty_type AS recipient_type,
        event_type,
        destination_country,
        multiIf(NOT outside_protected_zone, concat('(within ', upper(protected_zone), ')'),
                e.transfer_mechanism IS NOT NULL, e.transfer_mechanism,
                row_format = 1, '(not recorded)', 'none') AS transfer_mechanism,
        purpose,
        coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
        decision,
        arraySort(groupUniqArrayArray(data_categories)) AS categories,
        count() AS events,
        min(occurred_at) AS first_disclosed,
        max(occurred_at) AS last_disclosed,
        'unattributed' AS via
    FROM audit_events AS e
    WHERE (has(flags, 'unattributed-bulk-transfer')
           OR (row_format = 1 AND user_id IS NULL AND record_count > 1))
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY recipient_key, recipient_type, event_type, destination_country, transfer_mechanism, purpose,
             legal_basis, decision
)
ORDER BY via = 'unattributed', decision, last_disclosed DESC, recipient
