-- name: consent-missing
-- description: Consent-based flows, and sharings, that had no consent reference.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient). Rows written
-- before row format 2 have none: they are grouped with it by their counterparty as sent, trimmed and
-- lower-cased (an alias, such as 'Google Cloud Storage' for GCS, stays a group of its own).
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    purpose,
    event_type,
    argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform)'),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
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
GROUP BY purpose, event_type, recipient_key, decision
ORDER BY events DESC, purpose, recipient
