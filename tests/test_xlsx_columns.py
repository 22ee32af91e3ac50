"""The fast path (the server's text, per-column encoders) writes the same bytes as the reference path (the driver's
default converters, then CellEncoder.value) for every value, edge values first.

The reference path is what the export wrote before it read the server's text; the conformance suite
(test_xlsx_conformance.py) holds what readers show, so identical bytes keep every reader's reading.
"""

from __future__ import annotations

import datetime as dt
import random
import zipfile
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pymysql import converters
from pymysql.constants import FIELD_TYPE

from lambdas.export_to_xlsx import columns
from lambdas.export_to_xlsx.database import COLUMN_TYPES, TEXT_CONVERSIONS, QueryStream
from lambdas.export_to_xlsx.xlsx import CellEncoder, SanitizeCounts, XlsxStreamWriter
from tests.test_xlsx_encoder import ANY_CHAR, BUDGET


def outcome(write) -> tuple[str, dict]:
    """(xml, counts) of ``write(counts)``, or the error it raised (text the driver cannot convert either)."""
    counts = SanitizeCounts()
    try:
        return write(counts), counts.as_dict()
    except (ArithmeticError, TypeError, ValueError) as exc:
        return f"raises {type(exc).__name__}", counts.as_dict()


def both_paths(code: int, text: str | None) -> tuple[tuple[str, dict], tuple[str, dict]]:
    """(xml, counts) of the fast path given the server's ``text`` and of the reference path given the value
    the driver's default converter makes of it."""
    column = COLUMN_TYPES[code]
    fast = outcome(lambda counts: columns.column_encoder(CellEncoder(counts), column)(text))
    reference = outcome(lambda counts: CellEncoder(counts).value(
        converters.decoders[code](text) if text is not None else None))
    return fast, reference


def assert_same(code: int, text: str | None) -> None:
    fast, reference = both_paths(code, text)
    assert fast == reference, f"{text!r}: fast path wrote {fast}, the reference path {reference}"


def time_text(value: dt.timedelta, digits: int) -> str:
    """MySQL's text of a TIME(digits) value: [-]HH:MM:SS[.fraction]."""
    sign = "-" if value < dt.timedelta(0) else ""
    us = abs(value) // dt.timedelta(microseconds=1)
    seconds, us = divmod(us, 1_000_000)
    text = f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text + (f".{us:06d}"[: digits + 1] if digits else "")


def datetime_text(value: dt.datetime, digits: int) -> str:
    """MySQL's text of a DATETIME(digits) value."""
    text = value.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0")
    return text + (f".{value.microsecond:06d}"[: digits + 1] if digits else "")


EDGE_TEXTS = {
    FIELD_TYPE.NEWDECIMAL: [
        "0", "0.00", "-0.00", "0.000000000000000000000000000001", "-12345.6789", "123456789012345",
        "1234567890123456", "123456789012345.6", "99999999999999999999999999999999999.999999999999999999999999999999",
        "-99999999.99", "100.00", "0.10", "9" * 65, "1" + "0" * 64, "1e5", "", "abc", "1.2.3", "--1", " 1",
    ],
    FIELD_TYPE.DATE: [
        "0000-00-00", "1000-01-01", "1899-12-31", "1900-01-01", "1900-02-28", "1900-02-29", "1900-03-01",
        "2024-02-29", "2023-02-29", "2024-02-30", "2024-00-10", "9999-12-31", "2024-W01-1", "20240101", "",
    ],
    FIELD_TYPE.DATETIME: [
        "0000-00-00 00:00:00", "1000-01-01 00:00:00", "1900-02-28 23:59:59.999999", "1900-03-01 00:00:00",
        "1900-03-01 00:00:00.001", "1970-01-01 00:00:01", "1972-03-27 00:58:09", "2024-02-29 23:59:59.999",
        "2024-02-29 23:59:59.9996", "2024-02-29 23:59:59.999600", "2024-06-01 12:34:56.123456", "2024-06-01 12:34:56.0",
        "2024-06-01 12:34:56.000000", "9999-12-31 23:59:59", "9999-12-31 23:59:59.999", "9999-12-31 23:59:59.9994",
        "9999-12-31 23:59:59.9995", "9999-12-31 23:59:59.999999", "2024-02-30 10:00:00", "2024-01-01 24:00:00",
        "2024-01-01 23:60:00", "2024-01-01T10:00:00", "2024-01-01 10:00:00.1234567", "2024-01-01", "",
    ],
    FIELD_TYPE.TIME: ["838:59:59", "-838:59:59", "00:00:00.5", "12:34:56.789", "-00:00:01.25", "00:00:00",
                      "23:59:59.9996", "-00:00:00.000001", "1:2:3", ""],
}


@pytest.mark.parametrize("code, text", [(code, text) for code, texts in EDGE_TEXTS.items() for text in texts]
                         + [(code, None) for code in EDGE_TEXTS])
def test_edge_values_are_written_the_same_by_both_paths(code, text):
    # Given a value as the server's text (zero and invalid dates, dates before 1900-03-01, microseconds,
    # negative times, DECIMALs past 15 digits, text no server sends, NULL)
    # Then the fast path writes the reference path's bytes and counts the same changes
    assert_same(code, text)


def test_timestamp_and_decimal_share_the_datetime_and_newdecimal_encoders():
    assert COLUMN_TYPES[FIELD_TYPE.TIMESTAMP] == COLUMN_TYPES[FIELD_TYPE.DATETIME]
    assert COLUMN_TYPES[FIELD_TYPE.DECIMAL].kind == COLUMN_TYPES[FIELD_TYPE.NEWDECIMAL].kind == columns.DECIMAL


def test_the_export_reads_exactly_these_types_as_text():
    # The driver keeps converting every other type (ints, floats, BIT, strings): the encoders expect that.
    removed = {code for code in converters.decoders if code not in TEXT_CONVERSIONS}
    assert removed == {FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DATE, FIELD_TYPE.DATETIME,
                       FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIME}


@BUDGET
@given(st.integers(1, 65).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, min(p, 30)))),
       st.randoms(use_true_random=False))
@example((65, 30), random.Random(1))
def test_decimals_of_any_precision_and_scale(precision_scale, rnd):
    precision, scale = precision_scale
    digits = "".join(rnd.choice("0123456789") for _ in range(precision))
    whole, fraction = digits[: precision - scale] or "0", digits[precision - scale:]
    text = rnd.choice(["", "-"]) + whole.lstrip("0").rjust(1, "0") + (f".{fraction}" if scale else "")
    assert_same(FIELD_TYPE.NEWDECIMAL, text)


@BUDGET
@given(st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999_999)), st.integers(0, 6))
@example(dt.datetime(9999, 12, 31, 23, 59, 59, 999_500), 6)
@example(dt.datetime(1900, 2, 28, 23, 59, 59, 999_999), 6)
def test_datetimes_at_every_fractional_precision(value, digits):
    assert_same(FIELD_TYPE.DATETIME, datetime_text(value, digits))
    assert_same(FIELD_TYPE.TIMESTAMP, datetime_text(value, digits))


@BUDGET
@given(st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)))
def test_dates(value):
    assert_same(FIELD_TYPE.DATE, value.isoformat())


@BUDGET
@given(st.timedeltas(-dt.timedelta(hours=838, minutes=59, seconds=59), dt.timedelta(hours=838, minutes=59, seconds=59)),
       st.integers(0, 6))
def test_times(value, digits):
    assert_same(FIELD_TYPE.TIME, time_text(value, digits))


@BUDGET
@given(st.one_of(st.text(ANY_CHAR, max_size=50), st.sampled_from(["", " a", "a ", "x" * 20_000, "_x0041_", "a&b"])))
def test_strings(text):
    fast = columns.column_encoder(CellEncoder(SanitizeCounts()), COLUMN_TYPES[FIELD_TYPE.VAR_STRING])(text)
    assert fast == CellEncoder(SanitizeCounts()).value(text)


@BUDGET
@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.binary(max_size=8)))
def test_numbers_and_other_values_the_driver_converts(value):
    for code in (FIELD_TYPE.LONGLONG, FIELD_TYPE.DOUBLE, FIELD_TYPE.BLOB):
        fast = columns.column_encoder(CellEncoder(SanitizeCounts()), COLUMN_TYPES[code])(value)
        assert fast == CellEncoder(SanitizeCounts()).value(value)


# --- through the server: the export's connection against the driver's defaults -----------------------------

EDGE_TABLE = "xlsx_fast_path"
EDGE_COLUMNS = {  # column -> (type, values as the driver takes them)
    "d": ("DATE", ["1000-01-01", "1899-12-31", "1900-02-28", "1900-03-01", "2024-02-29", "9999-12-31"]),
    "dt": ("DATETIME", ["1000-01-01 00:00:00", "1900-03-01 00:00:00", "1970-01-01 00:00:01", "9999-12-31 23:59:59"]),
    "dt3": ("DATETIME(3)", ["1900-02-28 23:59:59.999", "2024-02-29 23:59:59.999", "9999-12-31 23:59:59.999"]),
    "dt6": ("DATETIME(6)", ["1900-02-28 23:59:59.999999", "2024-02-29 23:59:59.999600", "9999-12-31 23:59:59.999499",
                            "9999-12-31 23:59:59.999500", "2024-06-01 12:34:56.000001"]),
    "ts6": ("TIMESTAMP(6) NULL", ["1970-01-01 00:00:01", "2038-01-19 03:14:07.999999"]),
    "t": ("TIME", ["838:59:59", "-838:59:59", "00:00:00"]),
    "t6": ("TIME(6)", ["-00:00:01.25", "23:59:59.9996", "00:00:00.000001"]),
    "dec": ("DECIMAL(65,30)", [Decimal("99999999999999999999999999999999999.999999999999999999999999999999"),
                               Decimal("-0.000000000000000000000000000001"), Decimal("123456789012345"),
                               Decimal("0")]),
    "dec2": ("DECIMAL(10,2)", [Decimal("-99999999.99"), Decimal("0.10"), Decimal("0.00")]),
    "amount": ("DECIMAL(12,2)", [Decimal("1234.50")]),
    "n": ("BIGINT UNSIGNED", [18446744073709551615, 0]),
    "s": ("VARCHAR(50)", ["plain", " padded ", "a&b", "_x0041_", ""]),
}


@pytest.fixture(scope="module")
def edge_table(mysql):
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute(f"DROP TABLE IF EXISTS {EDGE_TABLE}")
        spec = ", ".join(f"`{name}` {kind}" for name, (kind, _) in EDGE_COLUMNS.items())
        cur.execute(f"CREATE TABLE {EDGE_TABLE} (id INT PRIMARY KEY, {spec})")
        rnd = random.Random(20)
        rows = max(len(v) for _, v in EDGE_COLUMNS.values())
        for i in range(rows + 200):  # the edge values, then random ones with NULLs between them
            row = {}
            for name, (_, values) in EDGE_COLUMNS.items():
                if i < len(values):
                    row[name] = values[i]
                elif i >= rows and rnd.random() < 0.8:
                    row[name] = rnd.choice(values)
            cur.execute(f"INSERT INTO {EDGE_TABLE} (id{''.join(f', `{n}`' for n in row)}) "
                        f"VALUES (%s{', %s' * len(row)})", [i, *row.values()])
        cur.execute("SET SESSION sql_mode = ''")  # zero dates, where the server allows them
        cur.execute(f"INSERT INTO {EDGE_TABLE} (id, d, dt, dt6) VALUES (-1, '0000-00-00', '0000-00-00 00:00:00', "
                    "'0000-00-00 00:00:00.000000')")
    yield
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {EDGE_TABLE}")
    conn.close()


def write(mysql, path, *, fast: bool, formats=None) -> dict:
    conn = mysql.connect(**({"conv": TEXT_CONVERSIONS} if fast else {}))
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
    stream = QueryStream(conn, f"SELECT * FROM {EDGE_TABLE} ORDER BY id", export="edge")
    writer = XlsxStreamWriter(path, formats=formats)
    writer.start_sheet("Edge", stream.columns, stream.types if fast else None)
    for batch in stream.batches():
        writer.write_rows(batch)
    stream.close()
    conn.close()
    writer.close()
    return writer.counts.as_dict()


@pytest.mark.parametrize("formats", [None, {"amount": "#,##0.00", "dt6": "yyyy-mm-dd hh:mm:ss.000"}],
                         ids=["plain", "number-formats"])
def test_the_export_path_writes_the_reference_paths_bytes(mysql, edge_table, tmp_path, formats):
    # Given edge values and NULLs of every text-read type in the server
    # When one workbook is written from the server's text with per-column encoders, one from the driver's values
    fast_counts = write(mysql, tmp_path / "fast.xlsx", fast=True, formats=formats)
    reference_counts = write(mysql, tmp_path / "reference.xlsx", fast=False, formats=formats)
    # Then every part, the sheet XML with its column widths included, is the same, and so are the counts
    with zipfile.ZipFile(tmp_path / "fast.xlsx") as fast, zipfile.ZipFile(tmp_path / "reference.xlsx") as reference:
        assert fast.namelist() == reference.namelist()
        for part in fast.namelist():
            assert fast.read(part) == reference.read(part), part
    assert fast_counts == reference_counts and fast_counts["early_dates_as_text"] > 0
