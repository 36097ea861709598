-- name: daily-volume
-- description: Events per day by kind, decision and category.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    toDate(occurred_at) AS day,
    event_type,
    decision,
    arrayJoin(if(empty(data_categories), ['(none)'], data_categories)) AS category,
    count() AS events
FROM audit_events
WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY day, event_type, decision, category
ORDER BY day, event_type, decision, category
