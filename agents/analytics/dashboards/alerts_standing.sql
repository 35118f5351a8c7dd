-- title: Alerts standing
-- description: Alerts raised in the range and not cleared by its end (or now), one row per kind and subject (its most recent standing raise), RED first, then the most recently raised: the full text a chat message may have cut, and when it was raised (the shop's time zone). An alert nothing clears (a one-off notice) leaves the list with the range.
-- chart: table
SELECT
    kind,
    subject,
    argMax(raised_severity, raised_ms) AS severity,
    toDateTime(intDiv(max(raised_ms), 1000), {tz:String}) AS last_raised_at,
    argMax(raised_message, raised_ms) AS message
FROM
(
    -- A clearing names the raise it ends by its id (the raise's id and ':cleared'): one subject can carry
    -- several alerts of a kind at once (a refund's SOP limits), and ending one leaves the others standing. A
    -- clearing whose raise has another id (the id holds the time it was raised) ends every earlier raise of
    -- its kind and subject. One join a level: old ClickHouse servers take no more.
    SELECT kind, subject, raised_severity, raised_message, raised_ms
    FROM
    (
        SELECT kind, subject, raised_severity, raised_message, raised_ms
        FROM
        (
            SELECT event_id AS stem, kind, subject, severity AS raised_severity, message AS raised_message,
                   event_time_ms AS raised_ms
            FROM alerts FINAL
            WHERE cleared = 0 AND event_time_ms >= {from_ms:Int64}
              AND event_time_ms < least({now_ms:Int64}, {to_ms:Int64})
              AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
        ) AS raises
        LEFT JOIN
        (
            SELECT replaceRegexpOne(event_id, ':cleared$', '') AS stem, max(event_time_ms) AS own_end_ms
            FROM alerts FINAL
            WHERE cleared = 1 AND event_time_ms < least({now_ms:Int64}, {to_ms:Int64})
              AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
            GROUP BY stem
        ) AS own USING stem
        WHERE own_end_ms < raised_ms
    ) AS unended
    LEFT JOIN
    (
        SELECT kind, subject, max(event_time_ms) AS other_end_ms
        FROM alerts FINAL
        WHERE cleared = 1 AND event_time_ms < least({now_ms:Int64}, {to_ms:Int64})
          AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
          AND replaceRegexpOne(event_id, ':cleared$', '') NOT IN (SELECT event_id FROM alerts FINAL WHERE cleared = 0)
        GROUP BY kind, subject
    ) AS other USING (kind, subject)
    WHERE other_end_ms < raised_ms
)
GROUP BY kind, subject
ORDER BY severity = 'RED' DESC, max(raised_ms) DESC, kind, subject
