"""What a user sees in a spreadsheet for each value the database returns: the contract tests read workbooks back against.

``expect(value)`` states the README's conversion rules ("What the workbook holds") on their own, without the
writer's code; ``matches(expected, read)`` compares what a reader returned, once turned into Python values.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from pymysql.constants import FIELD_TYPE

from pipeline_ops.checks import check

#: The README's limits, stated here again on purpose (not imported from the writer).
CELL_UNITS = 32_767  # UTF-16 code units Excel keeps in a cell
MARK = "…[truncated]"
EXACT_DIGITS = 15
FIRST_DATE = dt.date(1900, 3, 1)
LAST_INSTANT = dt.datetime(9999, 12, 31, 23, 59, 59, 999_000)  # Excel's last, to the millisecond
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True)
class Expected:
    """``kind`` is one of empty, number, text, bool, date, datetime, duration."""

    kind: str
    value: object = None

    def __str__(self) -> str:
        return f"{self.kind} {self.value!r}"


EMPTY = Expected("empty")


def expect(value: object, *, bit_width: int | None = None) -> Expected:
    """What a spreadsheet shows for ``value`` (as PyMySQL returns it; BIT columns as bytes, with their width)."""
    if value is None or value == b"" or value == "":
        return EMPTY
    if bit_width is not None:  # BIT(1) is a boolean, wider BIT columns are numbers
        number = int.from_bytes(value, "big")
        return Expected("bool", bool(number)) if bit_width == 1 else _number(Decimal(number))
    if isinstance(value, bool):
        return Expected("bool", value)
    if isinstance(value, (bytes, bytearray)):
        return Expected("text", bytes(value).hex())
    if isinstance(value, int):
        return _number(Decimal(value))
    if isinstance(value, Decimal):
        return _number(value) if value.is_finite() else EMPTY
    if isinstance(value, float):
        return Expected("number", value) if math.isfinite(value) else EMPTY
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        rounded = _to_millisecond(value)
        if value.date() < FIRST_DATE or rounded is None or rounded > LAST_INSTANT:
            return Expected("text", value.isoformat(sep=" "))  # every digit of what the database holds
        return Expected("datetime", rounded)
    if isinstance(value, dt.date):
        return Expected("text", value.isoformat()) if value < FIRST_DATE else Expected("date", value)
    if isinstance(value, dt.timedelta):
        if value < dt.timedelta(0):
            return Expected("text", "-" + _clock(-value))
        return Expected("duration", dt.timedelta(milliseconds=round_half_up(value / dt.timedelta(milliseconds=1))))
    if isinstance(value, str):
        return Expected("text", cell_text(value))
    raise AssertionError(f"no rule for {type(value).__name__} {value!r}")


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _to_millisecond(value: dt.datetime) -> dt.datetime | None:
    """``value`` rounded to the millisecond, or None past datetime's range."""
    ms = (value.microsecond + 500) // 1000
    try:
        return value.replace(microsecond=0) + dt.timedelta(milliseconds=ms)
    except OverflowError:
        return None


def _number(value: Decimal) -> Expected:
    """At most 15 significant digits and inside a double's range: a number; else text with every digit."""
    digits = "".join(map(str, value.as_tuple().digits)).rstrip("0")
    if not digits:
        return Expected("number", 0.0)
    if len(digits) <= EXACT_DIGITS and -300 < value.adjusted() < 300:
        return Expected("number", float(value))
    return Expected("text", cell_text(format(value, "f")))


def _clock(value: dt.timedelta) -> str:
    seconds = value.days * 86400 + value.seconds
    text = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text + (f".{value.microseconds:06d}" if value.microseconds else "")


def cell_text(value: str) -> str:
    """Characters XML cannot hold become U+FFFD; past 32,767 UTF-16 units the text ends in the mark."""
    value = NOT_IN_XML.sub("\ufffd", value)
    units = [2 if ord(ch) > 0xFFFF else 1 for ch in value] if len(value) <= CELL_UNITS else None
    if units is not None and sum(units) <= CELL_UNITS:
        return value
    room, kept = CELL_UNITS - len(MARK), 0
    for i, ch in enumerate(value):
        kept += 2 if ord(ch) > 0xFFFF else 1
        if kept > room:
            return value[:i] + MARK
    raise AssertionError("unreachable: the text was too long")


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- comparing what a reader returned ------------------------------------------------------------

EXCEL_EPOCH = dt.datetime(1899, 12, 30)


def matches(expected: Expected, read: object) -> bool:
    """``read`` is what a reader returned as Python values: None or "" for an empty cell, int/float,
    str, bool, date/datetime (for a date-formatted cell) or timedelta (a duration)."""
    kind, want = expected.kind, expected.value
    if kind == "empty":
        return read is None or read == ""
    if kind == "bool":
        return type(read) is bool and read == want
    if kind == "number":
        return type(read) in (int, float) and math.isclose(read, want, rel_tol=1e-15, abs_tol=0)
    if kind == "text":
        return type(read) is str and read == want
    if kind == "date":
        if type(read) is dt.datetime:
            return read == dt.datetime.combine(want, dt.time())
        return type(read) is dt.date and read == want
    if kind == "datetime":
        return isinstance(read, dt.datetime) and abs(read - want) <= dt.timedelta(milliseconds=1)
    if kind == "duration":
        return isinstance(read, dt.timedelta) and abs(read - want) <= dt.timedelta(milliseconds=1)
    raise AssertionError(f"unknown kind {kind}")


# --- the database side ---------------------------------------------------------------------------


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


def expected_rows(columns, db_rows, types) -> list[list[Expected]]:
    """The expected cells of every row the database returned."""
    widths = [types[c][1] if types[c][0] == FIELD_TYPE.BIT else None for c in columns]
    return [[expect(v, bit_width=w) for v, w in zip(row, widths)] for row in db_rows]


def assert_rows_match(read_rows, columns, db_rows, types) -> None:
    """Every cell openpyxl read back from the workbook equals what the database returned for it."""
    check(len(read_rows) == len(db_rows), f"{len(read_rows)} rows in the workbook, {len(db_rows)} in the database")
    for got, want, db in zip(read_rows, expected_rows(columns, db_rows, types), db_rows):
        for column, r, e, v in zip(columns, got, want, db):
            check(accepts("openpyxl", e, r)[0], f"column {column}: wrote {v!r}, expected {e}, read {r!r}")


# --- what readers cannot do, whoever wrote the file ----------------------------------------------

_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def ooxml_unescape(text: str) -> str:
    """Decode the _xHHHH_ escapes of OOXML strings (ECMA-376 Part 1, 22.9.2.19 ST_Xstring)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


@dataclass(frozen=True)
class ReaderLimit:
    reader: str
    values: str
    why: str
    explains: Callable[[Expected, object], bool]  # does this limit explain reading ``read`` for ``expected``?


def _undecoded_escapes(expected: Expected, read: object) -> bool:
    return expected.kind == "text" and isinstance(read, str) and read != expected.value \
        and ooxml_unescape(read) == expected.value


#: The one place where a reader's limit is tolerated (the README's "What the workbook holds" says what a user
#: of that reader sees). Readers: openpyxl, calamine, sheetjs, exceljs, libreoffice (tests/xlsx_readers.py).
READER_LIMITS = (
    ReaderLimit("openpyxl", "text with a carriage return or a literal _xHHHH_",
                "does not decode _xHHHH_ escapes in inline strings: shows _x000D_ for a carriage return and "
                "_x005F_x0041_ for a text _x0041_ (Excel, LibreOffice, calamine and SheetJS decode them)",
                _undecoded_escapes),
    ReaderLimit("exceljs", "text with a carriage return or a literal _xHHHH_",
                "does not decode _xHHHH_ escapes, like openpyxl", _undecoded_escapes),
    ReaderLimit("libreoffice", "text with CR LF line ends",
                "turns CR LF into LF on import, whatever the encoding",
                lambda e, r: e.kind == "text" and isinstance(r, str) and "\r\n" in e.value
                and r == e.value.replace("\r\n", "\n")),
)


def accepts(reader: str, expected: Expected, read: object) -> tuple[bool, ReaderLimit | None]:
    """(``read``, as Python values, shows ``expected``, or the reader limit that explains the difference)."""
    if matches(expected, read):
        return True, None
    for limit in READER_LIMITS:
        if limit.reader == reader and limit.explains(expected, read):
            return True, limit
    return False, None
