-- title: Alerts standing
-- description: Alerts raised in the range and not cleared by its end (or now), one row per kind and subject, RED first, then the most recently raised: the full text a chat message may have cut, and when it was last raised (the shop's time zone). An alert nothing clears (a one-off notice) leaves the list with the range.
-- chart: table
SELECT
    kind,
    subject,
    severity,
    toDateTime(intDiv(raised_ms, 1000), {tz:String}) AS last_raised_at,
    message
FROM
(
    -- The newest record of each alert as the range ends; a raise and its clearing stamped in one
    -- millisecond leave it cleared.
    SELECT
        kind,
        subject,
        argMax(cleared, (event_time_ms, cleared)) AS cleared_last,
        argMax(severity, (event_time_ms, cleared)) AS severity,
        argMax(message, (event_time_ms, cleared)) AS message,
        max(event_time_ms) AS raised_ms
    FROM alerts FINAL
    WHERE event_time_ms < least({now_ms:Int64}, {to_ms:Int64})
    GROUP BY kind, subject
)
WHERE cleared_last = 0 AND raised_ms >= {from_ms:Int64}
ORDER BY severity = 'RED' DESC, raised_ms DESC, kind, subject
