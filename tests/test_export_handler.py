"""ExportToXlsx against the real MariaDB/MySQL server, with moto for S3 and Secrets Manager.

Every test reads the uploaded workbook back with openpyxl and compares it with what
the database returns for the same query.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import tempfile
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from lambdas.export_to_xlsx import export as export_module
from lambdas.export_to_xlsx import handler as export_handler
from lambdas.export_to_xlsx import settings as contract
from lambdas.export_to_xlsx.definition import ExportDefinition
from lambdas.export_to_xlsx.errors import ExportError
from pipeline_ops.xlsx_expect import assert_rows_match, query

BUCKET = "source-bucket"
PREFIX = "exports/"
HOSTILE_TABLE = "xlsx_hostile"
NUMBERS_TABLE = "xlsx_numbers"

HOSTILE_DDL = f"""
CREATE TABLE {HOSTILE_TABLE} (
  id INT PRIMARY KEY,
  tiny TINYINT, small SMALLINT, medium MEDIUMINT, i INT, big BIGINT, ubig BIGINT UNSIGNED,
  flag BOOL, bit1 BIT(1), bit12 BIT(12),
  dec_small DECIMAL(10,2), dec_big DECIMAL(65,30),
  f FLOAT, d DOUBLE,
  day DATE, moment DATETIME(6), ts TIMESTAMP NULL DEFAULT NULL, t TIME(6), yr YEAR,
  ch CHAR(10), vc VARCHAR(255), txt TEXT, longtxt LONGTEXT, js JSON,
  en ENUM('a','b'), st SET('x','y'),
  bin BINARY(4), vbin VARBINARY(16), blb BLOB
) CHARACTER SET utf8mb4
"""

HOSTILE_ROWS = [
    {"id": 1},  # every other column NULL
    {"id": 2, "tiny": -128, "small": 32767, "medium": -8388608, "i": 2147483647, "big": 9223372036854775807,
     "ubig": 18446744073709551615, "flag": 1, "bit1": 1, "bit12": 4095, "dec_small": Decimal("-99999999.99"),
     "dec_big": Decimal("99999999999999999999999999999999999.999999999999999999999999999999"),
     "f": 3.5, "d": 1.7976931348623157e308, "day": dt.date(2024, 2, 29),
     "moment": dt.datetime(2024, 2, 29, 23, 59, 59, 999000), "ts": dt.datetime(2038, 1, 19, 3, 14, 7),
     "t": dt.timedelta(hours=838, minutes=59, seconds=59), "yr": 2155,
     "ch": "=1+1", "vc": '=HYPERLINK("http://evil.example/","click")', "txt": "@SUM(A1:A9)",
     "longtxt": "x" * 40_000, "js": '{"formula": "=1+1", "list": [1, 2]}', "en": "b", "st": "x,y",
     "bin": b"\x00\x01\x02\x03", "vbin": b"\xff\xfe", "blb": bytes(range(32))},
    {"id": 3, "tiny": 0, "big": 123456789012345, "ubig": 1234567890123456, "flag": 0, "bit1": 0, "bit12": 0,
     "dec_small": Decimal("0.10"), "dec_big": Decimal("0.000000000000000000000000000001"),
     "f": -0.25, "d": -2.5e-300, "day": dt.date(1850, 6, 15), "moment": dt.datetime(1899, 12, 31, 23, 59, 59),
     "t": dt.timedelta(hours=-838, minutes=-59, seconds=-59), "yr": 1901,
     "ch": "+cmd", "vc": "😀👍🏽 emoji", "txt": "שלום עולם مرحبا بالعالم", "longtxt": "a\x00b\x07c\x1fd\x0be",
     "js": "[]", "en": "a", "st": "", "vbin": b"", "blb": b""},
    {"id": 4, "day": dt.date(1900, 1, 1), "moment": dt.datetime(1900, 3, 1, 0, 0, 0, 1000),
     "t": dt.timedelta(microseconds=500000), "vc": "  padded  ", "txt": "line1\r\nline2\ttab",
     "longtxt": "<tag attr='1'>&amp;</tag> _x0041_", "ch": "-1+1", "dec_big": Decimal("-12345.678900")},
    {"id": 5, "day": dt.date(9999, 12, 31), "moment": dt.datetime(9999, 12, 31, 23, 59, 59, 999000),
     "d": 0.1, "f": 1e20, "i": -2147483648, "big": -9223372036854775808, "dec_big": Decimal("1E-30"),
     "ubig": 10**19},  # 20 digits, 1 significant: Excel holds it exactly
]


def _insert(conn, table: str, rows: list[dict]) -> None:
    with conn.cursor() as cur:
        for row in rows:
            cols = ", ".join(row)
            marks = ", ".join(["%s"] * len(row))
            cur.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))


@pytest.fixture(scope="module")
def tables(mysql):
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {HOSTILE_TABLE}")
        cur.execute(HOSTILE_DDL)
        cur.execute(f"DROP TABLE IF EXISTS {NUMBERS_TABLE}")
        cur.execute(f"CREATE TABLE {NUMBERS_TABLE} (n INT PRIMARY KEY, label VARCHAR(40), at DATE)")
    _insert(conn, HOSTILE_TABLE, HOSTILE_ROWS)
    with conn.cursor() as cur:
        # A zero date, where the server's SQL mode allows one.
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(f"INSERT INTO {HOSTILE_TABLE} (id, day, moment) VALUES (6, '0000-00-00', '0000-00-00 00:00:00')")
        cur.executemany(f"INSERT INTO {NUMBERS_TABLE} VALUES (%s, %s, %s)",
                        [(n, f"row {n}", dt.date(2024, 1, 1) + dt.timedelta(days=n)) for n in range(1, 8)])
    yield conn
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {HOSTILE_TABLE}")
        cur.execute(f"DROP TABLE IF EXISTS {NUMBERS_TABLE}")
    conn.close()


EXPORTS = {
    "hostile": {"sql": f"SELECT * FROM {HOSTILE_TABLE} ORDER BY id", "sheet_name": "Hostile"},
    "numbers": {"sql": f"SELECT n, label, at FROM {NUMBERS_TABLE} ORDER BY n", "sheet_name": "numbers"},
    "empty": {"sql": f"SELECT n, label FROM {NUMBERS_TABLE} WHERE n < 0", "sheet_name": "empty"},
    "one": {"sql": f"SELECT n, label, at FROM {NUMBERS_TABLE} WHERE n = 1", "sheet_name": "one"},
    "broken": {"sql": "SELECT * FROM no_such_table_here", "sheet_name": "broken"},
}


@pytest.fixture
def tmp_files(monkeypatch, tmp_path):
    """The function's /tmp: a fresh folder, so a test can check nothing is left in it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def env(monkeypatch, s3, secrets, mysql, tables, tmp_files, ledger):
    """Environment as the stack sets it (names from the contract), pointing at local services."""
    s3.create_bucket(Bucket=BUCKET)
    arn = secrets.create_secret(Name="db/export", SecretString=mysql.secret_json())["ARN"]
    values = {
        contract.ENV_SOURCE_BUCKET: BUCKET,
        contract.ENV_KEY_PREFIX: PREFIX,
        contract.ENV_DB_AUTH: "secret",
        contract.ENV_DB_SECRET_ARN: arn,
        contract.ENV_DB_HOST: mysql.host,
        contract.ENV_DB_PORT: str(mysql.port),
        contract.ENV_DB_NAME: mysql.database,
        contract.ENV_DB_TLS: "off",
        contract.ENV_EXPORTS: json.dumps(EXPORTS),
        contract.ENV_LEDGER_TABLE: ledger.name,
        contract.ENV_HISTORY_DAYS: "400",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    export_handler.runtime.cache_clear()
    yield values
    export_handler.runtime.cache_clear()


class Context:
    def __init__(self, seconds_left: float = 900):
        self.seconds_left = seconds_left

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds_left * 1000)


def all_keys(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def open_workbook(s3, key: str) -> openpyxl.Workbook:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return openpyxl.load_workbook(io.BytesIO(body))


def db_rows(mysql, sql: str):
    conn = mysql.connect()
    try:
        return query(conn, sql)
    finally:
        conn.close()


# --- the round trip ----------------------------------------------------------------


def test_every_mysql_type_and_hostile_value_round_trips(env, s3, mysql):
    # Given a table with every column type and hostile values
    # When the export runs
    result = export_handler.handler({"export": "hostile"}, Context())
    # Then one workbook holds exactly what the database holds, cell by cell
    (uploaded,) = result["exports"]
    columns, rows, types = db_rows(mysql, EXPORTS["hostile"]["sql"])
    wb = open_workbook(s3, uploaded["key"])
    assert wb.sheetnames == ["Hostile"]
    ws = wb["Hostile"]
    read = list(ws.iter_rows(values_only=True))
    assert list(read[0]) == columns
    assert len(read) - 1 == len(rows) == uploaded["rows"]
    assert_rows_match(read[1:], columns, rows, types)
    # And no string became a formula
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            assert cell.data_type != "f", cell.coordinate
    # And the header is frozen and filtered, dates look like dates
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == f"A1:{openpyxl.utils.get_column_letter(len(columns))}{len(rows) + 1}"
    day = ws.cell(row=3, column=columns.index("day") + 1)
    moment = ws.cell(row=3, column=columns.index("moment") + 1)
    assert day.is_date and day.number_format == "yyyy\\-mm\\-dd"
    assert moment.is_date and "hh:mm:ss" in moment.number_format
    widths = [ws.column_dimensions[openpyxl.utils.get_column_letter(i + 1)].width for i in range(len(columns))]
    assert all(6 <= w <= 60 for w in widths) and widths[columns.index("longtxt")] == 60
    # And every change made to fit the format is counted
    changed = uploaded["values_changed"]
    assert changed["strings_truncated"] == 1
    assert changed["control_characters_replaced"] == 4
    assert changed["big_numbers_as_text"] >= 3


def test_object_key_content_type_and_metadata(env, s3):
    fixed = dt.datetime(2026, 2, 3, 4, 5, 6, 789123, tzinfo=dt.timezone.utc)
    export = export_handler.runtime().settings.exports["numbers"]
    rt = export_handler.runtime()
    result = export_module.run_export(export, endpoint=rt.endpoint, secrets=rt.secrets, s3=rt.s3,
                                      target=rt.target, now=lambda: fixed)
    assert result["key"] == "exports/numbers/2026/02/03/numbers-20260203T040506.789Z.xlsx"
    head = s3.head_object(Bucket=BUCKET, Key=result["key"])
    assert head["ContentType"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    import hashlib

    assert head["Metadata"] == {
        "export": "numbers", "rows": "7", "sheets": "1",
        "sql-sha256": hashlib.sha256(EXPORTS["numbers"]["sql"].encode()).hexdigest(),
        "sha256": hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read()).hexdigest(),
        "run-at": "2026-02-03T04:05:06.789Z",  # the run's start, which the replicator's latest copy compares
    }
    assert result["sha256"] == head["Metadata"]["sha256"] and result["version_id"] == head.get("VersionId")
    assert result["bytes"] == head["ContentLength"]
    assert set(result) >= {"bucket", "key", "rows", "sheets", "bytes", "seconds"}


@pytest.mark.parametrize("name, rows", [("empty", 0), ("one", 1), ("numbers", 7)])
def test_row_counts(env, s3, mysql, name, rows):
    (uploaded,) = export_handler.handler({"export": name}, Context())["exports"]
    read = list(open_workbook(s3, uploaded["key"]).active.iter_rows(values_only=True))
    columns, expected, _ = db_rows(mysql, EXPORTS[name]["sql"])
    assert uploaded["rows"] == rows == len(read) - 1
    assert list(read[0]) == columns  # the header is there even with no rows
    assert [r[0] for r in read[1:]] == [r[0] for r in expected]


def test_rows_past_the_sheet_limit_continue_on_a_new_sheet(env, s3, mysql):
    rt = export_handler.runtime()
    result = export_module.run_export(rt.settings.exports["numbers"], endpoint=rt.endpoint, secrets=rt.secrets,
                                      s3=rt.s3, target=rt.target, max_rows_per_sheet=3)
    wb = open_workbook(s3, result["key"])
    assert wb.sheetnames == ["numbers", "numbers (2)", "numbers (3)"]
    assert result["sheets"] == 3 and result["rows"] == 7
    values = []
    for ws in wb:
        rows = list(ws.iter_rows(values_only=True))
        assert rows[0] == ("n", "label", "at")  # header repeated on every sheet
        assert ws.freeze_panes == "A2"
        values += [r[0] for r in rows[1:]]
    assert values == list(range(1, 8))
    assert s3.head_object(Bucket=BUCKET, Key=result["key"])["Metadata"]["sheets"] == "3"


def test_an_event_without_a_name_runs_every_export_and_reports_the_broken_one(env, s3):
    with pytest.raises(ExportError) as err:
        export_handler.handler({}, Context())
    message = str(err.value)
    assert "'broken'" in message and "no_such_table_here" in message
    assert "4 other export(s) uploaded" in message
    exported = sorted(k.split("/")[1] for k in all_keys(s3))
    assert exported == ["empty", "hostile", "numbers", "one"]


def test_several_exports_by_schedule_each_get_their_own_workbook(env, s3):
    for name in ("numbers", "one"):
        export_handler.handler({"export": name}, Context())
    keys = all_keys(s3)
    assert len(keys) == 2 and {k.split("/")[1] for k in keys} == {"numbers", "one"}
    assert all(k.startswith(PREFIX) and k.endswith(".xlsx") for k in keys)


@pytest.mark.parametrize("event, message", [
    ({"export": "nope"}, "unknown export 'nope'; valid names: broken, empty, hostile, numbers, one"),
    ({"export": 3}, "\"export\" must be an export's name (text), got 3"),
    ({"export": None}, "\"export\" must be an export's name (text), got None; leave it out to run every export"),
    (None, "the event must be a JSON object such as {\"export\": \"orders\"} ({} runs every export)"),
    ({"export": "numbers", "sql": "DROP TABLE x"}, "SQL comes from the deployment config"),
    (["numbers"], "must be a JSON object"),
    ({"export": "x" * 300_000}, "unknown export 'xxxxxxxxxx"),
    ({"f" * 300_000: 1, **{f"field{i}": 1 for i in range(1000)}}, "the event has unknown field(s) 'fffff"),
])
def test_bad_events_are_refused_before_anything_runs(env, s3, event, message):
    with pytest.raises(ExportError, match=re.escape(message)) as raised:
        export_handler.handler(event, Context())
    assert all_keys(s3) == []
    assert len(str(raised.value)) < 300  # what the event echoes is cut short (a 300 KB name was echoed whole)


# --- failures leave nothing behind ---------------------------------------------------


def assert_nothing_left(s3, tmp_files: Path) -> None:
    assert all_keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert list(tmp_files.iterdir()) == []


def test_sql_error_names_the_export_and_the_server_message(env, s3, tmp_files):
    with pytest.raises(ExportError, match=r"export 'broken': the SQL failed: \(1146\) .*no_such_table_here"):
        export_handler.handler({"export": "broken"}, Context())
    assert_nothing_left(s3, tmp_files)


def test_connection_refused(env, s3, tmp_files, monkeypatch):
    monkeypatch.setenv(contract.ENV_DB_PORT, "1")
    export_handler.runtime.cache_clear()
    with pytest.raises(ExportError, match=r"cannot connect to the database at .*:1/"):
        export_handler.handler({"export": "numbers"}, Context())
    assert_nothing_left(s3, tmp_files)


def test_bad_credentials_are_reread_once_then_fail_clearly(env, s3, secrets, mysql, tmp_files):
    secrets.put_secret_value(SecretId=env[contract.ENV_DB_SECRET_ARN],
                             SecretString=mysql.secret_json(username="nobody", password="wrong"))
    with pytest.raises(ExportError, match="database login to .* failed for user 'nobody'") as err:
        export_handler.handler({"export": "numbers"}, Context())
    assert "wrong" not in str(err.value)
    assert_nothing_left(s3, tmp_files)


def test_a_password_outside_latin1_is_a_clear_login_error(env, s3, secrets, mysql, tmp_files):
    """PyMySQL sends passwords as Latin-1: a hand-made '€' raised an unhandled UnicodeEncodeError quoting it."""
    secrets.put_secret_value(SecretId=env[contract.ENV_DB_SECRET_ARN],
                             SecretString=mysql.secret_json(username="nobody", password="Pr1ce-in-€-Pa55"))
    with pytest.raises(ExportError, match=r"^database login to .* failed for user 'nobody': the "
                                          r"password holds a character outside Latin-1") as err:
        export_handler.handler({"export": "numbers"}, Context())
    assert "€" not in str(err.value) and "Pa55" not in str(err.value) and "position" not in str(err.value)
    assert_nothing_left(s3, tmp_files)


def test_plain_tcp_is_refused_inside_lambda(monkeypatch, env):
    """DB_TLS=off exists for local runs; a console edit of a deployed function must not turn TLS off."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "export-fn")
    export_handler.runtime.cache_clear()
    with pytest.raises(contract.ConfigurationError, match=r"^DB_TLS=off is for local runs only: inside Lambda"):
        export_handler.handler({"export": "one"}, Context())
    export_handler.runtime.cache_clear()


@pytest.fixture
def exporter_user(mysql):
    """A database user of its own, so its password can be rotated for real."""
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'xlsx_exporter'@'%'")
        cur.execute("CREATE USER 'xlsx_exporter'@'%' IDENTIFIED BY 'first-Pa55'")
        cur.execute(f"GRANT SELECT ON `{mysql.database}`.* TO 'xlsx_exporter'@'%'")
    yield conn
    with conn.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'xlsx_exporter'@'%'")
    conn.close()


def test_a_rotated_password_is_picked_up_after_a_login_failure(env, s3, secrets, mysql, exporter_user):
    arn = env[contract.ENV_DB_SECRET_ARN]
    secrets.put_secret_value(SecretId=arn, SecretString=mysql.secret_json(username="xlsx_exporter",
                                                                          password="first-Pa55"))
    export_handler.handler({"export": "one"}, Context())  # the warm function now caches the first password
    # The secret is rotated: the database and the secret get a new password
    with exporter_user.cursor() as cur:
        cur.execute("ALTER USER 'xlsx_exporter'@'%' IDENTIFIED BY 'second-Pa55'")
    secrets.put_secret_value(SecretId=arn, SecretString=mysql.secret_json(username="xlsx_exporter",
                                                                          password="second-Pa55"))
    # The next invocation's login with the cached password fails, the secret is read again, the export runs
    export_handler.handler({"export": "one"}, Context())
    assert len(all_keys(s3)) == 2


def test_tls_needs_the_bundled_ca(env, s3, monkeypatch, tmp_files):
    # The source tree has no CA bundle (the bundler writes it into the asset): verify mode says so.
    monkeypatch.setenv(contract.ENV_DB_TLS, "verify")
    export_handler.runtime.cache_clear()
    with pytest.raises(ExportError, match="the RDS CA bundle .*rds-ca-bundle.pem is missing"):
        export_handler.handler({"export": "one"}, Context())
    assert_nothing_left(s3, tmp_files)


@pytest.fixture(scope="module")
def rds_ca(tmp_path_factory) -> Path:
    """The CA bundle exactly as the bundler writes it into the asset."""
    from stacks.bundling import rds_ca_bundle

    path = tmp_path_factory.mktemp("asset") / "rds-ca-bundle.pem"
    path.write_bytes(rds_ca_bundle())
    return path


def test_tls_is_never_downgraded_to_plain_text(rds_ca, env, s3, tmp_files):
    # Given verify mode with the real RDS CA bundle, against a server without TLS (the local MariaDB)
    from lambdas.export_to_xlsx.database import Endpoint

    rt = export_handler.runtime()
    endpoint = Endpoint(rt.endpoint.host, rt.endpoint.port, rt.endpoint.database, rds_ca)
    # Then the export refuses to connect instead of sending anything in plain text
    with pytest.raises(ExportError, match="cannot connect to the database at .*: SSL is required but the server"):
        export_module.run_export(rt.settings.exports["one"], endpoint=endpoint, secrets=rt.secrets, s3=rt.s3,
                                 target=rt.target)
    assert_nothing_left(s3, tmp_files)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A MariaDB that speaks TLS with a certificate signed by a test CA (the shared one has no TLS)."""
    from tests import tls_mysql

    try:
        server, stop = tls_mysql.start(tmp_path_factory.mktemp("tls-mariadb"))
    except RuntimeError as exc:
        pytest.fail(f"cannot start the TLS MariaDB these tests need: {exc}", pytrace=False)
    yield server
    stop()


def test_export_over_verified_tls(tls_server, env, s3, monkeypatch):
    # Given a server whose certificate the bundled CA file verifies
    from lambdas.export_to_xlsx.database import Endpoint

    sql = "SELECT VARIABLE_VALUE AS cipher FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"
    rt = export_handler.runtime()
    export = ExportDefinition.single("tls", sql)
    endpoint = Endpoint(tls_server.host, tls_server.port, "mysql", tls_server.ca_file)
    # When the export runs there
    result = export_module.run_export(export, endpoint=endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target)
    # Then its own session was encrypted
    (header, (cipher,)) = list(open_workbook(s3, result["key"]).active.iter_rows(values_only=True))
    assert header == ("cipher",) and cipher


def test_a_certificate_the_bundle_does_not_trust_is_refused(tls_server, rds_ca, env, s3, tmp_files):
    # The real RDS CA bundle does not trust the test CA: the connection must fail, not go on unverified.
    from lambdas.export_to_xlsx.database import Endpoint

    rt = export_handler.runtime()
    endpoint = Endpoint(tls_server.host, tls_server.port, "mysql", rds_ca)
    with pytest.raises(ExportError, match="cannot connect to the database at .*CERTIFICATE_VERIFY_FAILED"):
        export_module.run_export(rt.settings.exports["one"], endpoint=endpoint, secrets=rt.secrets, s3=rt.s3,
                                 target=rt.target)
    assert_nothing_left(s3, tmp_files)


def test_missing_secret(env, s3, secrets, tmp_files):
    secrets.delete_secret(SecretId=env[contract.ENV_DB_SECRET_ARN], ForceDeleteWithoutRecovery=True)
    with pytest.raises(ExportError, match="cannot read the database secret .*ResourceNotFoundException"):
        export_handler.handler({"export": "numbers"}, Context())
    assert_nothing_left(s3, tmp_files)


def test_missing_bucket(env, s3, tmp_files):
    s3.delete_bucket(Bucket=BUCKET)
    with pytest.raises(ExportError, match=f"upload to s3://{BUCKET}/exports/numbers/.* failed: .*NoSuchBucket"):
        export_handler.handler({"export": "numbers"}, Context())
    assert list(tmp_files.iterdir()) == []


def test_database_dropped_mid_stream(env, s3, mysql, tmp_files, monkeypatch):
    # Given a result far larger than the socket buffers (~25 MB), so the server is still sending it
    big = "SELECT a.n * 1000 + b.n AS n, REPEAT('x', 200) AS pad FROM xlsx_numbers a, xlsx_numbers b, " \
          "xlsx_numbers c, xlsx_numbers d, xlsx_numbers e, xlsx_numbers f /* mid-stream-kill */"
    monkeypatch.setenv(contract.ENV_EXPORTS, json.dumps({"big": {"sql": big, "sheet_name": "big"}}))
    export_handler.runtime.cache_clear()
    monkeypatch.setattr("lambdas.export_to_xlsx.database.BATCH_ROWS", 100)
    killer = mysql.connect()
    killed = []

    def kill_once() -> float:
        # Called by the export while it writes: the server drops the connection from its side.
        if not killed:
            with killer.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist WHERE info LIKE %s "
                            "AND info NOT LIKE %s", ("%mid-stream-kill%", "%processlist%"))
                (conn_id,), = cur.fetchall()
                cur.execute(f"KILL CONNECTION {conn_id}")
            killed.append(conn_id)
        return 900.0

    ctx = Context()
    ctx.get_remaining_time_in_millis = lambda: int(kill_once() * 1000)
    with pytest.raises(ExportError, match=r"export 'big': lost the database connection after \d+ rows"):
        export_handler.handler({"export": "big"}, ctx)
    killer.close()
    assert killed
    assert_nothing_left(s3, tmp_files)


def test_timeout_close_stops_cleanly(env, s3, tmp_files):
    with pytest.raises(ExportError, match="about to time out"):
        export_handler.handler({"export": "numbers"}, Context(seconds_left=10))
    assert_nothing_left(s3, tmp_files)


def test_s3_failure_mid_multipart_upload_aborts_the_upload(env, s3, tmp_files, monkeypatch):
    # Given a workbook big enough for a multipart upload (parts of 5 MiB)
    from boto3.s3.transfer import TransferConfig

    monkeypatch.setattr(export_module, "TRANSFER",
                        TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=1))
    sql = ("SELECT a.n, b.n AS m, c.n AS k, d.n AS j, SHA2(CONCAT(a.n, b.n, c.n, d.n, e.n), 512) AS h1, "
           "SHA2(CONCAT(e.n, d.n, c.n, b.n, a.n), 512) AS h2, SHA2(CONCAT(c.n, a.n, e.n), 512) AS h3 "
           "FROM xlsx_numbers a, xlsx_numbers b, xlsx_numbers c, xlsx_numbers d, xlsx_numbers e, "
           "xlsx_numbers f")
    monkeypatch.setenv(contract.ENV_EXPORTS, json.dumps({"large": {"sql": sql, "sheet_name": "large"}}))
    export_handler.runtime.cache_clear()
    rt = export_handler.runtime()
    calls = {"UploadPart": 0}

    def fail_second_part(**kwargs):
        calls["UploadPart"] += 1
        if calls["UploadPart"] == 2:
            raise ConnectionResetError("injected: connection reset during UploadPart")

    rt.s3.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    with pytest.raises(ExportError, match="upload to s3://source-bucket/exports/large/.* failed"):
        export_handler.handler({"export": "large"}, Context())
    assert calls["UploadPart"] >= 2
    assert_nothing_left(s3, tmp_files)


def test_disk_full_fails_before_filling_the_disk(tmp_path):
    from lambdas.export_to_xlsx.xlsx import StorageFullError, XlsxStreamWriter
    import shutil

    free = shutil.disk_usage(tmp_path).free
    writer = XlsxStreamWriter(tmp_path / "x.xlsx", sheet_name="s", columns=["a"], min_free_bytes=free + 1)
    with pytest.raises(StorageFullError, match="raise the function's ephemeral storage"):
        writer.write_rows([(i,) for i in range(5000)])
        writer.close()
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_stale_files_from_a_killed_run_are_removed(env, s3, tmp_files):
    stale = tmp_files / "xlsx-export-numbers-abc.xlsx"
    stale.write_bytes(b"half a workbook")
    export_handler.handler({"export": "one"}, Context())
    assert not stale.exists()
    assert list(tmp_files.iterdir()) == []


def test_the_secret_is_never_logged_even_at_debug(env, s3, secrets, mysql, caplog, monkeypatch):
    """At DEBUG botocore logs each response body (GetSecretValue's holds the password) and the request's
    signing (the session token): the function holds the SDK's loggers at WARNING whatever its level."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "Session-T0ken-Of-The-Role")
    secrets.put_secret_value(SecretId=env[contract.ENV_DB_SECRET_ARN],
                             SecretString=mysql.secret_json(password="s3cr3t-Pa55"))
    caplog.set_level("DEBUG")  # as Lambda sets the root logger for an application log level of DEBUG
    with pytest.raises(ExportError):
        export_handler.handler({"export": "numbers"}, Context())
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "login failed" in logged  # the function's own lines are there
    for secret in ("s3cr3t-Pa55", "Session-T0ken-Of-The-Role", "SecretString", "Signature", "Authorization"):
        assert secret not in logged


def test_result_is_logged_as_one_json_line(env, s3, caplog):
    caplog.set_level("INFO")
    export_handler.handler({"export": "one"}, Context())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    (line,) = [entry for entry in lines if entry.get("outcome") == "uploaded"]
    assert line["export"] == "one" and line["rows"] == 1 and line["key"].startswith("exports/one/")


def test_settings_are_checked_at_cold_start(monkeypatch, env):
    monkeypatch.delenv(contract.ENV_DB_SECRET_ARN)
    monkeypatch.setenv(contract.ENV_DB_TLS, "maybe")
    export_handler.runtime.cache_clear()
    with pytest.raises(contract.ConfigurationError, match="missing environment variables: DB_SECRET_ARN"):
        export_handler.handler({"export": "one"}, Context())
