"""Workbooks the project writes, read by independent spreadsheet readers and checked against the ISO schemas.

A table of values covering every MySQL type the README lists, hostile strings and the writer's past defects
goes through the real MariaDB, the export's own QueryStream and XlsxStreamWriter (the server's bytes, per-column
encoders, as the export reads them), once per session. Then
openpyxl, python-calamine, SheetJS, ExcelJS (one Node.js process) and LibreOffice headless (one run, every
sheet to CSV as shown on screen) read every workbook, and every cell must show what the README's rules say
(pipeline_ops.xlsx_expect), except for the reader limits in its READER_LIMITS table. Every XML part of every
workbook is validated against the ISO/IEC 29500 Transitional schemas in tests/data/ooxml-xsd/.
"""

from __future__ import annotations

import datetime as dt
import os
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from lambdas.export_to_xlsx.database import QueryStream
from lambdas.export_to_xlsx.xlsx import XlsxStreamWriter, column_letter
from pipeline_ops.xlsx_expect import READER_LIMITS, EMPTY, Expected, expected_rows, query
from tests import xlsx_readers
from tests.xlsx_readers import LIBREOFFICE_INSTALL, READERS, check

TABLE = "xlsx_conformance"
ROWS_TABLE = "xlsx_conformance_rows"

#: column -> (MySQL type, values as the driver takes them). Row i holds each column's i-th value (NULL past the end).
CONFORMANCE: dict[str, tuple[str, list[object]]] = {
    "tinyint": ("TINYINT", [-128, 127, 0]),
    "tinyint_u": ("TINYINT UNSIGNED", [255]),
    "smallint": ("SMALLINT", [-32768, 32767]),
    "mediumint": ("MEDIUMINT", [-8388608, 8388607]),
    "int": ("INT", [-2147483648, 2147483647]),
    "bigint": ("BIGINT", [-9223372036854775808, 9223372036854775807, 999999999999999, -100000000000000]),
    "bigint_u": ("BIGINT UNSIGNED", [18446744073709551615, 10**19, 1234567890123456]),
    "bool": ("BOOL", [1, 0]),
    "bit1": ("BIT(1)", [1, 0]),
    "bit12": ("BIT(12)", [4095, 0]),
    "bit64": ("BIT(64)", [2**64 - 1, 2**53]),
    "dec_10_2": ("DECIMAL(10,2)", [Decimal("-99999999.99"), Decimal("0.10"), Decimal("0.00")]),
    "dec_65_30": ("DECIMAL(65,30)", [  # defect 1: every digit, never rounded to 28
        Decimal("99999999999999999999999999999999999.999999999999999999999999999999"),
        Decimal("1.000000000000000000000000000001"), Decimal("0.000000000000000000000000000001"),
        Decimal("-12345.6789"), Decimal("123456789012345.6"), Decimal("-0.1")]),
    "dec_65_0": ("DECIMAL(65,0)", [Decimal(10**64), Decimal("9" * 65), Decimal("123456789012345")]),
    "float": ("FLOAT", [3.5, -0.25, 1e20, 0.1]),
    "double": ("DOUBLE", [1.7976931348623157e308, -2.5e-300, 0.1, 2.2250738585072014e-308, 123456789.123456]),
    "date": ("DATE", ["1000-01-01", "1899-12-31", "1900-01-01", "1900-02-28", "1900-03-01", "2024-02-29",
                      "9999-12-31"]),
    "datetime6": ("DATETIME(6)", [  # defect 4: past Excel's last instant
        "1000-01-01 00:00:00", "1900-02-28 23:59:59.999999", "1900-03-01 00:00:00.001", "2024-02-29 23:59:59.999",
        "2024-02-29 23:59:59.999600", "9999-12-31 23:59:59", "9999-12-31 23:59:59.999",
        "9999-12-31 23:59:59.999999", "2024-06-01 12:34:56.123456",
        # serials one double above the lowest not below (a shorter form): 44 and 79 microseconds above
        "9999-12-31 23:59:00", "9999-12-31 23:59:00.006"]),
    "datetime": ("DATETIME", ["2024-01-01 12:00:00", "1970-01-01 00:00:00", "1972-03-27 00:58:09",
                              "2020-01-01 00:00:37"]),
    "timestamp": ("TIMESTAMP(6) NULL", ["1970-01-01 00:00:01", "2038-01-19 03:14:07.999999"]),
    "time6": ("TIME(6)", ["838:59:59", "-838:59:59", "00:00:00.5", "12:34:56.789", "-00:00:01.25", "00:00:00",
                          "23:59:59.9996"]),
    "year": ("YEAR", [1901, 2155, 0]),
    "char": ("CHAR(10)", ["=1+1", "-1+1", "+cmd"]),
    "varchar": ("VARCHAR(255)", ['=HYPERLINK("http://evil.example/","click")', "😀👍🏽 emoji", "  padded  ",
                                 "\ttab", "שלום עולם مرحبا بالعالم", "@SUM(A1:A9)", "TRUE", "1E+5", "0012"]),
    "text": ("TEXT", ["line1\r\nline2", "\r", "a\rb", "_x0041_", "_x005F_x0041_", "_x000D_",  # defect 5, escapes
                      "<tag attr='1'>&amp;</tag>", '"quoted", comma', "multi\nline\n", " "]),
    "longtext": ("LONGTEXT", ["x" * 40_000, "😀" * 16_384, "😀" * 16_383 + "a",  # defect 2: astral text
                              "a\x00b\x07c\x1fd\x0be\x0cf", "é" * 32_767 + "😀"]),
    "json": ("JSON", ['{"formula": "=1+1", "list": [1, 2]}', "[]"]),
    "enum": ("ENUM('a','b')", ["a", "b"]),
    "set": ("SET('x','y')", ["x,y", ""]),
    "binary": ("BINARY(4)", [b"\x00\x01\x02\x03"]),
    "varbinary": ("VARBINARY(16)", [b"\xff\xfe", b""]),
    "blob": ("BLOB", [bytes(range(32))]),
}


@dataclass
class Workbook:
    path: Path
    #: sheet name -> rows of expected cells, header first
    expected: dict[str, list[list[Expected]]] = field(default_factory=dict)


def _header(columns) -> list[Expected]:
    return [Expected("text", c) for c in columns]


def _write_sheet(writer: XlsxStreamWriter, conns, name: str, sql: str) -> tuple[list[str], list[list[Expected]]]:
    """One sheet through the export's own path (QueryStream reads the server's bytes); what the database
    returns for the same query with the driver's default converters, as expected cells."""
    export_conn, conn = conns
    stream = QueryStream(export_conn, sql, export="conformance")
    writer.start_sheet(name, stream.columns, stream.types)
    for batch in stream.batches():
        writer.write_rows(batch)
    stream.close()
    columns, rows, types = query(conn, sql)
    return columns, expected_rows(columns, rows, types)


@pytest.fixture(scope="session")
def workbooks(mysql, tmp_path_factory) -> list[Workbook]:
    """The conformance workbooks, written once per session."""
    out = tmp_path_factory.mktemp("conformance")
    conn = mysql.connect()
    export_conn = mysql.connect()  # QueryStream reads the server's bytes whatever the connection's converters
    conns = (export_conn, conn)
    with export_conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        columns = ", ".join(f"`{name}` {kind}" for name, (kind, _) in CONFORMANCE.items())
        cur.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, {columns}) CHARACTER SET utf8mb4")
        for i in range(max(len(values) for _, values in CONFORMANCE.values())):
            row = {name: values[i] for name, (_, values) in CONFORMANCE.items() if i < len(values)}
            cur.execute(f"INSERT INTO {TABLE} (id, {', '.join(f'`{n}`' for n in row)}) "
                        f"VALUES (%s{', %s' * len(row)})", [i + 1, *row.values()])
        cur.execute("SET SESSION sql_mode = ''")  # zero dates, where the server allows them
        cur.execute(f"INSERT INTO {TABLE} (id, `date`, `datetime`) VALUES (1000, '0000-00-00', '0000-00-00 00:00:00')")
        cur.execute(f"DROP TABLE IF EXISTS {ROWS_TABLE}")
        cur.execute(f"CREATE TABLE {ROWS_TABLE} (n INT PRIMARY KEY, amount DECIMAL(12,2), at DATE)")
        cur.executemany(f"INSERT INTO {ROWS_TABLE} VALUES (%s, %s, %s)",
                        [(n, Decimal(n * 1234.5).quantize(Decimal("0.01")), dt.date(2024, 1, n)) for n in range(1, 6)])

    books = []
    # 1. Every type and hostile value, one sheet.
    types = Workbook(out / "types.xlsx")
    writer = XlsxStreamWriter(types.path)
    columns, rows = _write_sheet(writer, conns, "Types", f"SELECT * FROM {TABLE} ORDER BY id")
    writer.close()
    types.expected["Types"] = [_header(columns), *rows]
    books.append(types)
    # 2. Several sheets, rows continuing on new sheets, a name to quote, a number format: the package parts.
    parts = Workbook(out / "sheets.xlsx")
    writer = XlsxStreamWriter(parts.path, formats={"amount": "#,##0.00"}, max_rows_per_sheet=2)
    columns, rows = _write_sheet(writer, conns, "O'Brien & <Co>", f"SELECT * FROM {ROWS_TABLE} ORDER BY n")
    _, totals = _write_sheet(writer, conns, "Totals", f"SELECT SUM(amount) AS total FROM {ROWS_TABLE}")
    result = writer.close()
    assert result.sheet_names == ["O'Brien & <Co>", "O'Brien & <Co> (2)", "O'Brien & <Co> (3)", "Totals"]
    for i, name in enumerate(result.sheet_names[:3]):
        parts.expected[name] = [_header(columns), *rows[2 * i:2 * i + 2]]
    parts.expected["Totals"] = [_header(["total"]), *totals]
    books.append(parts)
    # 3. Excel Tables: continuation sheets, header names a table cannot hold as they are, sheet names that are not
    #    valid table names, an empty result; then an About sheet.
    tables = Workbook(out / "tables.xlsx")
    writer = XlsxStreamWriter(tables.path, max_rows_per_sheet=2, table_style="TableStyleLight9")
    columns, rows = _write_sheet(writer, conns, "Orders & more", f"SELECT * FROM {ROWS_TABLE} ORDER BY n")
    for i, name in enumerate(["Orders & more", "Orders & more (2)", "Orders & more (3)"]):
        tables.expected[name] = [_header(columns), *rows[2 * i:2 * i + 2]]
    sql = f"SELECT n AS `a`, n AS `A`, '' AS `x`, amount AS `line\nbreak` FROM {ROWS_TABLE} WHERE n = 1"
    columns, rows = _write_sheet(writer, conns, "R1C1", sql)
    tables.expected["R1C1"] = [_header(["a", "A2", "x", "line break"]), *rows]
    _, empty = _write_sheet(writer, conns, "A1", f"SELECT n, at FROM {ROWS_TABLE} WHERE n < 0")
    tables.expected["A1"] = [_header(["n", "at"])]
    about = [("Export", "tables"), ("Rows in Orders & more", 5), ("Object key", "exports/t/2026/t.xlsx")]
    assert writer.add_about(about) == "About"
    writer.close()
    tables.expected["About"] = [[Expected("text", k), Expected("number", v) if isinstance(v, int)
                                 else Expected("text", v)] for k, v in about]
    books.append(tables)

    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"DROP TABLE IF EXISTS {ROWS_TABLE}")
    conn.close()
    export_conn.close()
    return books


# --- the readers, each run once per session ------------------------------------------------------------


@pytest.fixture(scope="session")
def node_readings(workbooks):
    return xlsx_readers.read_node([w.path for w in workbooks])


@pytest.fixture(scope="session")
def libreoffice_readings(workbooks, tmp_path_factory):
    if xlsx_readers.soffice() is None:
        message = f"LibreOffice (soffice) is not installed: `{LIBREOFFICE_INSTALL}` (as root, after apt-get update)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run every reader: {message}; .ci/run installs it", pytrace=False)
        pytest.skip(message)
    return xlsx_readers.read_libreoffice([w.path for w in workbooks], tmp_path_factory.mktemp("libreoffice"))


@pytest.fixture(scope="session")
def readings(request, workbooks):
    """reader -> path -> sheets (or {"failed": why}), each reader run once for every workbook."""
    cache = {}

    def read(reader: str):
        if reader not in cache:
            if reader in ("sheetjs", "exceljs"):
                node = request.getfixturevalue("node_readings")
                cache[reader] = {path: answer[reader] for path, answer in node.items()}
            elif reader == "libreoffice":
                cache[reader] = request.getfixturevalue("libreoffice_readings")
            else:
                reader_of = {"openpyxl": xlsx_readers.read_openpyxl, "calamine": xlsx_readers.read_calamine}[reader]
                cache[reader] = {w.path: reader_of(w.path) for w in workbooks}
        return cache[reader]

    return read


#: reader -> the READER_LIMITS it needed in this session (for the test that no tolerance is stale)
LIMITS_USED: dict[str, set] = {}


def _compare(reader: str, book: Workbook, sheets) -> list[str]:
    problems = []
    if "failed" in sheets:
        return [f"{book.path.name}: {reader} cannot open it: {sheets['failed']}"]
    if list(sheets) != list(book.expected):
        return [f"{book.path.name}: {reader} sees sheets {list(sheets)}, expected {list(book.expected)}"]
    for name, expected in book.expected.items():
        got = sheets[name]
        width = len(expected[0])
        for r in range(max(len(expected), len(got))):
            for c in range(max(width, len(got[r]) if r < len(got) else 0)):
                want = expected[r][c] if r < len(expected) and c < width else EMPTY
                raw = got[r][c] if r < len(got) and c < len(got[r]) else None
                ok, limit = check(reader, want, raw)
                if limit is not None:
                    LIMITS_USED.setdefault(reader, set()).add(limit)
                if not ok:
                    column = expected[0][c].value if c < width else "?"
                    problems.append(f"{book.path.name} {name}!{column_letter(c)}{r + 1} ({column}): "
                                    f"expected {want!s:.120}, {reader} read {raw!r:.120}")
    return problems


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_shows_every_cell_as_the_readme_says(reader, workbooks, readings):
    # Given workbooks of every MySQL type, hostile strings and the writer's past defects
    # When an independent reader opens them
    read = readings(reader)
    # Then every cell shows what the README's rules say (or a documented reader limit explains it)
    problems = [p for book in workbooks for p in _compare(reader, book, read[book.path])]
    assert not problems, f"{len(problems)} cells misread by {reader}:\n" + "\n".join(problems[:40])


def test_every_tolerated_reader_limit_is_still_needed(workbooks, readings):
    # A tolerance no reader needs any more hides nothing; it must go (from the README too). A reader skipped
    # on this machine (LibreOffice not installed) cannot show its limits.
    ran = set()
    for reader in READERS:
        try:
            read = readings(reader)
        except pytest.skip.Exception:
            continue
        ran.add(reader)
        for book in workbooks:
            _compare(reader, book, read[book.path])
    stale = [f"{limit.reader}: {limit.values}" for limit in READER_LIMITS
             if limit.reader in ran and limit not in LIMITS_USED.get(limit.reader, set())]
    assert not stale, f"reader limits no reader needed: {stale}"


# --- the ISO/IEC 29500 schemas -------------------------------------------------------------------------

XSD = Path(__file__).parent / "data" / "ooxml-xsd"
XML_NS = "{http://www.w3.org/XML/1998/namespace}"
SCHEMA_OF_PART = (  # (part names ending so, schema file)
    ("[Content_Types].xml", "opc-contentTypes.xsd"),
    (".rels", "opc-relationships.xsd"),
    ("docProps/app.xml", "shared-documentPropertiesExtended.xsd"),
    ("xl/workbook.xml", "sml.xsd"),
    ("xl/styles.xml", "sml.xsd"),
    (".xml", "sml.xsd"),  # xl/worksheets/sheetN.xml
)


@pytest.fixture(scope="session")
def schemas() -> dict[str, etree.XMLSchema]:
    return {name: etree.XMLSchema(etree.parse(str(XSD / name))) for _, name in SCHEMA_OF_PART}


# --- Excel Tables, read back by the readers that know them -----------------------------------------------

#: The tables of tables.xlsx: name -> (sheet, range, column names). Each continuation sheet has its own table; the
#: empty result's table spans its header and one empty row (Excel needs a data row in a table).
TABLES = {
    "Orders___more": ("Orders & more", "A1:C3", ["n", "amount", "at"]),
    "Orders___more_2": ("Orders & more (2)", "A1:C3", ["n", "amount", "at"]),
    "Orders___more_3": ("Orders & more (3)", "A1:C2", ["n", "amount", "at"]),
    "_R1C1": ("R1C1", "A1:D2", ["a", "A2", "x", "line break"]),
    "_A1": ("A1", "A1:B2", ["n", "at"]),
}


def _book(workbooks, name: str) -> Workbook:
    return next(w for w in workbooks if w.path.name == name)


def test_openpyxl_reads_each_sheets_table_and_no_auto_filter_beside_it(workbooks):
    import openpyxl

    book = openpyxl.load_workbook(_book(workbooks, "tables.xlsx").path)
    found = {}
    for ws in book:
        assert ws.auto_filter.ref is None, f"{ws.title}: a sheet with a table has no auto-filter of its own"
        for t in ws.tables.values():
            found[t.name] = (ws.title, t.ref, [c.name for c in t.tableColumns])
            assert t.displayName == t.name and t.tableStyleInfo.name == "TableStyleLight9"
            assert t.autoFilter.ref == t.ref and t.tableStyleInfo.showRowStripes
    assert found == TABLES
    assert not book["About"].tables
    # Sheets without tables keep their auto-filter
    sheets = openpyxl.load_workbook(_book(workbooks, "sheets.xlsx").path)
    assert all(ws.auto_filter.ref and not ws.tables for ws in sheets)


def test_calamine_reads_each_table_by_name_with_its_rows(workbooks):
    from python_calamine import CalamineWorkbook

    book = CalamineWorkbook.from_path(str(_book(workbooks, "tables.xlsx").path), load_tables=True)
    assert sorted(book.table_names) == sorted(TABLES)
    orders = [book.get_table_by_name(n) for n in ("Orders___more", "Orders___more_2", "Orders___more_3")]
    assert [t.sheet for t in orders] == ["Orders & more", "Orders & more (2)", "Orders & more (3)"]
    assert [row[0] for t in orders for row in t.to_python()] == [1, 2, 3, 4, 5]
    assert book.get_table_by_name("_R1C1").columns == ["a", "A2", "x", "line break"]


def test_libreoffice_keeps_every_table_when_it_saves_the_workbook_again(workbooks, tmp_path):
    # LibreOffice imports a table as a database range and writes it back as a table: its re-save holds the same
    # names, ranges and columns
    if xlsx_readers.soffice() is None:
        pytest.skip(f"LibreOffice (soffice) is not installed: `{LIBREOFFICE_INSTALL}`")
    import subprocess

    source = _book(workbooks, "tables.xlsx").path
    subprocess.run([xlsx_readers.soffice(), f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}", "--headless",
                    "--norestore", "--convert-to", "xlsx:Calc MS Excel 2007 XML", "--outdir", str(tmp_path / "out"),
                    str(source)], capture_output=True, timeout=300, check=True)
    saved = {}
    with zipfile.ZipFile(tmp_path / "out" / source.name) as z:
        for part in z.namelist():
            if part.startswith("xl/tables/"):
                table = etree.fromstring(z.read(part))
                saved[table.get("name")] = (table.get("ref"), [c.get("name") for c in table.iterfind("{*}tableColumns/{*}tableColumn")])
    assert saved == {name: (ref, columns) for name, (_, ref, columns) in TABLES.items()}


def test_every_part_of_every_workbook_is_valid_against_the_iso_schemas(workbooks, schemas):
    checked = 0
    for book in workbooks:
        with zipfile.ZipFile(book.path) as z:
            for part in z.namelist():
                schema_name = next(s for suffix, s in SCHEMA_OF_PART if part.endswith(suffix))
                if schema_name == "sml.xsd" and not part.startswith("xl/"):
                    pytest.fail(f"{book.path.name}: unexpected part {part}")
                doc = etree.fromstring(z.read(part))
                # xml:space (XML 1.0 section 2.10) is the one attribute the schemas cannot declare on <t>,
                # a simple type: check it here, only "preserve" and only on <t>, then validate the rest.
                for element in doc.iter():
                    space = element.attrib.pop(f"{XML_NS}space", None)
                    if space is not None:
                        assert space == "preserve" and etree.QName(element).localname == "t", part
                schema = schemas[schema_name]
                assert schema.validate(doc), f"{book.path.name} {part}: {schema.error_log.last_error}"
                checked += 1
    assert checked >= 2 * 6  # every workbook has at least six parts
    with zipfile.ZipFile(_book(workbooks, "tables.xlsx").path) as z:  # sml.xsd's CT_Table checked each of them
        assert sorted(p for p in z.namelist() if p.startswith("xl/tables/")) == [
            f"xl/tables/table{i}.xml" for i in range(1, len(TABLES) + 1)]
