-- name: flow-map
-- description: The data-flow map's rows (`flowaudit map`, the worker's /flowaudit/map/): events and blocked events per set of data categories carried, purpose, recipient, destination country, whether the flow left the protected zone (as it stood when it happened) and its transfer mechanism.
-- parameters: since, until
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00'
-- Grouped by the event's whole (sorted) set of categories rather than one row per category
-- (arrayJoin): the map draws category -> purpose edges once per category an event carries, and
-- every later edge (purpose -> recipient -> country) once per event, and only the set gives both
-- counts exactly (an arrayJoin would count an event of two categories twice past its purpose).
-- Recipients: the registry's canonical name (counterparty_name; a sharing's recipient); a device sync
-- goes to the platform. Rows written before row format 2 have none: they are grouped with it by
-- their counterparty as sent, trimmed and lower-cased (as transfers-outside-eea does).
-- transfer_mechanism is NULL inside the zone, '(not recorded)' outside it for rows written before
-- row format 2.
WITH lower(trimBoth(coalesce(counterparty_name, counterparty, ''))) AS recipient_key
SELECT
    arraySort(arrayDistinct(data_categories)) AS categories,
    purpose,
    argMax(coalesce(counterparty_name, trimBoth(counterparty), '(platform: device sync)'),
           (row_format, coalesce(counterparty_name, trimBoth(counterparty), ''))) AS recipient,
    destination_country,
    outside_protected_zone,
    if(outside_protected_zone, coalesce(transfer_mechanism, '(not recorded)'), NULL) AS mechanism,
    count() AS events,
    countIf(decision = 'blocked') AS blocked,
    arraySort(groupUniqArray(policy_version)) AS policy_versions
FROM audit_events
WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
  AND occurred_at < {until:DateTime64(3, 'UTC')}
GROUP BY categories, purpose, recipient_key, destination_country, outside_protected_zone, mechanism
ORDER BY events DESC, recipient, destination_country, purpose, categories
