-- name: transfers-outside-eea
-- description: All flows to a destination outside the protected zone (the EEA), by recipient, country, legal basis, category and decision.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    coalesce(counterparty, '(platform)') AS recipient,
    counterparty_type AS recipient_type,
    destination_country,
    coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
    arrayJoin(if(empty(data_categories), ['(none)'], data_categories)) AS category,
    decision,
    count() AS events,
    sum(record_count) AS records,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen
FROM audit_events
WHERE outside_protected_zone
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY recipient, recipient_type, destination_country, legal_basis, category, decision
ORDER BY events DESC, recipient, destination_country, category
