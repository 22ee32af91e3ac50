#!/usr/bin/env python3
"""Benchmark the export path against the naive pandas path and a fetch-only floor.

    .venv/bin/python bench/export_bench.py [--rows 50000,200000,1000000] [--paths export,naive,fetch]

Loads a realistic 12-column table into the MySQL/MariaDB server named by MYSQL_DSN
(default: the local MariaDB), then for each row count runs every path in a process of
its own, measuring wall time and that process's peak RSS (from the kernel's rusage), and
the size of the file written. Prints a table and the ratios against the naive path and the
fetch-only floor measured in the same run:

- export:   this project's path (unbuffered cursor -> streaming .xlsx writer), to a local file
- sheets:   the same rows as a 3-sheet report: three queries (each a third of the ids) read in
            one consistent snapshot into three named sheets, with number formats, as the
            export function runs a multi-sheet export
- openpyxl: unbuffered cursor -> openpyxl write-only workbook (with lxml), for reference
- naive:    pandas.read_sql -> DataFrame.to_excel(engine="openpyxl"), as many tutorials do
- fetch:    unbuffered cursor, rows read and dropped (the floor for any export)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "lambdas")]

TABLE = "bench_orders"
PATHS = ("export", "sheets", "openpyxl", "naive", "fetch")
TARGETS = ("at 1M rows: export >= 2x naive throughput, export RSS <= 1/50 naive RSS; every N: export and sheets "
           "RSS <= 1.3x fetch RSS; sheets RSS flat in total rows (largest N <= 1.15x smallest N)")
SHEETS = 3


def dsn() -> dict:
    url = urlparse(os.environ.get("MYSQL_DSN", "mysql://root@127.0.0.1:3306/test"))
    return dict(host=url.hostname or "127.0.0.1", port=url.port or 3306, user=unquote(url.username or "root"),
                password=unquote(url.password or ""), database=url.path.lstrip("/") or "test")


def connect():
    import pymysql

    return pymysql.connect(**dsn(), charset="utf8mb4", autocommit=True)


def load(rows: int) -> None:
    """(Re)create the table with ``rows`` rows unless it already holds exactly that many."""
    import pymysql

    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                    "AND table_name = %s", (TABLE,))
        if cur.fetchone()[0]:
            cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
            if cur.fetchone()[0] == rows:
                return
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"""CREATE TABLE {TABLE} (
            id BIGINT PRIMARY KEY, customer_id INT NOT NULL, customer_name VARCHAR(100) NOT NULL,
            description VARCHAR(255) NOT NULL, amount DECIMAL(12,2) NOT NULL, tax DECIMAL(10,4),
            quantity INT NOT NULL, ordered_on DATE NOT NULL, created_at DATETIME NOT NULL,
            shipped_at DATETIME NULL, status VARCHAR(20) NOT NULL, note VARCHAR(200) NULL
        ) CHARACTER SET utf8mb4""")
        started = time.monotonic()
        for setting in ("max_recursive_iterations", "cte_max_recursion_depth"):  # MariaDB, MySQL
            try:
                cur.execute(f"SET SESSION {setting} = 1000000")
            except pymysql.err.MySQLError:
                pass
        batch = 20_000
        for start in range(1, rows + 1, batch):
            end = min(start + batch - 1, rows)
            cur.execute(f"""INSERT INTO {TABLE}
                WITH RECURSIVE seq(n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM seq WHERE n < {end})
                SELECT n, n % 50000, CONCAT('Customer ', n % 50000, ' Müller-Łukasiewicz'),
                  CONCAT('Bestellung ', n, ' — ünïcödé ✓ 注文 ', MD5(n)),
                  ROUND((n * 7919 % 1000000) / 100, 2), IF(n % 7 = 0, NULL, ROUND((n % 1000) / 37, 4)),
                  1 + n % 20, DATE('2020-01-01') + INTERVAL (n % 2000) DAY,
                  TIMESTAMP('2020-01-01 00:00:00') + INTERVAL (n * 37) SECOND,
                  IF(n % 3 = 0, NULL, TIMESTAMP('2020-01-02 08:00:00') + INTERVAL (n * 41) SECOND),
                  ELT(1 + n % 4, 'new', 'paid', 'shipped', 'cancelled'),
                  IF(n % 5 = 0, CONCAT('note ', n), NULL)
                FROM seq""")
        print(f"loaded {rows} rows in {time.monotonic() - started:.1f} s", flush=True)
    conn.close()


SQL = f"SELECT * FROM {TABLE} WHERE id <= %d ORDER BY id"


def run_path(path: str, rows: int, out: Path) -> None:
    """One path, in this process (the parent measures it)."""
    sql = SQL % rows
    if path == "naive":
        import warnings

        import pandas as pd

        warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy")
        conn = connect()
        frame = pd.read_sql(sql, conn)
        frame.to_excel(out, index=False, engine="openpyxl")
        return
    from pymysql.cursors import SSCursor

    conn = connect()
    cur = conn.cursor(SSCursor)
    cur.execute(sql)
    columns = [d[0] for d in cur.description]
    if path == "fetch":
        while cur.fetchmany(2000):
            pass
    elif path == "export":
        from export_to_xlsx.xlsx import XlsxStreamWriter

        writer = XlsxStreamWriter(out, sheet_name="orders", columns=columns)
        while batch := cur.fetchmany(2000):
            writer.write_rows(batch)
        writer.close()
    elif path == "sheets":
        cur.close()
        conn.close()
        run_sheets(rows, out)
    elif path == "openpyxl":
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("orders")
        ws.append(columns)
        while batch := cur.fetchmany(2000):
            for row in batch:
                ws.append(row)
        wb.save(out)
    else:
        raise SystemExit(f"unknown path {path}")


def run_sheets(rows: int, out: Path) -> None:
    """A 3-sheet report through the function's own code: one snapshot, one stream per sheet."""
    import pymysql

    from export_to_xlsx.database import QueryStream, begin_snapshot, end_snapshot
    from export_to_xlsx.xlsx import XlsxStreamWriter

    conn = pymysql.connect(**dsn(), charset="utf8mb4", autocommit=False)
    begin_snapshot(conn, export="bench")
    writer = XlsxStreamWriter(out, formats={"amount": "#,##0.00", "tax": "0.0000"})
    step = -(-rows // SHEETS)
    for n in range(SHEETS):
        sql = f"SELECT * FROM {TABLE} WHERE id > {n * step} AND id <= {min(rows, (n + 1) * step)} ORDER BY id"
        stream = QueryStream(conn, sql, export="bench", sheet=f"part {n + 1}")
        writer.start_sheet(f"part {n + 1}", stream.columns)
        for batch in stream.batches():
            writer.write_rows(batch)
        stream.close()
    end_snapshot(conn)
    writer.close()
    conn.close()


def measure(path: str, rows: int, workdir: Path) -> dict:
    out = workdir / f"{path}-{rows}.xlsx"
    out.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--run-path", path, "--rows", str(rows), "--out", str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"path {path} failed for {rows} rows (status {status})")
    result = {"path": path, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "file_mb": round(out.stat().st_size / 2**20, 1) if out.exists() else None}
    out.unlink(missing_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50000,200000,1000000")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--run-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = parser.parse_args()
    if args.run_path:
        run_path(args.run_path, int(args.rows), Path(args.out))
        return

    counts = [int(n) for n in args.rows.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    load(max(counts))
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "export-bench"
    workdir.mkdir(exist_ok=True)
    results = []
    print(f"{'rows':>9} {'path':>9} {'seconds':>9} {'rows/s':>9} {'peak RSS MB':>12} {'file MB':>8}", flush=True)
    for rows in counts:
        for path in paths:
            r = measure(path, rows, workdir)
            results.append(r)
            print(f"{rows:>9} {path:>9} {r['seconds']:>9} {r['rows_per_s']:>9} {r['peak_rss_mb']:>12} "
                  f"{r['file_mb'] if r['file_mb'] is not None else '-':>8}", flush=True)

    print(f"\nratios (same run, same machine); targets: {TARGETS}")
    by = {(r["path"], r["rows"]): r for r in results}
    verdicts = []
    for rows in counts:
        e, n, f = by.get(("export", rows)), by.get(("naive", rows)), by.get(("fetch", rows))
        line = f"{rows:>9} rows:"
        if e and n:
            speed = n["seconds"] / e["seconds"]
            memory = n["peak_rss_mb"] / e["peak_rss_mb"]
            line += f" export/naive throughput {speed:.2f}x, naive/export peak RSS {memory:.1f}x;"
            if rows >= 1_000_000:
                verdicts += [("throughput >= 2x naive", speed >= 2), ("RSS <= 1/50 naive", memory >= 50)]
        if e and f:
            floor = e["peak_rss_mb"] / f["peak_rss_mb"]
            line += f" export/fetch peak RSS {floor:.2f}x, export/fetch time {e['seconds'] / f['seconds']:.2f}x"
            verdicts.append((f"RSS within 1.3x fetch at {rows}", floor <= 1.3))
        m = by.get(("sheets", rows))
        if m and f:
            line += f"; sheets/fetch peak RSS {m['peak_rss_mb'] / f['peak_rss_mb']:.2f}x, sheets/export time " \
                    f"{m['seconds'] / e['seconds']:.2f}x" if e else ""
            verdicts.append((f"3-sheet RSS within 1.3x fetch at {rows}", m["peak_rss_mb"] / f["peak_rss_mb"] <= 1.3))
        print(line)
    sheet_runs = [by[("sheets", n)] for n in counts if ("sheets", n) in by]
    if len(sheet_runs) > 1:
        low, high = sheet_runs[0], sheet_runs[-1]
        growth = high["peak_rss_mb"] / low["peak_rss_mb"]
        print(f"3-sheet peak RSS: {low['peak_rss_mb']} MB at {low['rows']} rows, {high['peak_rss_mb']} MB at "
              f"{high['rows']} rows ({growth:.2f}x for {high['rows'] / low['rows']:.0f}x the rows)")
        verdicts.append(("3-sheet RSS flat in total rows (<= 1.15x)", growth <= 1.15))
    for name, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
