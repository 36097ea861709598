-- name: ropa-flows
-- description: The observed side of the Art. 30(1) record (flowaudit ropa): flows by the subject's country, purpose, recipient, destination, transfer mechanism and the categories carried, each event once, with events, blocked events and when first and last seen.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- `flowaudit ropa` assigns each row to a controller by user_country (policy/controllers.yaml) and
-- compares it with the register; a row is one combination, so the events of a purpose add up.
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient; '' for a
-- device sync, the platform). Rows written before row format 2 have none: they are grouped by their
-- counterparty as sent, trimmed and lower-cased, and a null transfer_mechanism there means "not
-- recorded". categories: the event's categories, sorted (an event carries one combination).
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    user_country,
    purpose,
    event_type,
    counterparty_type AS recipient_type,
    argMax(coalesce(counterparty_name, trimBoth(counterparty), ''),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
    destination_country,
    outside_protected_zone,
    transfer_mechanism,
    arraySort(data_categories) AS categories,
    count() AS events,
    countIf(decision = 'blocked') AS blocked,
    min(occurred_at) AS first_seen,
    max(occurred_at) AS last_seen
FROM audit_events
WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY user_country, purpose, event_type, recipient_type, recipient_key, destination_country,
         outside_protected_zone, transfer_mechanism, categories
ORDER BY user_country, purpose, event_type, recipient, destination_country, transfer_mechanism, categories
