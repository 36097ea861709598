-- name: blocked-by-rule
-- description: Blocked events by the rule that blocked them (an event blocked by several rules counts for each): events, data subjects, events carrying health (Art. 9) data (the compliance dashboard's bar chart of rules).
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    arrayJoin(rules) AS rule,
    count() AS blocked_events,
    uniqExact(user_id) AS data_subjects,
    countIf(special_category) AS health_events
FROM audit_events
WHERE decision = 'blocked'
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY rule
ORDER BY blocked_events DESC, rule
