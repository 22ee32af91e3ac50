"""Independent spreadsheet readers, their output as Python values, and the few reader limits the tests tolerate.

Readers: openpyxl and python-calamine (Rust's calamine) in process; SheetJS and ExcelJS in one Node.js process
(tests/read_xlsx.js); LibreOffice headless converting every sheet to CSV as shown on screen.

A read value, turned into Python values here, is compared under the README's rules by
``pipeline_ops.xlsx_expect.accepts``, whose READER_LIMITS table is the one place where a reader's limit is tolerated.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from pipeline_ops.xlsx_expect import EXCEL_EPOCH, Expected, ReaderLimit, accepts

ROOT = Path(__file__).resolve().parent.parent
READERS = ("openpyxl", "calamine", "sheetjs", "exceljs", "libreoffice")
LIBREOFFICE_INSTALL = "apt-get install -y libreoffice-calc-nogui"
#: LibreOffice's CSV filter: comma, double quote, UTF-8, from line 1, default cell formats, no language,
#: quoted fields not as numbers, special numbers detected, cells AS SHOWN (the formats the writer chose, as a
#: user sees them), no formulas, spaces kept, every sheet to its own file (-1: FILE-SheetName.csv).
LIBREOFFICE_CSV = "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,true,false,false,-1"

Sheets = dict[str, list[list[object]]]  # sheet name -> rows of cells, header first

# --- the readers ---------------------------------------------------------------------------------


def read_openpyxl(path: Path) -> Sheets:
    import openpyxl

    book = openpyxl.load_workbook(path)
    return {ws.title: [list(row) for row in ws.iter_rows(values_only=True)] for ws in book}


def read_calamine(path: Path) -> Sheets:
    from python_calamine import CalamineWorkbook

    book = CalamineWorkbook.from_path(str(path))
    return {name: book.get_sheet_by_name(name).to_python(skip_empty_area=False) for name in book.sheet_names}


def read_node(paths: list[Path]) -> dict[Path, dict[str, Sheets | dict]]:
    """SheetJS and ExcelJS, one Node.js process for every workbook: {path: {"sheetjs": ..., "exceljs": ...}}."""
    script = ROOT / "tests" / "read_xlsx.js"
    done = subprocess.run(
        ["node", str(script), *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TZ": "UTC"},
    )
    if done.returncode:
        raise RuntimeError(f"node {script.name} failed (SheetJS and ExcelJS come from `npm ci`, which `make test` "
                           f"runs): {done.stderr.strip()[-2000:]}")
    answer = json.loads(done.stdout)
    return {Path(p): readers for p, readers in answer.items()}


def soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def read_libreoffice(paths: list[Path], out_dir: Path) -> dict[Path, Sheets]:
    """Every sheet of every workbook through one headless LibreOffice run, as CSV text shown on screen."""
    profile = Path(tempfile.mkdtemp(prefix="lo-profile-", dir=out_dir))  # this run's own user installation
    done = subprocess.run(
        [soffice(), f"-env:UserInstallation={profile.as_uri()}", "--headless", "--norestore",
         "--convert-to", LIBREOFFICE_CSV, "--outdir", str(out_dir), *map(str, paths)],
        capture_output=True, text=True, timeout=600,
    )
    result: dict[Path, Sheets] = {}
    for path in paths:
        sheets = {}
        for name in sheet_names(path):  # FILE-SheetName.csv says nothing of the order
            csv_file = out_dir / f"{path.stem}-{name}.csv"
            if not csv_file.exists():
                raise RuntimeError(f"LibreOffice wrote no {csv_file.name}: {done.stdout} {done.stderr}")
            with csv_file.open(newline="", encoding="utf-8") as f:
                sheets[name] = list(csv.reader(f))
        result[path] = sheets
    return result


def sheet_names(path: Path) -> list[str]:
    """The sheet names of a workbook, in order, from its xl/workbook.xml."""
    from lxml import etree

    with zipfile.ZipFile(path) as z:
        book = etree.fromstring(z.read("xl/workbook.xml"))
    return [s.get("name") for s in book.iterfind("{*}sheets/{*}sheet")]


# --- their values as Python values -----------------------------------------------------------------


def from_openpyxl(value: object) -> object:
    return value


def from_calamine(value: object, expected: Expected) -> object:
    if isinstance(value, dt.time):  # a duration under a day
        return dt.timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                            microseconds=value.microsecond)
    if type(value) is dt.date and expected.kind == "datetime":
        return dt.datetime.combine(value, dt.time())  # calamine gives a date-time at midnight as a date
    return value


def from_node(value: object, expected: Expected) -> object:
    """JSON from read_xlsx.js: dates are {"date": ISO in UTC}; JavaScript has no durations, so a duration
    reads as a date counted from Excel's day zero (1899-12-30)."""
    if isinstance(value, dict) and "date" in value:
        moment = dt.datetime.fromisoformat(value["date"].replace("Z", "+00:00")).replace(tzinfo=None)
        return moment - EXCEL_EPOCH if expected.kind == "duration" else moment
    if isinstance(value, dict):
        return f"<{value}>"  # an error or a formula: never equal to an expected value
    return value


_CLOCK = re.compile(r"(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?")


def from_libreoffice(text: str, expected: Expected) -> object:
    """CSV holds text as shown on screen: read it as the kind of value expected; unreadable text stays text."""
    kind = expected.kind
    try:
        if kind == "number":
            return float(text.replace(",", ""))  # a column's number format may group thousands: 1,234.50
        if kind == "bool":
            return {"TRUE": True, "FALSE": False}[text]
        if kind == "date":
            return dt.date.fromisoformat(text)
        if kind == "datetime":
            return dt.datetime.fromisoformat(text)
        if kind == "duration":
            h, m, s, frac = _CLOCK.fullmatch(text).groups()
            return dt.timedelta(hours=int(h), minutes=int(m), seconds=int(s),
                                microseconds=int((frac or "0").ljust(6, "0")))
    except (ValueError, KeyError, AttributeError):
        pass
    return text


def as_python(reader: str, value: object, expected: Expected) -> object:
    if reader == "openpyxl":
        return from_openpyxl(value)
    if reader == "calamine":
        return from_calamine(value, expected)
    if reader in ("sheetjs", "exceljs"):
        return from_node(value, expected)
    if reader == "libreoffice":
        return from_libreoffice(value, expected)
    raise ValueError(reader)


def check(reader: str, expected: Expected, raw: object) -> tuple[bool, ReaderLimit | None]:
    """(the cell ``reader`` returned reads as expected, or the reader limit that explains the difference)."""
    return accepts(reader, expected, as_python(reader, raw, expected))
