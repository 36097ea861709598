-- name: consent-missing
-- description: Consent-based flows, and sharings, that had no consent reference.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
SELECT
    purpose,
    event_type,
    coalesce(counterparty, '(platform)') AS recipient,
    decision,
    count() AS events,
    uniqExact(user_id) AS data_subjects,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen
FROM audit_events
WHERE (has(rules, 'consent-missing')
       OR ((legal_basis = 'consent' OR event_type = 'sharing') AND empty(trimBoth(coalesce(consent_id, '')))))
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY purpose, event_type, recipient, decision
ORDER BY events DESC, purpose, recipient
