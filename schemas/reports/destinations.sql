-- name: destinations
-- description: Flows by destination country, each event counted once: events, allowed, blocked, data subjects, those carrying health (Art. 9) data, and whether the country was outside the protected zone when a flow happened (the compliance dashboard's map and bar chart).
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    destination_country,
    max(outside_protected_zone) AS outside_protected_zone,
    count() AS events,
    countIf(decision = 'allowed') AS allowed,
    countIf(decision = 'blocked') AS blocked,
    uniqExact(user_id) AS data_subjects,
    countIf(special_category) AS health_events
FROM audit_events
WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY destination_country
ORDER BY events DESC, destination_country
