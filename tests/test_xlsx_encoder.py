"""The cell encoder and the zip entries of the streaming writer, checked against the README's rules.

Each cell the encoder writes is read back here with lxml and the styles the workbook declares (not with the
writer's code), and compared with ``pipeline_ops.xlsx_expect.expect``. Regression tests name the defect they hold
fixed; property-based tests (hypothesis) cover the value space MySQL can return, each example under a fixed
time budget so a pathological value can never stall an export.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import struct
import zipfile
import zlib
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from lambdas.export_to_xlsx import xlsx
from lambdas.export_to_xlsx.xlsx import CellEncoder, SanitizeCounts, SheetTooLargeError, XlsxStreamWriter
from pipeline_ops.xlsx_expect import EXCEL_EPOCH, MARK, expect, matches, ooxml_unescape, utf16_units

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS = {"m": MAIN}


def _formats() -> dict[int, str]:
    """Style index -> what its number format shows (date, datetime, duration or general), from STYLES_XML."""
    styles = etree.fromstring(xlsx.STYLES_XML.encode())
    codes = {int(f.get("numFmtId")): f.get("formatCode") for f in styles.iterfind("m:numFmts/m:numFmt", NS)}
    kinds = {}
    for i, xf in enumerate(styles.iterfind("m:cellXfs/m:xf", NS)):
        code = codes.get(int(xf.get("numFmtId")), "General")
        kinds[i] = ("duration" if code.startswith("[h]") else "datetime" if "h" in code
                    else "date" if "y" in code else "general")
    return kinds


FORMATS = _formats()


def read_cell(xml: str) -> object:
    """What a spreadsheet holds for one ``<c>`` element, as a Python value (None for no cell)."""
    if not xml:
        return None
    c = etree.fromstring(xml.replace("<c ", f'<c xmlns="{MAIN}" ', 1))
    kind = c.get("t")
    if c.find("m:f", NS) is not None:
        raise AssertionError(f"a formula: {xml}")
    if kind == "inlineStr":
        return ooxml_unescape("".join(c.find("m:is/m:t", NS).itertext()))
    v = c.find("m:v", NS).text
    if kind == "b":
        return {"1": True, "0": False}[v]
    assert kind is None, xml
    number = float(v)
    shown = FORMATS[int(c.get("s", 0))]
    if shown == "general":
        return number
    moment = EXCEL_EPOCH + dt.timedelta(days=number)
    if shown == "date":
        assert number.is_integer(), xml
        return moment.date()
    if shown == "duration":
        return dt.timedelta(days=number)
    return moment


def encode(value: object) -> tuple[str, SanitizeCounts]:
    counts = SanitizeCounts()
    return CellEncoder(counts).cell("A1", value), counts


def assert_round_trips(value: object) -> str:
    with gives_up_after(10):  # hypothesis' deadline is checked after the call: a hang must fail, not stall
        xml, _ = encode(value)
    read = read_cell(xml)
    assert matches(expect(value), read), f"wrote {value!r:.200} as {xml:.300}, expected {expect(value)!s:.200}"
    return xml


#: Every property-based test: a fixed time budget per example, deterministic in CI.
BUDGET = settings(deadline=dt.timedelta(milliseconds=500), max_examples=150,
                  derandomize=os.environ.get("CI") == "true",
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRICKY = st.sampled_from(["😀", "a", "\ud83d", "\x00", "\r", "_x0041_", "é", "\U0010FFFF", " ", "&"])
ANY_CHAR = st.characters(exclude_categories=())  # surrogates and control characters included


@contextmanager
def gives_up_after(seconds: float):
    """Turn a hang into a failure (SIGALRM): a loop that never ends must fail the test, not stall the suite."""
    def stop(*_):
        raise AssertionError(f"still running after {seconds} s: the loop does not terminate")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- defect 1: long DECIMALs were rounded to 28 digits by normalize() ------------------------------


@pytest.mark.parametrize("text", [
    "99999999999999999999999999999999999.999999999999999999999999999999",  # DECIMAL(65,30), 65 digits
    "1.000000000000000000000000000001",  # 31 digits: normalize() made it 1
    "-12345678901234567890123456789012345678901234567890.123456789012345",
    "1234567890123456",  # 16 digits
    "0.1000000000000001000000000000000",  # trailing zeros do not count, the 1 at digit 16 does
])
def test_long_decimals_are_text_with_every_digit(text):
    # Given a DECIMAL with more than 15 significant digits
    xml, counts = encode(Decimal(text))
    # Then it is text holding every digit the database returned, counted as changed
    assert 't="inlineStr"' in xml and read_cell(xml) == text
    assert counts.big_numbers_as_text == 1


@pytest.mark.parametrize("text, number", [
    ("123456789012345", 123456789012345.0),
    ("0.100000000000000000000000000000", 0.1),  # DECIMAL(65,30) 0.1: one significant digit
    ("-99999999.99", -99999999.99),
    ("1E+35", 1e35),
    ("0E-30", 0.0),
])
def test_decimals_of_up_to_15_significant_digits_are_numbers(text, number):
    xml, counts = encode(Decimal(text))
    assert read_cell(xml) == number and not counts.as_dict()


@pytest.mark.parametrize("value", [10**19, -(10**19) + 1, 10**400, 10**5000, 12345678901234567890],
                         ids=["1e19", "-1e19+1", "1e400", "1e5000", "20-digits"])
def test_integers_past_15_digits_or_a_doubles_range_are_text(value):
    # 10**400 has one significant digit but no double holds it (it was written as a number: inf in readers);
    # 10**5000 is past Python's 4,300-digit str() limit.
    assert_round_trips(value)


# --- defect 2: _truncate looped forever on long astral-plane text -----------------------------------


@pytest.mark.parametrize("text", [
    "😀" * 16_384,  # 32,768 UTF-16 units: one too many
    "😀" * 40_000,
    "a" + "😀" * 16_384,  # the cut falls inside a surrogate pair
    "é" * 32_767 + "😀",
    "x" * 5_000_000,
], ids=["16384-emoji", "40000-emoji", "cut-in-a-pair", "bmp-then-emoji", "5M-chars"])
def test_long_astral_text_is_cut_at_the_cell_limit_without_hanging(text):
    with gives_up_after(10):
        xml, counts = encode(text)
    read = read_cell(xml)
    assert read.endswith(MARK) and counts.strings_truncated == 1
    assert utf16_units(read) <= 32_767 and text.startswith(read[: -len(MARK)])
    assert matches(expect(text), read)


def test_text_of_exactly_32767_units_is_kept_whole():
    text = "😀" * 16_383 + "a"
    xml, counts = encode(text)
    assert read_cell(xml) == text and not counts.as_dict()


# --- defect 3: every sheet was forced to ZIP64, which SheetJS cannot read ---------------------------


def local_headers(path) -> list[tuple[str, int, int, int, bytes]]:
    """(name, version needed, compressed size, uncompressed size, extra field) of every local file header."""
    data = path.read_bytes()
    headers = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            o = info.header_offset
            sig, version, _flags, _method, _t, _d, _crc, csize, usize, nlen, elen = struct.unpack(
                "<IHHHHHIIIHH", data[o:o + 30])
            assert sig == 0x04034B50
            headers.append((data[o + 30:o + 30 + nlen].decode(), version, csize, usize,
                            data[o + 30 + nlen:o + 30 + nlen + elen]))
    return headers


def has_zip64_field(extra: bytes) -> bool:
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        if tag == 0x0001:
            return True
        extra = extra[4 + size:]
    return False


def test_entries_are_plain_zip_not_zip64(tmp_path):
    path = tmp_path / "w.xlsx"
    writer = XlsxStreamWriter(path, sheet_name="s", columns=["n", "t"], max_rows_per_sheet=3000)
    writer.write_rows([(i, f"row {i}") for i in range(5000)])
    writer.close()
    headers = local_headers(path)
    assert {h[0] for h in headers} >= {"xl/worksheets/sheet1.xml", "xl/worksheets/sheet2.xml"}
    for name, version, csize, usize, extra in headers:
        # APPNOTE 4.5.3: ZIP64 puts 0xFFFFFFFF in the header's sizes and the real ones in extra field 0x0001
        assert csize != 0xFFFFFFFF and usize != 0xFFFFFFFF and not has_zip64_field(extra), name
        assert version < 45, name  # 4.5 is "needs ZIP64"
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def test_a_row_of_the_wrong_width_is_refused_by_its_number(tmp_path):
    # Given a two-column sheet past its width sample
    writer = XlsxStreamWriter(tmp_path / "w.xlsx", sheet_name="s", columns=["n", "t"])
    writer.write_rows([(i, "x") for i in range(1500)])
    # When a batch holds a row of three values, Then the error names that row and the sheet
    with pytest.raises(ValueError, match=r"row 1503 of sheet 's' has 3 values for 2 columns"):
        writer.write_rows([(1, "a"), (2, "b"), (3, "c", "extra"), (4, "d")])
    writer.discard()


def test_memory_stays_flat_however_many_sheets(tmp_path):
    import tracemalloc

    from pymysql.constants import FIELD_TYPE

    from lambdas.export_to_xlsx.database import column_type

    # Given a report whose every sheet brings new distinct short texts as the server's bytes (each column
    # remembers the cells of its first distinct values)
    text = column_type(FIELD_TYPE.VAR_STRING, 0, 0, "utf8")
    writer = XlsxStreamWriter(tmp_path / "w.xlsx")
    tracemalloc.start()
    try:
        for n in range(12):
            writer.start_sheet(f"s{n}", ["code"], [text])
            writer.write_rows([(b"code %d %d" % (n, i),) for i in range(5000)])
            if n == 1:
                after_two = tracemalloc.get_traced_memory()[0]
        after_twelve = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        writer.discard()
    # Then ten more sheets hold no more memory than the first two did
    assert after_twelve < after_two + 256 * 1024


def test_sheets_are_deflated_by_zlib_ng_at_the_chosen_level(tmp_path, monkeypatch):
    from zlib_ng import zlib_ng

    from lambdas.export_to_xlsx.xlsx import COMPRESSLEVEL

    # zlib-ng's output at level 5 depends on how its input is cut: keep the pieces each sheet's compressor gets
    pieces: list[list[bytes]] = []
    compressobj = zlib_ng.compressobj

    class Recording:
        def __init__(self, *args):
            assert args == (COMPRESSLEVEL, zlib_ng.DEFLATED, -15, 9)
            self._deflate, self._pieces = compressobj(*args), []
            pieces.append(self._pieces)

        def compress(self, data):
            self._pieces.append(bytes(data))
            return self._deflate.compress(data)

        def flush(self, *mode):
            return self._deflate.flush(*mode)

    monkeypatch.setattr(zlib_ng, "compressobj", Recording)
    # Given a workbook of a few thousand rows, two sheets
    path = tmp_path / "w.xlsx"
    writer = XlsxStreamWriter(path, sheet_name="s", columns=["n", "t"], max_rows_per_sheet=3000)
    writer.write_rows([(i, f"row {i} {i * 7919 % 1000}") for i in range(5000)])
    writer.close()
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every entry inflates and matches its CRC
        assert len(pieces) == 2
        for name, fed in zip(("xl/worksheets/sheet1.xml", "xl/worksheets/sheet2.xml"), pieces):
            # Then each sheet is exactly what zlib-ng writes for its XML (the standard zlib writes other bytes)
            assert b"".join(fed) == z.read(name)
            deflate = compressobj(COMPRESSLEVEL, zlib_ng.DEFLATED, -15, 9)
            written = b"".join(deflate.compress(piece) for piece in fed) + deflate.flush()
            assert z.getinfo(name).compress_size == len(written), name
            standard = zlib.compressobj(COMPRESSLEVEL, zlib.DEFLATED, -15, 9)
            assert len(standard.compress(z.read(name)) + standard.flush()) != len(written)


def test_a_sheet_nearing_the_zip_entry_limit_continues_on_a_new_sheet(tmp_path, monkeypatch):
    # Given a limit small enough to reach (the real one is 2 GiB of XML per sheet)
    monkeypatch.setattr(xlsx, "SHEET_XML_LIMIT", 3 * 2**20)
    monkeypatch.setattr(xlsx, "FLUSH_ROWS", 50)
    path = tmp_path / "wide.xlsx"
    writer = XlsxStreamWriter(path, sheet_name="wide", columns=["n", "pad"])
    rows = [(i, "x" * 1000) for i in range(6000)]  # about 6 MB of XML
    writer.write_rows(rows)
    result = writer.close()
    # Then the rows continue on more sheets, each entry under the limit, every row there once and in order
    assert result.sheets >= 2 and result.rows == len(rows)
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    read = []
    for ws in book:
        values = list(ws.iter_rows(values_only=True))
        assert values[0] == ("n", "pad")
        read += [v[0] for v in values[1:]]
    assert read == list(range(len(rows)))
    with zipfile.ZipFile(path) as z:
        assert all(i.file_size <= 3 * 2**20 for i in z.infolist())


def test_rows_too_wide_for_one_sheet_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx, "SHEET_XML_LIMIT", 2**20)
    writer = XlsxStreamWriter(tmp_path / "w.xlsx", sheet_name="w", columns=["pad"])
    with pytest.raises(SheetTooLargeError, match=r"sheet 'w': .* without ZIP64, which SheetJS cannot read"):
        writer.write_rows([("y" * 30_000,)] * 600)
        writer.close()
    writer.discard()


# --- defect 4: DATETIMEs past Excel's last instant were unreadable ----------------------------------


@pytest.mark.parametrize("value, text", [
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999_999), "9999-12-31 23:59:59.999999"),
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999_500), "9999-12-31 23:59:59.999500"),
])
def test_datetimes_past_excels_last_instant_are_iso_text(value, text):
    xml, counts = encode(value)
    assert read_cell(xml) == text and counts.late_dates_as_text == 1


@pytest.mark.parametrize("value, shown", [
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999_000), dt.datetime(9999, 12, 31, 23, 59, 59, 999_000)),
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999_499), dt.datetime(9999, 12, 31, 23, 59, 59, 999_000)),
    (dt.datetime(2024, 2, 29, 23, 59, 59, 999_600), dt.datetime(2024, 3, 1)),
    (dt.datetime(2024, 2, 29, 12, 0, 0, 123_456), dt.datetime(2024, 2, 29, 12, 0, 0, 123_000)),
])
def test_datetimes_are_rounded_to_the_millisecond_and_stay_below_serial_2958466(value, shown):
    xml, counts = encode(value)
    serial = float(etree.fromstring(xml).findtext("v"))
    assert serial < 2958466 and not counts.as_dict()
    assert abs(read_cell(xml) - shown) < dt.timedelta(microseconds=50)
    # milliseconds are shown when there are any, so 23:59:59.999 never shows as the next second
    assert FORMATS[int(etree.fromstring(xml).get("s"))] == "datetime"
    assert ('s="5"' in xml) == bool(shown.microsecond)


@BUDGET
@given(st.datetimes(dt.datetime(1900, 3, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999_000)))
@example(dt.datetime(1970, 1, 1, 0, 0, 1))
@example(dt.datetime(1972, 3, 27, 0, 58, 9))
def test_serials_are_never_below_the_instant_they_stand_for(value):
    # LibreOffice cuts seconds when it shows a date-time: a serial a hair below 00:00:01 shows 00:00:00.
    value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    xml, _ = encode(value)
    text = etree.fromstring(xml).findtext("v")
    exact = Fraction((value - EXCEL_EPOCH) // dt.timedelta(microseconds=1), 86_400_000_000)
    nearest = float(exact)
    lowest = nearest if Fraction(nearest) >= exact else math.nextafter(nearest, math.inf)
    # the lowest double not below the instant, or the next one up when the lowest's shortest form needs all 17
    # significant digits and the next one's is shorter (XlsxWriter's 16 digits store half of them below)
    up = math.nextafter(lowest, math.inf)
    needs_17 = len(repr(lowest).replace(".", "").lstrip("0")) == 17
    assert text == (repr(up) if needs_17 and len(repr(up)) < len(repr(lowest)) else repr(lowest))
    assert Fraction(float(text)) >= exact and float(text) - float(exact) < 81e-6 / 86_400


# --- defect 5: a carriage return written as &#13; was dropped or changed by readers -----------------


@pytest.mark.parametrize("text", ["\r", "a\r\nb", "\r\n", "x\ry"])
def test_carriage_returns_are_written_as_the_ooxml_escape(text):
    xml, _ = encode(text)
    assert "&#13;" not in xml and "\r" not in xml and "_x000D_" in xml
    assert read_cell(xml) == text


@pytest.mark.parametrize("text", ["_x0041_", "_x005F_x0041_", "_x000D_", "a_x0041__x0042_b", "_X004a_"])
def test_literal_escape_sequences_are_kept_as_typed(text):
    # _x005F_x0041_ holds two overlapping escapes: both must be escaped or a reader shows "_x005FA"
    assert_round_trips(text)


# --- properties: every value MySQL can return, each under a fixed time budget -----------------------


@BUDGET
@given(st.text(ANY_CHAR, max_size=300))
@example("=1+1")
@example(" lead and trail ")
def test_any_text_round_trips(text):
    assert_round_trips(text)


@BUDGET
@given(st.text(ANY_CHAR, max_size=20), TRICKY, st.integers(16_000, 33_500), st.text(ANY_CHAR, max_size=20))
def test_text_around_the_cell_limit_round_trips(head, fill, count, tail):
    assert_round_trips(head + fill * count + tail)


@BUDGET
@given(st.integers(1, 65).flatmap(lambda n: st.tuples(
    st.integers(0, 1), st.lists(st.integers(0, 9), min_size=n, max_size=n), st.integers(-330, 330))))
@example((0, [9] * 65, -30))
@example((0, [1] + [0] * 29 + [1], -30))
def test_decimals_of_up_to_65_digits_at_any_scale_round_trip(parts):
    sign, digits, exponent = parts
    assert_round_trips(Decimal((sign, tuple(digits), exponent)))


@BUDGET
@given(st.one_of(st.integers(), st.integers(-(2**64), 2**64), st.integers(-(10**400), 10**400)))
@example(2**64 - 1)
@example(-(2**63))
def test_integers_of_any_size_round_trip(value):
    assert_round_trips(value)


@BUDGET
@given(st.floats())
def test_floats_round_trip(value):
    assert_round_trips(value)


MYSQL_FIRST = dt.datetime(1000, 1, 1)
MYSQL_LAST = dt.datetime(9999, 12, 31, 23, 59, 59, 999_999)


@BUDGET
@given(st.datetimes(MYSQL_FIRST, MYSQL_LAST))
@example(MYSQL_LAST)
@example(dt.datetime(1900, 2, 28, 23, 59, 59, 999_999))
@example(dt.datetime(1900, 3, 1))
def test_datetimes_across_mysqls_range_round_trip(value):
    assert_round_trips(value)


@BUDGET
@given(st.dates(MYSQL_FIRST.date(), MYSQL_LAST.date()))
def test_dates_across_mysqls_range_round_trip(value):
    assert_round_trips(value)


@BUDGET
@given(st.timedeltas(-dt.timedelta(hours=838, minutes=59, seconds=59, microseconds=999_999),
                     dt.timedelta(hours=838, minutes=59, seconds=59, microseconds=999_999)))
def test_times_across_mysqls_range_round_trip(value):
    assert_round_trips(value)


#: Excel's grid: "Total number of rows and columns on a worksheet: 1,048,576 rows by 16,384 columns"
#: (https://support.microsoft.com/en-us/office/excel-specifications-and-limits-1672b34d-7043-467e-8e27-269d656771c3).
EXCEL_MAX_ROWS = 1_048_576


def test_a_full_sheet_ends_on_excels_last_row_and_the_next_row_starts_a_new_sheet(tmp_path):
    """The header is row 1, so a sheet holds 1,048,575 data rows; one more data row (a row number Excel does not
    have) would make the whole workbook unreadable, so it goes on the next sheet."""
    assert xlsx.MAX_DATA_ROWS_PER_SHEET + 1 == EXCEL_MAX_ROWS  # the default, spelt out
    path = tmp_path / "full.xlsx"
    writer = XlsxStreamWriter(path, sheet_name="full", columns=["n"])  # the default limit, as every export uses
    writer.write_rows((i,) for i in range(1, EXCEL_MAX_ROWS + 1))  # 1,048,576 data rows: one past a sheet
    result = writer.close()
    with zipfile.ZipFile(path) as z:
        first = z.read("xl/worksheets/sheet1.xml")
        second = etree.fromstring(z.read("xl/worksheets/sheet2.xml"))
        book = etree.fromstring(z.read("xl/workbook.xml"))
    # The first sheet: header and data up to row 1,048,576, Excel's last, and no row past it
    tail = first[first.rindex(b"<row "):]
    assert tail.startswith(f'<row r="{EXCEL_MAX_ROWS}"'.encode()) and f"<v>{EXCEL_MAX_ROWS - 1}</v>".encode() in tail
    assert first.count(b"<row ") == EXCEL_MAX_ROWS
    # The second: the header again and the one row left over
    rows = second.findall("m:sheetData/m:row", NS)
    assert [r.get("r") for r in rows] == ["1", "2"] and rows[1].findtext("m:c/m:v", namespaces=NS) == str(EXCEL_MAX_ROWS)
    assert [s.get("name") for s in book.iterfind("m:sheets/m:sheet", NS)] == ["full", "full (2)"]
    assert result.rows == EXCEL_MAX_ROWS
