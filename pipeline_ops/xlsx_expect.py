"""What a user sees in Excel for each value the database returns: the contract tests read workbooks back against."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from openpyxl.utils.escape import unescape as excel_unescape
from pymysql.constants import FIELD_TYPE

from export_to_xlsx.xlsx import MAX_CELL_CHARS, TRUNCATION_MARK


def query(conn, sql: str, params: dict | None = None):
    """Column names, rows and column types of ``sql`` (``params`` bound by the driver), read with an
    ordinary buffered cursor."""
    import pymysql

    with conn.cursor(pymysql.cursors.Cursor) as cur:
        cur.execute(sql, params)
        columns = [d[0] for d in cur.description]
        types = {d[0]: (d[1], d[3]) for d in cur.description}  # (type code, length)
        rows = cur.fetchall()
    return columns, rows, types


def assert_rows_match(read_rows, columns, db_rows, types) -> None:
    """Every cell read back from the workbook equals what the database returned for it."""
    assert len(read_rows) == len(db_rows), f"{len(read_rows)} rows in the workbook, {len(db_rows)} in the database"
    for got, want in zip(read_rows, db_rows):
        for column, r, v in zip(columns, got, want):
            type_code, length = types[column]
            assert_cell(r, v, column, bit_width=length if type_code == FIELD_TYPE.BIT else None)


def assert_cell(read, value, column: str, *, bit_width: int | None = None) -> None:
    """What a user sees in Excel for ``value`` as the database returned it."""
    where = f"column {column}: wrote {value!r}, read {read!r}"
    if value is None or value == b"" or value == "":
        assert read is None, where
    elif bit_width is not None:  # BIT(1) is a boolean, wider BIT columns are numbers
        number = int.from_bytes(value, "big")
        assert read == (bool(number) if bit_width == 1 else number), where
    elif isinstance(value, bytes):
        assert read == value.hex(), where
    elif isinstance(value, int):
        significant = len(str(abs(value)).rstrip("0"))
        assert read == (value if significant <= 15 else str(value)), where
    elif isinstance(value, Decimal):
        if len(value.normalize().as_tuple().digits) <= 15:
            assert isinstance(read, (int, float)) and math.isclose(read, float(value), rel_tol=1e-15), where
        else:
            assert read == format(value, "f"), where
    elif isinstance(value, float):
        assert math.isclose(read, value, rel_tol=1e-15), where
    elif isinstance(value, dt.datetime):
        if value.date() < dt.date(1900, 3, 1):
            assert read == value.isoformat(sep=" "), where
        else:
            assert isinstance(read, dt.datetime) and abs(read - value) <= dt.timedelta(milliseconds=1), where
    elif isinstance(value, dt.date):
        if value < dt.date(1900, 3, 1):
            assert read == value.isoformat(), where
        else:
            assert read == dt.datetime.combine(value, dt.time()), where
    elif isinstance(value, dt.timedelta):
        if value < dt.timedelta(0):
            assert isinstance(read, str) and read.startswith("-"), where
            hours, minutes, seconds = read[1:].split(":")
            assert dt.timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds)) == -value, where
        else:
            assert abs(read - value) <= dt.timedelta(milliseconds=1), where
    elif isinstance(value, str):
        expected = value
        for ch in "\x00\x07\x1f\x0b":
            expected = expected.replace(ch, "\ufffd")
        if len(expected) > MAX_CELL_CHARS:
            assert read.endswith(TRUNCATION_MARK) and len(read) == MAX_CELL_CHARS, where
            assert expected.startswith(read[: -len(TRUNCATION_MARK)]), where
        else:
            assert excel_unescape(read) == expected, where
    else:
        raise AssertionError(f"unexpected type in fixture: {where}")
