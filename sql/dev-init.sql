-- Schema and sample rows for the dev environment's exports (database.init_sql in cdk.json).
-- Applied at deploy by the database bootstrap, once per content of this file: edit it and the
-- next deploy runs it again from the top, so every statement must be safe to run twice.

CREATE TABLE IF NOT EXISTS orders (
  id INT PRIMARY KEY,
  customer VARCHAR(80) NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  ordered_at DATETIME NOT NULL
) CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS customers (
  id INT PRIMARY KEY,
  name VARCHAR(80) NOT NULL,
  since DATE,
  vip BOOL NOT NULL DEFAULT FALSE
) CHARACTER SET utf8mb4;

INSERT IGNORE INTO customers (id, name, since, vip) VALUES
  (1, 'Ada Lovelace', '2015-03-15', TRUE),
  (2, 'Grace Hopper', '2018-07-01', FALSE),
  (3, 'Kund Ünïcödé; with a semicolon', '2021-11-30', FALSE);

INSERT IGNORE INTO orders (id, customer, amount, ordered_at) VALUES
  (1, 'Ada Lovelace', 35.00, '2026-11-01 10:00:00'),
  (2, 'Grace Hopper', 7.50, '2026-11-02 11:30:00'),
  (3, 'Kund Ünïcödé; with a semicolon', 1234.56, '2026-11-03 09:15:00'),
  -- dated the day of the deploy, so the first scheduled daily_sales run ("yesterday") has rows
  (4, 'Ada Lovelace', 12.00, CURRENT_DATE + INTERVAL 9 HOUR),
  (5, 'Grace Hopper', 99.90, CURRENT_DATE + INTERVAL 10 HOUR);
