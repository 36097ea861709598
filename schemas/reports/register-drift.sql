-- name: register-drift
-- description: Purpose x category combinations observed that the processing register does not declare for that purpose (unknown purposes declare nothing).
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Example recipients: the canonical name (counterparty_name), else (rows before row format 2) as sent.
SELECT
    purpose,
    arrayJoin(undeclared_categories) AS category,
    count() AS events,
    countIf(decision = 'blocked') AS blocked,
    groupUniqArray(5)(coalesce(counterparty_name, trimBoth(counterparty), '(platform)')) AS example_recipients,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen,
    groupUniqArray(policy_version) AS policy_versions
FROM audit_events
WHERE notEmpty(undeclared_categories)
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY purpose, category
ORDER BY events DESC, purpose, category
