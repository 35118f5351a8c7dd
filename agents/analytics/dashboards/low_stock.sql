-- title: Low-stock SKUs
-- description: SKUs whose newest published level is below the threshold (parameter threshold), lowest first.
-- chart: bar x=sku y=available,locked
SELECT
    sku,
    argMax(available, event_time_ms) AS available,
    argMax(on_hand, event_time_ms) AS on_hand,
    argMax(locked, event_time_ms) AS locked,
    argMax(sold, event_time_ms) AS sold,
    argMax(paused, event_time_ms) AS paused
FROM stock_levels FINAL
WHERE ({sku:String} = '' OR sku = {sku:String})
GROUP BY sku
HAVING available < {threshold:Int64}
ORDER BY available, sku
LIMIT 500
