-- name: transfers-outside-eea
-- description: Flows to a destination outside the protected zone (the EEA, as it stood when each flow happened), each event counted once, by recipient, country, transfer mechanism, legal basis and decision, with the categories carried.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient). Rows written
-- before row format 2 have none: they are grouped with it by their counterparty as sent, trimmed and
-- lower-cased (an alias, such as 'Google Cloud Storage' for GCS, stays a group of its own).
-- transfer_mechanism is '(not recorded)' for rows written before row format 2 (the zone was then not
-- dated: outside_protected_zone is the zone of the code that wrote the row).
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform)'),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
    counterparty_type AS recipient_type,
    destination_country,
    coalesce(transfer_mechanism, '(not recorded)') AS transfer_mechanism,
    coalesce(legal_basis, '(unknown purpose)') AS legal_basis,
    decision,
    count() AS events,
    sum(record_count) AS records,
    arraySort(groupUniqArrayArray(data_categories)) AS categories,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen
FROM audit_events
WHERE outside_protected_zone
  AND occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY recipient_key, recipient_type, destination_country, transfer_mechanism, legal_basis, decision
ORDER BY events DESC, recipient, destination_country, transfer_mechanism, decision
