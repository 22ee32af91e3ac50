"""The fast path (the server's bytes, per-column encoders) writes the same bytes as the reference path (the driver's
default converters, then CellEncoder.value) for every value, edge values first.

The reference path is what the export wrote before it read the server's bytes; the conformance suite
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
from pymysql.constants import FIELD_TYPE, FLAG
from pymysql.cursors import SSCursor

from lambdas.export_to_xlsx import columns
from lambdas.export_to_xlsx.database import QueryStream, _split_row, column_type
from lambdas.export_to_xlsx.xlsx import ROW, CellEncoder, SanitizeCounts, XlsxStreamWriter
from tests.test_xlsx_encoder import ANY_CHAR, BUDGET


#: The encoding PyMySQL decodes each kind of column with on a utf8mb4 connection (binary strings: none).
TEXT_ENCODING, NUMBER_ENCODING = "utf8", "ascii"


def outcome(write) -> tuple[bytes | str, dict]:
    """(xml, counts) of ``write(counts)``, or the error it raised (text the driver cannot convert either)."""
    counts = SanitizeCounts()
    try:
        return write(counts), counts.as_dict()
    except (ArithmeticError, TypeError, ValueError) as exc:
        return f"raises {type(exc).__name__}", counts.as_dict()


def reference_cell(counts: SanitizeCounts, value: object) -> bytes:
    """The reference path's cell in column A: CellEncoder.value of the driver's value."""
    rest = CellEncoder(counts).value(value)
    return b'<c r="A' + ROW + b'"' + rest.encode() if rest else b""


def fast_cell(counts: SanitizeCounts, code: int, raw: bytes | None, *, encoding: str | None = NUMBER_ENCODING,
              flags: int = 0) -> bytes:
    column = column_type(code, flags, 0, encoding)
    return columns.column_encoder(CellEncoder(counts), column, "A")(raw)


def both_paths(code: int, text: str | None, encoding: str = NUMBER_ENCODING):
    """(xml, counts) of the fast path given the server's bytes of ``text`` and of the reference path given the
    value the driver's default converter makes of it."""
    raw = None if text is None else text.encode(encoding, "surrogatepass")
    fast = outcome(lambda counts: fast_cell(counts, code, raw, encoding=encoding))

    def driver_value():
        value = None if raw is None else raw.decode(encoding)
        convert = converters.decoders.get(code)
        return convert(value) if value is not None and convert not in (None, converters.through) else value

    reference = outcome(lambda counts: reference_cell(counts, driver_value()))
    return fast, reference


def assert_same(code: int, text: str | None, encoding: str = NUMBER_ENCODING) -> None:
    fast, reference = both_paths(code, text, encoding)
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
        # nineteen characters of other shapes (int() takes signs, spaces and underscores)
        "2_24-01-01 10:00:00", "+024-01-01 10:00:00", "2024/01/01 10:00:00", "2024-01-01 10:00:0a",
        "2024-01-01 1:00:000", "2024-01-01 10.00:00", "2024-01-01 10:00 00", "2024-01-01  0:00:00",
        "2024-01-01 -1:00:00", "2024-01-0110:00:00 ",
    ],
    FIELD_TYPE.TIME: ["838:59:59", "-838:59:59", "00:00:00.5", "12:34:56.789", "-00:00:01.25", "00:00:00",
                      "23:59:59.9996", "-00:00:00.000001", "1:2:3", ""],
    FIELD_TYPE.LONGLONG: ["0", "-1", "999999999999999", "-99999999999999", "-999999999999999", "1000000000000000",
                          "18446744073709551615", "-9223372036854775808"],
    FIELD_TYPE.LONG: ["0", "2147483647", "-2147483648"],
    FIELD_TYPE.DOUBLE: ["0", "-0", "1e20", "1.7976931348623157e308", "2.2250738585072014e-308", "0.1", "-2.5e-300"],
}


@pytest.mark.parametrize("code, text", [(code, text) for code, texts in EDGE_TEXTS.items() for text in texts]
                         + [(code, None) for code in EDGE_TEXTS])
def test_edge_values_are_written_the_same_by_both_paths(code, text):
    # Given a value as the server's text (zero and invalid dates, dates before 1900-03-01, microseconds,
    # negative times, DECIMALs past 15 digits, text no server sends, NULL)
    # Then the fast path writes the reference path's bytes and counts the same changes
    assert_same(code, text)


def test_timestamp_and_decimal_share_the_datetime_and_newdecimal_encoders():
    def kind(code: int) -> str:
        return column_type(code, 0, 0, NUMBER_ENCODING).kind

    assert kind(FIELD_TYPE.TIMESTAMP) == kind(FIELD_TYPE.DATETIME) == columns.DATETIME
    assert kind(FIELD_TYPE.DECIMAL) == kind(FIELD_TYPE.NEWDECIMAL) == columns.DECIMAL


@pytest.mark.parametrize("code, flags, encoding, kind", [
    (FIELD_TYPE.LONG, FLAG.ZEROFILL | FLAG.UNSIGNED, NUMBER_ENCODING, columns.OTHER),  # "007" is 7
    (FIELD_TYPE.YEAR, FLAG.ZEROFILL | FLAG.UNSIGNED, NUMBER_ENCODING, columns.OTHER),
    (FIELD_TYPE.VAR_STRING, FLAG.BINARY, None, columns.OTHER),  # VARBINARY: hex text
    (FIELD_TYPE.BLOB, FLAG.BINARY | FLAG.BLOB, None, columns.OTHER),
    (FIELD_TYPE.VAR_STRING, 0, "latin1", columns.OTHER),  # not UTF-8: decoded by the reference path
    (FIELD_TYPE.VAR_STRING, 0, TEXT_ENCODING, columns.TEXT),
    (FIELD_TYPE.LONGLONG, FLAG.UNSIGNED, NUMBER_ENCODING, columns.INTEGER),
])
def test_only_columns_whose_bytes_are_their_cell_text_take_a_fast_path(code, flags, encoding, kind):
    assert column_type(code, flags, 0, encoding).kind == kind


def test_zerofill_integers_are_written_as_their_value():
    # Given the server's text of an INT ZEROFILL value
    cell = fast_cell(SanitizeCounts(), FIELD_TYPE.LONG, b"0000000007", flags=FLAG.ZEROFILL)
    # Then the cell holds the number, as the driver's int() reads it
    assert cell == reference_cell(SanitizeCounts(), 7) == b'<c r="A\0"><v>7</v></c>'


class Packet:
    def __init__(self, data: bytes):
        self.data = data

    def get_all_data(self) -> bytes:
        return self.data


@pytest.mark.parametrize("values", [
    [b"1", None, b"", b"x" * 250],
    [b"x" * 251, b"y" * 65_535],  # 0xFC: a 2-byte length
    [b"z" * 65_536, None],  # 0xFD: a 3-byte length
])
def test_row_packets_split_into_the_servers_bytes(values):
    # Given a text-protocol row packet: length-encoded strings, 0xFB for NULL
    def encoded(value: bytes | None) -> bytes:
        if value is None:
            return b"\xfb"
        n = len(value)
        if n < 251:
            return bytes([n]) + value
        if n < 2**16:
            return b"\xfc" + n.to_bytes(2, "little") + value
        return b"\xfd" + n.to_bytes(3, "little") + value

    packet = Packet(b"".join(map(encoded, values)))
    # Then the row is exactly those values
    assert _split_row(len(values))(packet) == tuple(values)


def test_an_eight_byte_length_is_read():
    assert _split_row(1)(Packet(b"\xfe" + (3).to_bytes(8, "little") + b"abc")) == (b"abc",)


def test_a_packet_longer_than_its_values_is_refused():
    import pymysql

    with pytest.raises(pymysql.err.InternalError, match="ended after 2 bytes"):
        _split_row(1)(Packet(b"\x01a\x01b"))


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
@given(st.one_of(st.text(ANY_CHAR, max_size=50),
                 st.sampled_from(["", " a", "a ", "\u3000a", "a\u00a0", "\ufffe", "x" * 16_383, "é" * 16_383,
                                  "x" * 20_000, "_x0041_", "a&b", "\ta", "a\n"])))
@example("\udc80")  # a lone surrogate: invalid UTF-8, which the driver refuses
def test_strings(text):
    assert_same(FIELD_TYPE.VAR_STRING, text, TEXT_ENCODING)


@pytest.mark.parametrize("code, texts", [
    (FIELD_TYPE.VAR_STRING, ["paid", "a&b", "x" * 65, "paid", "a&b", " pad", "x" * 65, "paid"]),
    (FIELD_TYPE.NEWDECIMAL, ["0.10", "1" * 20, "0.10", "-0.00", "1" * 20, "-0.00"]),
    (FIELD_TYPE.DATE, ["2024-02-29", "1899-12-31", "2024-02-29", "0000-00-00", "1899-12-31"]),
])
def test_repeated_values_keep_their_cells_and_counts(code, texts):
    # Given one column's encoder, which remembers the cells of values it saw
    encoding = TEXT_ENCODING if code == FIELD_TYPE.VAR_STRING else NUMBER_ENCODING
    fast_counts, reference_counts = SanitizeCounts(), SanitizeCounts()
    encode = columns.column_encoder(CellEncoder(fast_counts), column_type(code, 0, 0, encoding), "A")
    decode = column_type(code, 0, 0, encoding).value
    for text in texts:
        # When a value comes again, Then its cell is the reference path's, and values the reference path
        # changes are counted every time
        raw = text.encode()
        assert encode(raw) == reference_cell(reference_counts, decode(raw)), text
    assert fast_counts == reference_counts


@BUDGET
@given(st.binary(max_size=8))
def test_invalid_utf8_fails_as_in_the_driver(raw):
    fast = outcome(lambda counts: fast_cell(counts, FIELD_TYPE.VAR_STRING, raw, encoding=TEXT_ENCODING))
    try:
        reference = outcome(lambda counts: reference_cell(counts, raw.decode(TEXT_ENCODING)))
    except UnicodeDecodeError:
        reference = ("raises UnicodeDecodeError", {})
    assert fast == reference


@BUDGET
@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers(value):
    assert_same(FIELD_TYPE.LONGLONG if type(value) is int else FIELD_TYPE.DOUBLE, repr(value))


@BUDGET
@given(st.binary(max_size=8))
def test_binary_strings(raw):
    fast = outcome(lambda counts: fast_cell(counts, FIELD_TYPE.BLOB, raw, encoding=None))
    assert fast == outcome(lambda counts: reference_cell(counts, raw))


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
    "u": ("VARCHAR(20)", ["\u3000wide space", "é", "x\u00a0", "注文", "a\tb", "\n"]),
    "i": ("INT", [-2147483648, 2147483647, 0]),
    "z": ("INT(5) ZEROFILL", [7, 12345, 0]),
    "y": ("YEAR", [1901, 0]),
    "f": ("DOUBLE", [0.1, -2.5e-300, 1e20]),
    "bin": ("VARBINARY(8)", [b"\x00\xff", b"ab"]),
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
    """The edge table through the export's QueryStream and per-column encoders (``fast``), or through a plain
    cursor with the driver's default converters and the reference path."""
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
    sql = f"SELECT * FROM {EDGE_TABLE} ORDER BY id"
    writer = XlsxStreamWriter(path, formats=formats)
    if fast:
        stream = QueryStream(conn, sql, export="edge")
        writer.start_sheet("Edge", stream.columns, stream.types)
        for batch in stream.batches():
            writer.write_rows(batch)
        stream.close()
    else:
        with conn.cursor(SSCursor) as cur:
            cur.execute(sql)
            writer.start_sheet("Edge", [d[0] for d in cur.description])
            while batch := cur.fetchmany(100):
                writer.write_rows(batch)
    conn.close()
    writer.close()
    return writer.counts.as_dict()


@pytest.mark.parametrize("formats", [None, {"amount": "#,##0.00", "dt6": "yyyy-mm-dd hh:mm:ss.000"}],
                         ids=["plain", "number-formats"])
def test_the_export_path_writes_the_reference_paths_bytes(mysql, edge_table, tmp_path, formats):
    # Given edge values and NULLs of every type with a fast path in the server
    # When one workbook is written from the server's bytes with per-column encoders, one from the driver's values
    fast_counts = write(mysql, tmp_path / "fast.xlsx", fast=True, formats=formats)
    reference_counts = write(mysql, tmp_path / "reference.xlsx", fast=False, formats=formats)
    # Then every part, the sheet XML with its column widths included, is the same, and so are the counts
    with zipfile.ZipFile(tmp_path / "fast.xlsx") as fast, zipfile.ZipFile(tmp_path / "reference.xlsx") as reference:
        assert fast.namelist() == reference.namelist()
        for part in fast.namelist():
            assert fast.read(part) == reference.read(part), part
    assert fast_counts == reference_counts and fast_counts["early_dates_as_text"] > 0
