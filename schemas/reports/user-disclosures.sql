-- name: user-disclosures
-- description: For one data subject (GDPR Art. 15): every recipient of their data with dates, categories, purpose and legal basis. Blocked rows are attempts that the gate stopped.
-- parameters: user, since, until
-- clickhouse-client: --param_user='u-7f3a' --param_since='1970-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient). Rows written
-- before row format 2 have none: they are grouped with it by their counterparty as sent, trimmed and
-- lower-cased (an alias, such as 'Google Cloud Storage' for GCS, stays a group of its own).
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform: device sync)'),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
    counterparty_type AS recipient_type,
    event_type,
    destination_country,
    purpose,
    coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
    decision,
    arraySort(groupUniqArrayArray(data_categories)) AS categories,
    count() AS events,
    min(occurred_at) AS first_disclosed,
    max(occurred_at) AS last_disclosed
FROM audit_events
WHERE user_id = {user:String}
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY recipient_key, recipient_type, event_type, destination_country, purpose, legal_basis, decision
ORDER BY decision, last_disclosed DESC, recipient
