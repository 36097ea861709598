-- name: blocked-health-transfers
-- description: Blocked flows that carried health (Art. 9) or unclassified data, by destination country, recipient and rule.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    destination_country,
    coalesce(counterparty, '(platform)') AS recipient,
    counterparty_type AS recipient_type,
    arrayJoin(rules) AS rule,
    count() AS events,
    uniqExact(user_id) AS data_subjects,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen
FROM audit_events
WHERE decision = 'blocked'
  AND special_category
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY destination_country, recipient, recipient_type, rule
ORDER BY events DESC, destination_country, recipient, rule
