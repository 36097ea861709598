-- name: blocked-health-transfers
-- description: Blocked flows that carried health (Art. 9) or unclassified data, by destination country, recipient and rule.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient). Rows written
-- before row format 2 have none: they are grouped with it by their counterparty as sent, trimmed and
-- lower-cased (an alias, such as 'Google Cloud Storage' for GCS, stays a group of its own).
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    destination_country,
    argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform)'),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
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
GROUP BY destination_country, recipient_key, recipient_type, rule
ORDER BY events DESC, destination_country, recipient, rule
