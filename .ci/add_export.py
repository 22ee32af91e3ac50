"""Do what the README's "Adding an export" tells a user, in the project copy given as argv[1]: a 2-sheet
export with a date parameter in dev's cdk.json, its table and rows in dev's init SQL. `.ci/grows-by-config`
then updates the snapshots as documented and runs `make test` there."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
cdk_json = root / "cdk.json"
config = json.loads(cdk_json.read_text())
config["context"]["environments"]["dev"]["exports"].append({
    "name": "regional_sales",
    "sheets": [
        {"name": "By region", "sql": "SELECT region, SUM(amount) AS amount FROM regional_sales "
                                     "WHERE day = %(day)s GROUP BY region ORDER BY region"},
        {"name": "Rows", "sql": "SELECT id, region, amount, day FROM regional_sales WHERE day = %(day)s ORDER BY id"},
    ],
    "parameters": [{"name": "day", "type": "date", "default": "yesterday"}],
    "schedule": "cron(0 6 * * ? *)",
})
cdk_json.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
with (root / "sql" / "dev-init.sql").open("a", encoding="utf-8") as init_sql:
    init_sql.write("""
CREATE TABLE IF NOT EXISTS regional_sales (
  id INT PRIMARY KEY,
  region VARCHAR(8) NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  day DATE NOT NULL
) CHARACTER SET utf8mb4;

INSERT IGNORE INTO regional_sales (id, region, amount, day) VALUES
  (1, 'EU', 10.00, '2026-11-02'),
  (2, 'US', 20.50, '2026-11-02'),
  (3, 'EU', 5.25, CURRENT_DATE);
""")
print(f"added export regional_sales to dev in {cdk_json} and its table to {root / 'sql' / 'dev-init.sql'}")
