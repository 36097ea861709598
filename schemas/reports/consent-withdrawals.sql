-- name: consent-withdrawals
-- description: Per consent withdrawal in the period (Art. 17(2), 19): kind = notify, the recipients of the allowed flows that relied on the consent before it was withdrawn (to notify); kind = after-withdrawal, flows that still cited it at or after the withdrawal, with their decision (consent-not-valid blocks them); kind = none, a withdrawal that no flow cited.
-- parameters: since, until, user?
-- clickhouse-client: --param_since='2025-01-01 00:00:00' --param_until='2100-01-01 00:00:00' --param_user=''
-- Two records of the same question:
-- * consent_withdrawal_notices (schemas/sql/consent.sql) is what the store knew when the withdrawal
--   was written: the allowed flows already in audit_events then. Flows of the consent written after
--   it (topics are not ordered among themselves) are not in it.
-- * this report joins every withdrawal to audit_events when it runs: it is complete.
--   stored_notices says how many of a group's flows the stored notice holds (fewer than flows:
--   the flow was written after the withdrawal).
-- since/until select withdrawals by when they happened; --user (optional: '' = every subject) one
-- subject's. Recipients: the registry's canonical name (counterparty_name), else (rows before row
-- format 2) the counterparty as sent. A consent granted again after a withdrawal: the allowed flows
-- of the new grant show as after-withdrawal of the earlier withdrawal, with decision allowed.
WITH
    withdrawals AS (
        SELECT event_id AS withdrawal_event_id, user_id, consent_id, purpose, occurred_at AS withdrawn_at
        FROM consent_events
        WHERE action = 'withdrawn'
          AND occurred_at >= {since:DateTime64(3, 'UTC')}
          AND occurred_at < {until:DateTime64(3, 'UTC')}
          AND ({user:String} = '' OR user_id = {user:String})
    ),
    flows AS (
        SELECT event_id, user_id, consent_id, occurred_at, decision, counterparty_type,
               coalesce(counterparty_name, trimBoth(counterparty), '(platform)') AS recipient,
               destination_country, data_categories
        FROM audit_events
        WHERE user_id IN (SELECT user_id FROM withdrawals)
          AND consent_id IN (SELECT consent_id FROM withdrawals)
    )
SELECT
    multiIf(isNull(f.event_id), 'none', f.occurred_at < w.withdrawn_at, 'notify', 'after-withdrawal') AS kind,
    w.withdrawal_event_id AS withdrawal_event_id,
    w.user_id AS user_id,
    w.consent_id AS consent_id,
    w.purpose AS purpose,
    w.withdrawn_at AS withdrawn_at,
    f.recipient AS recipient,
    f.counterparty_type AS recipient_type,
    f.destination_country AS destination_country,
    f.decision AS decision,
    count(f.event_id) AS flows,
    countIf((w.withdrawal_event_id, f.event_id) IN
            (SELECT withdrawal_event_id, flow_event_id FROM consent_withdrawal_notices)) AS stored_notices,
    arraySort(groupUniqArrayArray(f.data_categories)) AS categories,
    min(f.occurred_at) AS first_flow,
    max(f.occurred_at) AS last_flow
FROM withdrawals AS w
LEFT JOIN flows AS f ON f.user_id = w.user_id AND f.consent_id = w.consent_id
WHERE isNull(f.event_id) OR f.occurred_at >= w.withdrawn_at OR f.decision = 'allowed'
GROUP BY kind, withdrawal_event_id, user_id, consent_id, purpose, withdrawn_at, recipient, recipient_type,
         destination_country, decision
ORDER BY withdrawn_at, withdrawal_event_id, kind = 'after-withdrawal', kind, recipient, decision
SETTINGS join_use_nulls = 1
