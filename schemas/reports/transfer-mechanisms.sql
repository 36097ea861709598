-- name: transfer-mechanisms
-- description: Flows that left the protected zone by the transfer mechanism their decision relied on (an adequacy decision, an Art. 46 safeguard, an Art. 49 derogation, or none), each event once: events, allowed, blocked, data subjects (the compliance dashboard's bar chart of mechanisms).
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- '(not recorded)': rows written before row format 2, which kept no mechanism.
SELECT
    multiIf(transfer_mechanism IS NOT NULL, transfer_mechanism, row_format = 1, '(not recorded)', 'none')
        AS mechanism,
    countIf(decision = 'allowed') AS allowed,
    countIf(decision = 'blocked') AS blocked,
    count() AS events,
    uniqExact(user_id) AS data_subjects
FROM audit_events
WHERE outside_protected_zone
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY mechanism
ORDER BY events DESC, mechanism
