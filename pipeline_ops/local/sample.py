"""The data a local run works on: the environment's own init SQL, and workbooks put in by hand."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from lambdas.db_bootstrap.bootstrap import split_statements

DEFAULT_DSN = "mysql://root@127.0.0.1:3306/test"

#: The original acceptance test: workbooks a person (or another system) puts into the source bucket, not the
#: export, travel too, wherever they are and whichever of the filtered endings they have; other objects stay.
HAND_UPLOADS = {"report.xlsx": True, "team/q3/Summary.XLSX": True, "notes.txt": False, "team/Mixed.Xlsx": False}


def mysql_from_env() -> dict:
    url = urlparse(os.environ.get("MYSQL_DSN", DEFAULT_DSN))
    return {"host": url.hostname or "127.0.0.1", "port": url.port or 3306, "user": unquote(url.username or "root"),
            "password": unquote(url.password or ""), "database": url.path.lstrip("/") or "test"}


def load_sample_data(mysql: dict, init_sql: Path) -> int:
    """Run the environment's init SQL (what the bootstrap applies at deploy) against ``mysql``, statement by
    statement with the bootstrap's own splitter: the local run and the tests use the data a deploy creates.
    Returns the number of statements run."""
    import pymysql

    statements = split_statements(init_sql.read_text(encoding="utf-8"))
    try:
        conn = pymysql.connect(host=mysql["host"], port=mysql["port"], user=mysql["user"],
                               password=mysql["password"], database=mysql["database"], autocommit=True,
                               charset="utf8mb4")
    except pymysql.MySQLError as exc:
        raise RuntimeError(f"cannot load the sample data into {mysql['host']}:{mysql['port']}/{mysql['database']} "
                           f"(MYSQL_DSN): {exc.args[-1]}") from None
    try:
        with conn.cursor() as cur:
            for line, sql in statements:
                try:
                    cur.execute(sql)
                except pymysql.MySQLError as exc:
                    raise RuntimeError(f"{init_sql.name} line {line}: {exc.args[-1]}") from None
    finally:
        conn.close()
    return len(statements)


def hand_made_workbook(title: str) -> bytes:
    """A small workbook written by openpyxl, so it did not come from the export's own writer."""
    import io

    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["made by hand", title])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def first_run_values(export, deploy_day) -> dict:
    """The parameter values of an export's first scheduled run after a deploy on ``deploy_day``: each
    parameter's default, taken with the function's own parser at 06:00 UTC the next day (so ``yesterday``
    is the deploy day, when dev's init SQL dates its newest rows)."""
    import datetime as dt

    from lambdas.export_to_xlsx.params import resolve

    if isinstance(deploy_day, str):  # a connection that reads DATE as the server's text
        deploy_day = dt.date.fromisoformat(deploy_day)
    now = dt.datetime.combine(deploy_day + dt.timedelta(days=1), dt.time(6), tzinfo=dt.timezone.utc)
    return resolve(export.parameters, {}, now, export.time_zone, export=export.name)
