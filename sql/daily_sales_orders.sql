-- The orders of one day (parameter `day`, the export's time zone's calendar day).
SELECT id, customer, amount, ordered_at
FROM orders
WHERE ordered_at >= %(day)s
  AND ordered_at < %(day)s + INTERVAL 1 DAY
ORDER BY id
