#!/usr/bin/env python3
"""Benchmark the export against the fetch floor and two other streaming writers, each path in its own process.

    .venv/bin/python bench/export_bench.py [--rows 50000,200000,1000000] [--paths fetch,export,...]
    make bench ROWS=50000,200000

Loads a realistic 12-column table into the MySQL/MariaDB server named by MYSQL_DSN (default: the local
MariaDB), starts moto's S3 server in a process of its own (the local S3 stand-in the export uploads to), then
for each row count runs every path in a fresh process and measures that process's CPU seconds (user + system,
from the kernel's rusage: the machine is shared, so CPU is steadier than wall time), wall seconds, peak RSS and
the size of the workbook. It prints a table, the ratios against the fetch floor and the targets' verdicts.

- fetch:      the floor: an unbuffered cursor (SSCursor, fetchmany 2000) with PyMySQL's default converters,
              rows read and dropped, in a process that also holds the S3 client an export needs
- export:     this project's export function code (run_export): connect, one consistent snapshot, the
              server's bytes encoded per column by the streaming writer, upload to the local S3
- sheets:     the same rows as a 3-sheet report (three queries, each a third of the ids, number formats)
              through run_export, as the function runs a multi-sheet export
- rustpy:     rustpy-xlsxwriter (Rust, streaming) fed the fetch floor's rows as dicts
- xlsxwriter: XlsxWriter in constant_memory mode fed the fetch floor's rows
- openpyxl, naive (not run by default): openpyxl's write-only workbook; pandas.read_sql + to_excel
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # the project root: function packages import as lambdas.<function>, as in Lambda

TABLE = "bench_orders"
PATHS = ("fetch", "export", "sheets", "rustpy", "xlsxwriter")
OPTIONAL_PATHS = ("openpyxl", "naive", "table", "mask")
BATCH = 2000
SHEETS = 3
BUCKET = "bench-source"
FORMATS = {"amount": "#,##0.00", "tax": "0.0000"}
#: At the largest row count (the issue's targets; ratios of one run, not timed tests).
TARGETS = (
    ("export CPU <= 1.7x the fetch floor", lambda by, n: by[("export", n)]["cpu_s"] <= 1.7 * by[("fetch", n)]["cpu_s"]),
    ("export CPU < rustpy-xlsxwriter", lambda by, n: by[("export", n)]["cpu_s"] < by[("rustpy", n)]["cpu_s"]),
    ("export file <= XlsxWriter's (bytes)",
     lambda by, n: by[("export", n)]["file_bytes"] <= by[("xlsxwriter", n)]["file_bytes"]),
    ("export peak RSS <= 1.3x the floor", lambda by, n: by[("export", n)]["rss_mb"] <= 1.3 * by[("fetch", n)]["rss_mb"]),
    ("3-sheet CPU <= 1.7x the fetch floor", lambda by, n: by[("sheets", n)]["cpu_s"] <= 1.7 * by[("fetch", n)]["cpu_s"]),
    ("3-sheet peak RSS <= 1.3x the floor", lambda by, n: by[("sheets", n)]["rss_mb"] <= 1.3 * by[("fetch", n)]["rss_mb"]),
)


def dsn() -> dict:
    url = urlparse(os.environ.get("MYSQL_DSN", "mysql://root@127.0.0.1:3306/test"))
    return dict(host=url.hostname or "127.0.0.1", port=url.port or 3306, user=unquote(url.username or "root"),
                password=unquote(url.password or ""), database=url.path.lstrip("/") or "test")


def connect():
    import pymysql

    return pymysql.connect(**dsn(), charset="utf8mb4", autocommit=True)


# --- the data -------------------------------------------------------------------------------------------------


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


def sql(rows: int, low: int = 0) -> str:
    return f"SELECT * FROM {TABLE} WHERE id > {low} AND id <= {rows} ORDER BY id"


# --- the paths, each run in a child process --------------------------------------------------------------------


def rows_of(rows: int):
    """The fetch floor's rows in batches, and the column names."""
    from pymysql.cursors import SSCursor

    cur = connect().cursor(SSCursor)
    cur.execute(sql(rows))
    columns = [d[0] for d in cur.description]

    def batches():
        while batch := cur.fetchmany(BATCH):
            yield batch

    return columns, batches()


def run_fetch(rows: int, out: Path) -> int | None:
    import boto3

    boto3.client("s3")  # what every export holds besides the rows
    for _ in rows_of(rows)[1]:
        pass
    return None


#: ``mask``: two of the twelve columns masked, one keyed hash and one last4, so each row has two masked cells.
MASKS = {"customer_name": "sha256", "description": "last4"}


def run_export(rows: int, out: Path, sheets: int = 1, **fields) -> int:
    import boto3

    from lambdas.export_to_xlsx.database import Endpoint
    from lambdas.export_to_xlsx.export import Target
    from lambdas.export_to_xlsx.export import run_export as export
    from lambdas.export_to_xlsx.definition import ExportDefinition, SheetDefinition

    class Login:
        def get(self, *, refresh: bool = False):
            from lambdas.export_to_xlsx.credentials import Credentials

            return Credentials(dsn()["user"], dsn()["password"])

    step = -(-rows // sheets)
    definition = ExportDefinition(
        name="bench", formats=FORMATS if sheets > 1 else {}, **fields,
        sheets=tuple(SheetDefinition(f"part {n + 1}" if sheets > 1 else "orders",
                                     sql(min(rows, (n + 1) * step), n * step)) for n in range(sheets)))
    d = dsn()
    result = export(definition, endpoint=Endpoint(d["host"], d["port"], d["database"], None), secrets=Login(),
                    s3=boto3.client("s3"), target=Target(BUCKET, "bench/"), temp_dir=out.parent,
                    mask_key=lambda: b"k" * 64)
    return result["bytes"]


def run_rustpy(rows: int, out: Path) -> int:
    from rustpy_xlsxwriter import FastExcel

    columns, batches = rows_of(rows)
    records = (dict(zip(columns, row)) for batch in batches for row in batch)
    FastExcel(str(out)).freeze(row=1).sheet("orders", records).save()
    return out.stat().st_size


def run_xlsxwriter(rows: int, out: Path) -> int:
    import xlsxwriter

    columns, batches = rows_of(rows)
    book = xlsxwriter.Workbook(str(out), {"constant_memory": True, "default_date_format": "yyyy-mm-dd hh:mm:ss"})
    sheet = book.add_worksheet("orders")
    sheet.write_row(0, 0, columns)
    sheet.freeze_panes(1, 0)
    n = 1
    for batch in batches:
        for row in batch:
            sheet.write_row(n, 0, row)
            n += 1
    book.close()
    return out.stat().st_size


def run_openpyxl(rows: int, out: Path) -> int:
    from openpyxl import Workbook

    columns, batches = rows_of(rows)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("orders")
    sheet.append(columns)
    for batch in batches:
        for row in batch:
            sheet.append(row)
    book.save(out)
    return out.stat().st_size


def run_naive(rows: int, out: Path) -> int:
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy")
    pd.read_sql(sql(rows), connect()).to_excel(out, index=False, engine="openpyxl")
    return out.stat().st_size


RUNNERS = {"fetch": run_fetch, "export": run_export, "sheets": lambda rows, out: run_export(rows, out, SHEETS),
           # issue 21: every sheet an Excel Table plus an About sheet; two masked columns
           "table": lambda rows, out: run_export(rows, out, table="TableStyleMedium2", about_sheet=True),
           "mask": lambda rows, out: run_export(rows, out, mask=MASKS),
           "rustpy": run_rustpy, "xlsxwriter": run_xlsxwriter, "openpyxl": run_openpyxl, "naive": run_naive}


def child(path: str, rows: int, out: Path) -> None:
    size = RUNNERS[path](rows, out)
    out.with_suffix(".size").write_text(json.dumps(size))


# --- the local S3 stand-in -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, dict]:
    """moto's S3 server in its own process (its memory and CPU are not the export's), with the bucket."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import boto3

    for _ in range(100):
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            return server, env
        except Exception:  # noqa: BLE001 - not answering yet
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto's S3 server did not start")


# --- measuring -------------------------------------------------------------------------------------------------


def measure(path: str, rows: int, workdir: Path) -> dict:
    out = workdir / f"{path}-{rows}.xlsx"
    size_file = out.with_suffix(".size")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--run-path", path, "--rows", str(rows), "--out", str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"path {path} failed for {rows} rows (status {status})")
    size = json.loads(size_file.read_text())
    out.unlink(missing_ok=True)
    size_file.unlink(missing_ok=True)
    return {"path": path, "rows": rows, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
            "rss_mb": round(usage.ru_maxrss / 1024, 1), "file_mb": round(size / 2**20, 1) if size else None,
            "file_bytes": size}


def median_of(runs: list[dict]) -> dict:
    first = runs[0]
    return {**first, **{k: round(statistics.median(r[k] for r in runs), 2) for k in ("cpu_s", "wall_s", "rss_mb")}}


def print_row(r: dict, floor: dict | None) -> None:
    cpu_ratio = f"{r['cpu_s'] / floor['cpu_s']:.2f}" if floor else "-"
    rss_ratio = f"{r['rss_mb'] / floor['rss_mb']:.2f}" if floor else "-"
    per_million = r["cpu_s"] / r["rows"] * 1e6
    print(f"{r['rows']:>9} {r['path']:>10} {r['cpu_s']:>7} {cpu_ratio:>6} {per_million:>8.2f} {r['wall_s']:>7} "
          f"{r['rss_mb']:>7} {rss_ratio:>6} {r['file_mb'] if r['file_mb'] is not None else '-':>8}", flush=True)


def verdicts(by: dict, counts: list[int]) -> None:
    n = max(counts)
    print(f"\ntargets at {n:,} rows (ratios of this one run):")
    for name, ok in TARGETS:
        try:
            print(f"  {'PASS' if ok(by, n) else 'FAIL'}  {name}")
        except KeyError:
            print(f"  -     {name} (path not run)")
    if ("export", n) in by and ("xlsxwriter", n) in by:
        ours, theirs = by[("export", n)]["file_bytes"], by[("xlsxwriter", n)]["file_bytes"]
        print(f"        export file {ours:,} bytes, XlsxWriter's {theirs:,} ({ours / theirs - 1:+.2%})")
    for path in ("export", "sheets"):
        runs = [by[(path, c)] for c in counts if (path, c) in by]
        if len(runs) > 1:
            growth = runs[-1]["rss_mb"] / runs[0]["rss_mb"]
            print(f"  {'PASS' if growth <= 1.1 else 'FAIL'}  {path} peak RSS flat: {runs[0]['rss_mb']} MB at "
                  f"{runs[0]['rows']:,} rows, {runs[-1]['rss_mb']} MB at {runs[-1]['rows']:,} ({growth:.2f}x, <= 1.1x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50000,200000,1000000")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS + OPTIONAL_PATHS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path, interleaved; the median is shown")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    parser.add_argument("--run-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_path:
        child(args.run_path, int(args.rows), Path(args.out))
        return

    counts = [int(n) for n in args.rows.split(",") if n]
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(RUNNERS)
    if unknown:
        raise SystemExit(f"unknown paths: {sorted(unknown)}; choose from {', '.join(RUNNERS)}")
    load(max(counts))
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "export-bench"
    workdir.mkdir(exist_ok=True)
    server, _ = start_s3()
    by: dict = {}
    try:
        print(f"{'rows':>9} {'path':>10} {'CPU s':>7} {'÷floor':>6} {'CPU s/M':>8} {'wall s':>7} {'RSS MB':>7} "
              f"{'÷floor':>6} {'file MiB':>8}", flush=True)
        for rows in counts:
            runs: dict[str, list] = {p: [] for p in paths}
            for _ in range(args.repeat):
                for path in paths:
                    runs[path].append(measure(path, rows, workdir))
            for path in paths:
                by[(path, rows)] = median_of(runs[path])
                print_row(by[(path, rows)], by.get(("fetch", rows)))
    finally:
        server.terminate()
        server.wait()
    verdicts(by, counts)
    if args.json:
        args.json.write_text(json.dumps(list(by.values()), indent=2) + "\n")


if __name__ == "__main__":
    main()
