-- One row: how many orders the day had and what they add up to, from the same snapshot as the orders sheet.
SELECT CAST(%(day)s AS DATE) AS day,
       COUNT(*) AS orders,
       COALESCE(SUM(amount), 0) AS amount,
       COALESCE(SUM(amount), 0) / NULLIF((SELECT SUM(amount) FROM orders), 0) AS share_of_all
FROM orders
WHERE ordered_at >= %(day)s
  AND ordered_at < %(day)s + INTERVAL 1 DAY
