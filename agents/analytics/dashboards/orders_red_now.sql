-- title: Orders red now
-- description: Orders whose SLA alert is raised and not cleared, oldest first: every one raised before the range's end, however long ago (the range's start is not used, so the oldest stay in view). Times in the shop's time zone.
-- chart: table
SELECT
    subject AS order_id,
    toDateTime(intDiv(raised_ms, 1000), {tz:String}) AS raised_at,
    round((({now_ms:Int64}) - raised_ms) / 60000, 1) AS red_for_min,
    message
FROM
(
    SELECT
        subject,
        minIf(event_time_ms, cleared = 0) AS raised_ms,
        countIf(cleared = 1) AS clearings,
        anyIf(message, cleared = 0) AS message
    FROM alerts FINAL
    WHERE kind = 'sla_breach'
    GROUP BY subject
)
WHERE raised_ms > 0 AND clearings = 0
  AND raised_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR startsWith(subject, concat({channel:String}, ':')))
ORDER BY raised_ms
