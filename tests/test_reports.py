"""Reports: several sheets from one consistent snapshot, SQL files, run-time parameters bound by the
driver, number formats and skip-empty; against the real MariaDB/MySQL with moto for S3.

MySQL, START TRANSACTION: "The WITH CONSISTENT SNAPSHOT modifier starts a consistent read ... The only
isolation level that permits a consistent read is REPEATABLE READ. For all other isolation levels, the
WITH CONSISTENT SNAPSHOT clause is ignored." (https://dev.mysql.com/doc/refman/8.0/en/commit.html);
MariaDB accepts the same ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY``
(https://mariadb.com/docs/server/ha-and-performance/standard-replication/enhancements-for-start-transaction-with-consistent-snapshot),
where a plain START TRANSACTION takes its read view lazily, at the first read.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import zipfile
from decimal import Decimal

import openpyxl
import pytest

from lambdas.export_to_xlsx import database as database_module
from lambdas.export_to_xlsx import definition
from stacks.config import PROJECT_ROOT as ROOT
from lambdas.export_to_xlsx import export as export_module
from lambdas.export_to_xlsx import handler as export_handler
from lambdas.export_to_xlsx import params as params_module
from lambdas.export_to_xlsx import settings as contract
from lambdas.export_to_xlsx.errors import ExportError
from lambdas.export_to_xlsx.params import ParameterDefinition
from tests.test_export_handler import BUCKET, Context, all_keys, env, tables, tmp_files  # noqa: F401 - fixtures

TABLE = "rep_orders"
ROWS = [(1, Decimal("10.50"), dt.date(2026, 11, 19), "alpha"), (2, Decimal("1234.25"), dt.date(2026, 11, 20), "beta"),
        (3, Decimal("0.25"), dt.date(2026, 11, 20), "gamma"), (4, Decimal("99.00"), dt.date(2026, 11, 21), "delta")]


@pytest.fixture
def orders(mysql):
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, amount DECIMAL(10,2), day DATE, label VARCHAR(80)) "
                    "ENGINE=InnoDB CHARACTER SET utf8mb4")
        cur.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s)", ROWS)
    yield conn
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.close()


def run(export: definition.ExportDefinition, params=None, **kwargs) -> dict:
    rt = export_handler.runtime()
    return export_module.run_export(export, endpoint=rt.endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                    params=params, **kwargs)


def workbook(s3, key: str) -> openpyxl.Workbook:
    return openpyxl.load_workbook(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def values(ws) -> list[tuple]:
    return list(ws.iter_rows(values_only=True))


def report(*sheets: tuple[str, str], **fields) -> definition.ExportDefinition:
    """A report as the function gets it: through EXPORTS and the one parser that checks every definition."""
    export = definition.ExportDefinition(
        name=fields.pop("name", "report"), sheets=tuple(definition.SheetDefinition(n, sql) for n, sql in sheets),
        **fields)
    return definition.decode_exports(definition.encode_exports([export]), ROOT)[export.name]


# --- one snapshot for every sheet ---------------------------------------------------------------

THREE_SHEETS = (
    ("Orders", f"SELECT id, amount FROM {TABLE} ORDER BY id"),
    ("Totals", f"SELECT COUNT(*) AS orders, SUM(amount) AS total FROM {TABLE}"),
    ("Latest", f"SELECT MAX(id) AS last_id, (SELECT amount FROM {TABLE} WHERE id = 1) AS first_amount FROM {TABLE}"),
)


@pytest.fixture
def writer_commits_after_sheet_1(mysql, monkeypatch):
    """A concurrent writer that commits (a new order, a changed amount) after sheet 1 is read."""
    started = []
    real = export_module.QueryStream

    def stream(*args, **kwargs):
        started.append(kwargs.get("sheet"))
        if len(started) == 2:  # sheet 1 is fully read; sheets 2 and 3 are still to come
            other = mysql.connect()
            with other.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} VALUES (5, 1000.00, '2026-11-22', 'late')")
                cur.execute(f"UPDATE {TABLE} SET amount = 0 WHERE id = 1")
            other.close()  # autocommit: both are committed before sheet 2 starts
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "QueryStream", stream)
    return started


def session_isolation(monkeypatch, level: str | None) -> None:
    """Make the export's own session default to ``level`` (as a server configured that way would)."""
    if level is None:
        return
    real = export_module.connect

    def connect(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.query(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
        return conn

    monkeypatch.setattr(export_module, "connect", connect)


@pytest.mark.parametrize("isolation", [None, "READ COMMITTED"])
def test_every_sheet_shows_the_state_before_a_concurrent_commit(env, s3, mysql, orders, writer_commits_after_sheet_1,
                                                                 monkeypatch, isolation):
    # Given a 3-sheet report, and a writer that commits between sheet 1 and sheets 2-3,
    # on a server whose sessions default to the isolation level given
    session_isolation(monkeypatch, isolation)
    # When the report runs
    result = run(report(*THREE_SHEETS))
    # Then the writer did commit while the report ran
    assert writer_commits_after_sheet_1 == ["Orders", "Totals", "Latest"]
    with orders.cursor() as cur:
        cur.execute(f"SELECT COUNT(*), SUM(amount) FROM {TABLE}")
        assert cur.fetchone() == (5, Decimal("2333.50"))
    # And every sheet shows the state before that commit, so the sheets agree with each other
    wb = workbook(s3, result["key"])
    assert wb.sheetnames == ["Orders", "Totals", "Latest"]
    assert values(wb["Orders"])[1:] == [(i, float(a)) for i, a, _, _ in ROWS]
    assert values(wb["Totals"])[1:] == [(4, float(sum(a for _, a, _, _ in ROWS)))]
    assert values(wb["Latest"])[1:] == [(4, 10.5)]
    assert result["rows_per_sheet"] == {"Orders": 4, "Totals": 1, "Latest": 1}


def test_without_the_snapshot_the_same_run_would_mix_states(env, s3, orders, writer_commits_after_sheet_1,
                                                            monkeypatch):
    # The control for the test above: a plain read-only transaction under READ COMMITTED sees the commit
    session_isolation(monkeypatch, "READ COMMITTED")
    monkeypatch.setattr(database_module, "SNAPSHOT_STATEMENTS", ("START TRANSACTION READ ONLY",))
    result = run(report(*THREE_SHEETS))
    wb = workbook(s3, result["key"])
    assert len(values(wb["Orders"])) - 1 == 4
    assert values(wb["Totals"])[1:][0][0] == 5  # sheet 2 saw the new order: the sheets disagree


def test_the_snapshot_is_read_only(env, s3, orders):
    # Config refuses a locking read; the server's read-only snapshot refuses it too, should one ever get through
    export = definition.ExportDefinition(name="report", sheets=(
        definition.SheetDefinition("Rows", f"SELECT id FROM {TABLE}"),
        definition.SheetDefinition("Write", f"SELECT id FROM {TABLE} FOR UPDATE")))
    with pytest.raises(ExportError, match=r"export 'report', sheet 'Write': the SQL failed: \(1792\)"):
        run(export)
    assert all_keys(s3) == []


def test_each_sheet_rolls_over_on_its_own_with_unique_names(env, s3, orders):
    # Given two sheets, one named like the first one's overflow sheet would be
    export = report(("Orders", f"SELECT id FROM {TABLE} ORDER BY id"),
                    ("Orders (2)", f"SELECT id, label FROM {TABLE} WHERE id < 4 ORDER BY id"),
                    ("empty", f"SELECT id FROM {TABLE} WHERE id < 0"))
    # When each holds at most 2 rows per sheet
    result = run(export, max_rows_per_sheet=2)
    # Then each continues on sheets of its own, skipping names already taken
    wb = workbook(s3, result["key"])
    assert wb.sheetnames == ["Orders", "Orders (3)", "Orders (2)", "Orders (2) (2)", "empty"]
    assert [values(ws) for ws in wb] == [
        [("id",), (1,), (2,)], [("id",), (3,), (4,)],
        [("id", "label"), (1, "alpha"), (2, "beta")], [("id", "label"), (3, "gamma")], [("id",)]]
    assert result["sheets"] == 5 and result["rows"] == 7
    # And each physical sheet has its own filter range and frozen header
    assert [ws.auto_filter.ref for ws in wb] == ["A1:A3", "A1:A3", "A1:B3", "A1:B2", "A1:A1"]
    assert all(ws.freeze_panes == "A2" for ws in wb)


def test_sql_files_are_read_from_the_package_at_cold_start(env, s3, orders, monkeypatch, tmp_path):
    # Given EXPORTS that names a .sql file of the package instead of holding the SQL
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "big.sql").write_text(f"-- a long report\nSELECT id, label FROM {TABLE} ORDER BY id;\n")
    digest = definition.sql_digest(definition.read_sql_file(tmp_path, "sql/big.sql"))
    monkeypatch.setattr(contract, "PACKAGE_DIR", tmp_path)
    monkeypatch.setenv(contract.ENV_EXPORTS, json.dumps(
        {"filed": {"sheets": [{"name": "Filed", "sql_file": "sql/big.sql", "sha256": digest},
                              {"name": "Inline", "sql": "SELECT 1 AS one"}]}}))
    export_handler.runtime.cache_clear()
    # When it runs
    (result,) = export_handler.handler({"export": "filed"}, Context())["exports"]
    # Then the file's SQL made the first sheet
    wb = workbook(s3, result["key"])
    assert values(wb["Filed"]) == [("id", "label")] + [(i, label) for i, _, _, label in ROWS]
    assert values(wb["Inline"]) == [("one",), (1,)]
    # And a file that is not the SQL synth checked (its digest differs) stops the cold start, naming it
    monkeypatch.setenv(contract.ENV_EXPORTS, json.dumps(
        {"filed": {"sheets": [{"name": "Filed", "sql_file": "sql/big.sql", "sha256": "0" * 16}]}}))
    export_handler.runtime.cache_clear()
    with pytest.raises(contract.ConfigurationError, match=r"sheets\[0\].sql_file: sql/big.sql in the package is not the SQL "
                                                          "synth checked"):
        export_handler.handler({"export": "filed"}, Context())
    # And a file missing from the package stops the cold start, naming it
    (tmp_path / "sql" / "big.sql").unlink()
    export_handler.runtime.cache_clear()
    with pytest.raises(contract.ConfigurationError, match=r"EXPORTS\['filed'\].sheets\[0\].sql_file: .*SQL file sql/big.sql does not exist"):
        export_handler.handler({"export": "filed"}, Context())


# --- parameters ----------------------------------------------------------------------------------

TYPED = report(
    ("Values", "SELECT CAST(%(d)s AS DATE) AS d, CAST(%(t)s AS DATETIME(6)) AS t, %(i)s AS i, "
               "CAST(%(x)s AS DECIMAL(30,10)) AS x, %(s)s AS s, %(kind)s AS kind"),
    ("Matching", f"SELECT id FROM {TABLE} WHERE day = %(d)s AND amount >= %(x)s AND id <> %(i)s ORDER BY id"),
    parameters=(ParameterDefinition("d", "date", "yesterday"), ParameterDefinition("t", "datetime", "now"),
                ParameterDefinition("i", "int", 0), ParameterDefinition("x", "decimal", "0"),
                ParameterDefinition("s", "str", ""), ParameterDefinition("kind", "str", "all", ("all", "paid"))),
    name="typed",
)


def test_parameters_of_every_type_are_bound_and_round_trip(env, s3, orders):
    # Given values of every type, as an event gives them
    given = {"d": "2026-11-20", "t": "2026-11-20T05:06:07.125", "i": "3", "x": "0.2500000001",
             "s": "Grüße", "kind": "paid"}
    # When the report runs
    result = run(TYPED, given, now=lambda: dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
    # Then the database received each as its type and returned it unchanged
    wb = workbook(s3, result["key"])
    assert values(wb["Values"])[1] == (dt.datetime(2026, 11, 20), dt.datetime(2026, 11, 20, 5, 6, 7, 125000), 3,
                                       0.2500000001, "Grüße", "paid")
    assert values(wb["Matching"])[1:] == [(2,)]  # day = 2026-11-20, amount >= 0.25, id <> 3
    # And the key's folders are the date parameter's day; metadata and result list the values
    assert result["key"] == "exports/typed/2026/11/20/typed-20270102T030405.000Z.xlsx"
    recorded = {"d": "2026-11-20", "t": "2026-11-20T05:06:07.125000", "i": "3", "x": "0.2500000001",
                "s": "Grüße", "kind": "paid"}
    assert result["params"] == recorded
    metadata = s3.head_object(Bucket=BUCKET, Key=result["key"])["Metadata"]
    assert json.loads(metadata["params"]) == recorded
    assert metadata["params"].isascii()


@pytest.mark.parametrize("hostile", ["'; DROP TABLE rep_orders; --", "%s", "%(s)s", "%%", "\\' OR 1=1 -- ",
                                     "ünïcödé ☃ 😀 \u202e", "\\", "NULL"])
def test_hostile_values_are_bound_never_spliced_into_the_sql(env, s3, orders, hostile):
    export = report(("Echo", "SELECT %(s)s AS s, CHAR_LENGTH(%(s)s) AS n"),
                    ("Match", f"SELECT COUNT(*) AS n FROM {TABLE} WHERE label = %(s)s OR label LIKE 'x%%'"),
                    parameters=(ParameterDefinition("s", "str"),))
    result = run(export, {"s": hostile})
    wb = workbook(s3, result["key"])
    # The value came back as one string, character for character; it matched nothing
    assert values(wb["Echo"])[1] == (hostile, len(hostile))
    assert values(wb["Match"])[1] == (0,)
    # And the table is still there, untouched
    with orders.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
        assert cur.fetchone() == (len(ROWS),)


@pytest.mark.parametrize("given, message", [
    ({"nope": "1"}, r"export 'typed': unknown parameter\(s\) 'nope'; declared: d, t, i, x, s, kind"),
    ({"d": "2026-13-01"}, r"parameter 'd': value '2026-13-01' is not a date"),
    ({"d": 20261120}, r"parameter 'd': value 20261120 is not a date \(give it as text\)"),
    ({"t": "5 o'clock"}, r"parameter 't': value .* is not a datetime"),
    ({"i": "1.5"}, r"parameter 'i': value '1.5' is not a whole number"),
    ({"i": True}, r"parameter 'i': value True is not a whole number"),
    ({"i": "99999999999999999999"}, r"parameter 'i': value .* is not a"),
    ({"x": 0.1}, r"parameter 'x': value 0.1 is not a decimal number \(give it as text"),
    ({"x": "NaN"}, r"parameter 'x': value 'NaN' is not a finite decimal"),
    ({"x": "1e999999999"}, r"parameter 'x': value '1e999999999' is not a decimal number below 10\^65 in magnitude"),
    ({"x": "1e1000000000000000000"}, r"parameter 'x': value '1e1000000000000000000' is not a decimal number"),
    ({"x": "-1e-999999999"}, r"parameter 'x': value .* with at most 65 decimal places"),
    ({"x": "0e999999999"}, r"parameter 'x': value .* below 10\^65 in magnitude"),
    ({"x": 10**70}, r"parameter 'x': value a number of 71 digits is not a decimal number below 10\^65"),
    ({"x": "1" * 10**6}, r"parameter 'x': value '1111.*'\.\.\.\(1000000 characters\) is not a decimal number of at most 100"),
    ({"d": "x" * 300_000}, r"parameter 'd': value 'xxxx.*\(300000 characters\) is not a date \(ISO"),
    ({"n" * 300_000: 1}, r"unknown parameter\(s\) 'nnnn.*\(300000 characters\); declared"),
    ({"s": ["a"]}, r"parameter 's': value \['a'\] is not text"),
    ({"s": "x" * 201}, r"parameter 's': value is longer than 200 characters"),
    ({"t": "0001-01-01T00:00:00+05:00"}, r"parameter 't': value .* is not a datetime that exists in the export's"),
    ({"s": "\U0001F600" * 200}, r"export 'typed': the parameter values take \d+ bytes in the workbook's metadata, "
                                 r"more than 1024 \(S3 keeps 2 KB"),
    ({"kind": "refunded"}, r"parameter 'kind': value 'refunded' is not one of 'all', 'paid'"),
    ("day=1", r"export 'typed': \"params\" must be an object"),
])
def test_a_bad_parameter_fails_before_connecting_naming_it(env, s3, monkeypatch, tmp_files, given, message):
    def no_connection(*args, **kwargs):
        raise AssertionError("connected to the database")

    monkeypatch.setattr(export_module, "_connect", no_connection)
    with pytest.raises(ExportError, match=message):
        run(TYPED, given)
    assert all_keys(s3) == [] and list(tmp_files.iterdir()) == []


@pytest.mark.parametrize("value", ["1e999999999", "1e-999999999", "1e1000000000000000000", "9" * 10**6, 10**4000],
                         ids=["exponent", "negative-exponent", "exponent-of-19-digits", "million-digits", "json-int"])
def test_a_huge_decimal_is_refused_in_milliseconds(value):
    """PyMySQL writes a Decimal out in full: '1e999999999' was a gigabyte literal, '1e18' digits a MemoryError."""
    definition = ParameterDefinition("x", "decimal")
    started = time.perf_counter()
    with pytest.raises(params_module.ParameterError, match=r"^parameter 'x': value .{1,120} is not a decimal number"):
        params_module.resolve([definition], {"x": value}, dt.datetime.now(dt.timezone.utc), "UTC", export="e")
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("value", ["-" + "9" * 65, "9.99999999999999999999999999999999999999999999999999999999999999E+64",
                                   "1e-65", "0.5", "-0"])
def test_decimals_within_mysql_decimal_range_are_accepted(value):
    from decimal import Decimal

    definition = ParameterDefinition("x", "decimal")
    resolved = params_module.resolve([definition], {"x": value}, dt.datetime.now(dt.timezone.utc), "UTC", export="e")
    assert resolved == {"x": Decimal(value)}


def test_a_parameter_without_default_must_be_given(env, s3):
    export = report(("A", "SELECT %(day)s AS day"), parameters=(ParameterDefinition("day", "date"),))
    with pytest.raises(ExportError, match=r"export 'report': parameter 'day' has no default; the event must give it"):
        run(export)


def test_the_event_gives_parameters_to_one_export(env, s3, orders, monkeypatch, caplog):
    # Given a deployed export with a date parameter (as the operator's backfill invokes it)
    monkeypatch.setenv(contract.ENV_EXPORTS, definition.encode_exports([report(
        ("Day", f"SELECT id, amount FROM {TABLE} WHERE day = %(day)s ORDER BY id"),
        parameters=(ParameterDefinition("day", "date", "yesterday"),), time_zone="Europe/Berlin", name="daily")]))
    export_handler.runtime.cache_clear()
    caplog.set_level("INFO")
    # When an event gives the day
    (result,) = export_handler.handler({"export": "daily", "params": {"day": "2026-11-20"}}, Context())["exports"]
    # Then that day is exported into that day's folder, and the log line lists the value
    assert result["key"].startswith("exports/daily/2026/11/20/daily-")
    assert values(workbook(s3, result["key"])["Day"])[1:] == [(2, 1234.25), (3, 0.25)]
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if '"outcome": "uploaded"' in r.getMessage()]
    assert line["params"] == {"day": "2026-11-20"}


def test_a_sensitive_parameter_never_leaves_the_run_as_it_is(env, s3, orders, monkeypatch, caplog):
    # Given an export whose label parameter is declared sensitive (e.g. a customer's e-mail address)
    monkeypatch.setenv(contract.ENV_EXPORTS, definition.encode_exports([report(
        ("Rows", f"SELECT id, label FROM {TABLE} WHERE label = %(who)s ORDER BY id"),
        parameters=(ParameterDefinition("who", "str", sensitive=True),), name="private")]))
    export_handler.runtime.cache_clear()
    caplog.set_level("DEBUG")
    secret = ROWS[1][3]
    # When an event gives its value
    (result,) = export_handler.handler({"export": "private", "params": {"who": secret}}, Context())["exports"]
    # Then the workbook holds the rows it selects, and the value is a digest wherever it is recorded: the result
    # (also the log line and the ledger item), the workbook's metadata (also what the copy and its event carry)
    assert values(workbook(s3, result["key"])["Rows"])[1:] == [(ROWS[1][0], secret)]
    shown = params_module.digest(secret)
    assert result["params"] == {"who": shown} and shown.startswith("sha256:")
    head = s3.head_object(Bucket=BUCKET, Key=result["key"])
    assert json.loads(head["Metadata"]["params"]) == {"who": shown}
    assert secret not in caplog.text and shown in caplog.text
    # And a bad value is refused without quoting it
    with pytest.raises(params_module.ParameterError, match=r"parameter 'who': value \(sensitive, not shown\) is not one of") as err:
        params_module.resolve((ParameterDefinition("who", "str", allowed=("a",), sensitive=True),),
                              {"who": secret}, dt.datetime.now(dt.timezone.utc), "UTC", export="private")
    assert secret not in str(err.value)


@pytest.mark.parametrize("event, message", [
    ({"params": {"day": "2026-11-20"}}, '"params" needs "export"'),
    ({"export": "numbers", "param": {}}, r"unknown field\(s\) 'param'"),
    ({"export": "numbers", "params": {"day": "2026-11-20"}}, r"export 'numbers': unknown parameter\(s\) 'day'; "
                                                               "declared: none"),
])
def test_events_with_misplaced_parameters_are_refused(env, s3, event, message):
    with pytest.raises(ExportError, match=message):
        export_handler.handler(event, Context())
    assert all_keys(s3) == []


# --- relative dates, in the export's time zone, at a fixed clock ----------------------------------

DATE_WORDS = ("today", "yesterday", "start_of_month", "start_of_previous_month", "-7d", "+1d", "start_of_year")


def at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("now, zone, expected", [
    # 03:00 UTC on 1 March is still 28 February in New York: the month boundary follows the zone
    (at("2026-03-01T03:00"), "America/New_York",
     ["2026-02-28", "2026-02-27", "2026-02-01", "2026-01-01", "2026-02-21", "2026-03-01", "2026-01-01"]),
    (at("2026-03-01T03:00"), "UTC",
     ["2026-03-01", "2026-02-28", "2026-03-01", "2026-02-01", "2026-02-22", "2026-03-02", "2026-01-01"]),
    # The day clocks spring forward (8 March 2026, 02:00 EST -> 03:00 EDT): 23:30 EDT is 03:30 UTC next day
    (at("2026-03-09T03:30"), "America/New_York",
     ["2026-03-08", "2026-03-07", "2026-03-01", "2026-02-01", "2026-03-01", "2026-03-09", "2026-01-01"]),
    # ... and one hour earlier in UTC terms, before the change took effect locally (EST, UTC-5)
    (at("2026-03-08T04:30"), "America/New_York",
     ["2026-03-07", "2026-03-06", "2026-03-01", "2026-02-01", "2026-02-28", "2026-03-08", "2026-01-01"]),
    # Clocks fall back (1 November 2026): 23:30 EST is 04:30 UTC on the 2nd
    (at("2026-11-02T04:30"), "America/New_York",
     ["2026-11-01", "2026-10-31", "2026-11-01", "2026-10-01", "2026-10-25", "2026-11-02", "2026-01-01"]),
    # New Year in Berlin while it is still the old year in UTC
    (at("2026-12-31T23:30"), "Europe/Berlin",
     ["2027-01-01", "2026-12-31", "2027-01-01", "2026-12-01", "2026-12-25", "2027-01-02", "2027-01-01"]),
])
def test_relative_dates_follow_the_exports_calendar(now, zone, expected):
    definitions = [ParameterDefinition(f"p{i}", "date", word) for i, word in enumerate(DATE_WORDS)]
    resolved = params_module.resolve(definitions, {}, now, zone, export="x")
    assert [v.isoformat() for v in resolved.values()] == expected


def test_relative_datetimes_are_local_midnight_or_now_in_the_zone():
    definitions = [ParameterDefinition("start", "datetime", "yesterday"), ParameterDefinition("at", "datetime", "now"),
                   ParameterDefinition("given", "datetime")]
    resolved = params_module.resolve(definitions, {"given": "2026-03-08T12:00:00+00:00"}, at("2026-03-09T03:30:15"),
                                     "America/New_York", export="x")
    assert resolved == {"start": dt.datetime(2026, 3, 7), "at": dt.datetime(2026, 3, 8, 23, 30, 15),
                        "given": dt.datetime(2026, 3, 8, 8, 0)}  # noon UTC is 08:00 EDT that day


def test_the_default_is_taken_when_the_run_starts_and_bound(env, s3, orders):
    # Given a 'yesterday' default in New York and a run at 03:30 UTC on 21 November (22:30 on the 20th there)
    export = report(("Day", f"SELECT id FROM {TABLE} WHERE day = %(day)s ORDER BY id"),
                    parameters=(ParameterDefinition("day", "date", "yesterday"),), time_zone="America/New_York")
    result = run(export, now=lambda: at("2026-11-21T03:30"))
    # Then the 19th is exported (yesterday in New York, not in UTC), into the 19th's folder
    assert result["params"] == {"day": "2026-11-19"}
    assert result["key"] == "exports/report/2026/11/19/report-20261121T033000.000Z.xlsx"
    assert values(workbook(s3, result["key"])["Day"])[1:] == [(1,)]


# --- formats and empty results ------------------------------------------------------------------

def test_number_formats_are_real_excel_formats(env, s3, orders):
    # Given formats for some columns (one of which appears on two sheets and one on none)
    export = report(("Orders", f"SELECT id, amount, amount / 1000 AS share, day, label FROM {TABLE} ORDER BY id"),
                    ("Totals", f"SELECT SUM(amount) AS amount FROM {TABLE}"),
                    formats={"amount": "#,##0.00", "share": "0.0%", "day": "dd.mm.yyyy", "missing": "0"})
    result = run(export)
    wb = workbook(s3, result["key"])
    ws = wb["Orders"]
    # Then openpyxl reads each formatted column's cells with that number format, values unchanged
    for row in ws.iter_rows(min_row=2):
        id_, amount, share, day, label = row
        assert amount.number_format == "#,##0.00" and share.number_format == "0.0%"
        assert day.number_format == "dd.mm.yyyy" and day.is_date
        assert id_.number_format == "General" and label.number_format == "General"
    assert [c.value for c in ws[3]][:4] == [2, 1234.25, 1.23425, dt.datetime(2026, 11, 20)]
    assert wb["Totals"]["A2"].number_format == "#,##0.00"
    # And headers keep their own style; a format no column matched is reported, not fatal
    assert ws["B1"].font.b and ws["B1"].number_format == "General"
    assert result["formats_unmatched"] == ["missing"]
    # And styles.xml declares each custom format once, after the built-in ones
    with zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read())) as z:
        styles = z.read("xl/styles.xml").decode()
    # (5 built-in: date, datetime, time, datetime and time with milliseconds; 3 custom ones used)
    assert styles.count('formatCode="#,##0.00"') == 1 and '<numFmts count="8">' in styles


@pytest.mark.parametrize("on_empty, uploaded", [("skip", False), ("upload", True)])
def test_an_empty_result_is_skipped_or_uploaded(env, s3, orders, tmp_files, caplog, monkeypatch, on_empty, uploaded):
    monkeypatch.setenv(contract.ENV_EXPORTS, definition.encode_exports([report(
        ("A", f"SELECT id FROM {TABLE} WHERE id < 0"), ("B", f"SELECT label FROM {TABLE} WHERE id < 0"),
        on_empty=on_empty, name="maybe")]))
    export_handler.runtime.cache_clear()
    caplog.set_level("INFO")
    (result,) = export_handler.handler({"export": "maybe"}, Context())["exports"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith('{"export": "maybe"')]
    if uploaded:
        assert result["outcome"] == "uploaded" and len(all_keys(s3)) == 1
        assert workbook(s3, result["key"]).sheetnames == ["A", "B"]
    else:
        assert result == {"export": "maybe", "outcome": "skipped: empty", "rows": 0, "seconds": result["seconds"],
                          "run_id": result["run_id"]}
        assert all_keys(s3) == []
        assert lines[-1]["outcome"] == "skipped: empty"
    assert list(tmp_files.iterdir()) == []


def test_skip_uploads_when_any_sheet_has_rows(env, s3, orders):
    export = report(("A", f"SELECT id FROM {TABLE} WHERE id < 0"), ("B", f"SELECT id FROM {TABLE} WHERE id = 1"),
                    on_empty="skip")
    result = run(export)
    assert result["outcome"] == "uploaded" and result["rows"] == 1


def test_libreoffice_shows_every_sheet_with_its_number_formats(env, s3, orders, tmp_path):
    """An independent reader renders the workbook: LibreOffice headless converts each sheet to CSV as shown on
    screen, so the number formats must be real Excel formats it applies, and every sheet must be there."""
    from tests.xlsx_readers import LIBREOFFICE_INSTALL, read_libreoffice, soffice

    if soffice() is None:
        pytest.fail(f"LibreOffice is needed to read the workbook independently: {LIBREOFFICE_INSTALL}", pytrace=False)
    export = report(("Orders", f"SELECT id, amount, amount / 1000 AS share, day FROM {TABLE} ORDER BY id"),
                    ("Totals", f"SELECT SUM(amount) AS amount FROM {TABLE}"),
                    formats={"amount": "#,##0.00", "share": "0.0%", "day": "dd.mm.yyyy"})
    result = run(export, max_rows_per_sheet=3)
    path = tmp_path / "report.xlsx"
    path.write_bytes(s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read())
    shown = read_libreoffice([path], tmp_path)[path]
    assert sorted(shown) == ["Orders", "Orders (2)", "Totals"]
    assert shown["Orders"] == [["id", "amount", "share", "day"], ["1", "10.50", "1.1%", "19.11.2026"],
                               ["2", "1,234.25", "123.4%", "20.11.2026"], ["3", "0.25", "0.0%", "20.11.2026"]]
    assert shown["Orders (2)"] == [["id", "amount", "share", "day"], ["4", "99.00", "9.9%", "21.11.2026"]]
    assert shown["Totals"] == [["amount"], ["1,344.00"]]
