"""The order-peak forecast: orders per hour for the next day from the last week of orders and the known
drivers (promotion calendar, holidays, optional hourly CSV drivers); its rolling-origin backtest."""
