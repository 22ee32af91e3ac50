"""Workbooks people use directly: Excel Tables, the About sheet, column masks (issue 21), through the export handler
against the real server, and what the stack and config build for them.

The replicator's latest.xlsx is tested in test_replicator_handler.py; the tables' conformance with independent
readers and the ISO schemas in test_xlsx_conformance.py."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import zipfile

import openpyxl
import pytest
from python_calamine import CalamineWorkbook

from lambdas import contract as shared
from lambdas.bucket_replicator import settings as replicator_contract
from lambdas.export_to_xlsx import handler as export_handler
from lambdas.export_to_xlsx import settings as contract
from lambdas.export_to_xlsx.definition import DefinitionError, export_from
from lambdas.export_to_xlsx.errors import ExportError
from lambdas.export_to_xlsx.xlsx import MAX_CELL_CHARS, TRUNCATION_MARK, table_columns, table_name
from pipeline_ops.iam import Need, denied, role_statements
from stacks.config import PROJECT_ROOT as ROOT
from tests.test_stack import function_env, policy_statements
from tests.test_export_handler import HOSTILE_TABLE, NUMBERS_TABLE, tables, tmp_files  # noqa: F401 (fixtures)

BUCKET = "source-bucket"
MASKED = ("tiny", "small", "medium", "i", "big", "ubig", "flag", "bit1", "bit12", "dec_small", "dec_big", "f", "d",
          "day", "moment", "ts", "t", "yr", "ch", "vc", "txt", "longtxt", "js", "en", "st", "bin", "vbin", "blb")
#: Row 2 of the hostile table, every MySQL type with a value, as the text a mask works on (the server's text for
#: DECIMAL and date/time types, digits for integers, repr for floats, 1/0 for BIT(1), hex for binary).
ROW_2_TEXT = {
    "tiny": "-128", "small": "32767", "medium": "-8388608", "i": "2147483647", "big": "9223372036854775807",
    "ubig": "18446744073709551615", "flag": "1", "bit1": "1", "bit12": "4095", "dec_small": "-99999999.99",
    "dec_big": "99999999999999999999999999999999999.999999999999999999999999999999", "f": "3.5",
    "d": "1.7976931348623157e+308", "day": "2024-02-29", "moment": "2024-02-29 23:59:59.999000",
    "ts": "2038-01-19 03:14:07", "t": "838:59:59.000000", "yr": "2155", "ch": "=1+1",
    "vc": '=HYPERLINK("http://evil.example/","click")', "txt": "@SUM(A1:A9)", "longtxt": "x" * 40_000,
    "en": "b", "st": "x,y", "bin": "00010203", "vbin": "fffe", "blb": bytes(range(32)).hex(),
}
KEY_A, KEY_B = "a" * 40 + "environment-a", "b" * 40 + "environment-b"


def exports(mask: str) -> dict:
    every = {c: mask for c in MASKED}
    return {
        "masked": {"sql": f"SELECT * FROM {HOSTILE_TABLE} ORDER BY id", "sheet_name": "Hostile", "mask": every},
        "about": {"sheets": [{"name": "Numbers", "sql": f"SELECT n, label FROM {NUMBERS_TABLE} WHERE at >= %(day)s"},
                             {"name": "About", "sql": f"SELECT COUNT(*) AS total FROM {NUMBERS_TABLE}"}],
                  "parameters": [{"name": "day", "type": "date", "default": "2024-01-03"}],
                  "time_zone": "Europe/Berlin", "schedule": "cron(0 5 * * ? *)", "about_sheet": True,
                  "table": True, "mask": {"label": "last4"}},
        "typo": {"sql": f"SELECT n, label FROM {NUMBERS_TABLE}", "mask": {"lable": "redact"}},
    }


@pytest.fixture
def run(monkeypatch, s3, secrets, mysql, tables, tmp_files, ledger):  # noqa: F811
    """Run an export through the handler, environment as the stack sets it, the mask key in Secrets Manager."""
    s3.create_bucket(Bucket=BUCKET)
    db_secret = secrets.create_secret(Name="db/export", SecretString=mysql.secret_json())["ARN"]
    keys = {k: secrets.create_secret(Name=f"mask/{k[-1]}", SecretString=k)["ARN"] for k in (KEY_A, KEY_B)}

    def invoke(export: str, mask: str = "sha256", key: str = KEY_A, params: dict | None = None) -> tuple[dict, bytes]:
        values = {
            contract.ENV_SOURCE_BUCKET: BUCKET, contract.ENV_KEY_PREFIX: "exports/", contract.ENV_DB_AUTH: "secret",
            contract.ENV_DB_SECRET_ARN: db_secret, contract.ENV_DB_HOST: mysql.host,
            contract.ENV_DB_PORT: str(mysql.port), contract.ENV_DB_NAME: mysql.database, contract.ENV_DB_TLS: "off",
            contract.ENV_EXPORTS: json.dumps(exports(mask)), contract.ENV_MASK_KEY_SECRET_ARN: keys[key],
            contract.ENV_LEDGER_TABLE: ledger.name, contract.ENV_HISTORY_DAYS: "400",
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        export_handler.runtime.cache_clear()
        event = {"export": export, **({"params": params} if params else {})}
        result = export_handler.handler(event, None)["exports"][0]
        return result, s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read()

    yield invoke
    export_handler.runtime.cache_clear()


def sheet_rows(body: bytes, sheet: str) -> list[tuple]:
    return list(openpyxl.load_workbook(io.BytesIO(body))[sheet].iter_rows(values_only=True))


def non_null_values(mysql) -> int:
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute(f"SELECT {' + '.join(f'COUNT(`{c}`)' for c in MASKED)} FROM {HOSTILE_TABLE}")
        n = int(cur.fetchone()[0])
        cur.execute(f"SELECT js FROM {HOSTILE_TABLE} WHERE id = 2")
        ROW_2_TEXT["js"] = cur.fetchone()[0]  # the server's own JSON text (MySQL normalizes it, MariaDB keeps it)
    conn.close()
    return n


@pytest.mark.parametrize("mask", ["sha256", "last4", "redact"])
def test_masks_apply_to_every_mysql_type_before_the_writer_and_are_counted(run, mysql, mask):
    # Given an export masking every column of a table of every MySQL type
    count = non_null_values(mysql)
    # When it runs
    result, body = run("masked", mask)
    rows = sheet_rows(body, "Hostile")
    header = list(rows[0])
    by_id = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    # Then each value of row 2 is its mask of the value's text, as text (never a number, date or formula)
    for column, text in ROW_2_TEXT.items():
        got = by_id[2][column]
        if mask == "sha256":
            assert got == hmac.new(KEY_A.encode(), text.encode(), hashlib.sha256).hexdigest(), column
        elif mask == "last4":
            want = "*" * (len(text) - 4) + text[-4:] if len(text) > 4 else "*" * len(text)
            if len(want) > MAX_CELL_CHARS:  # then the writer's own rule: cut, with its mark
                want = want[:MAX_CELL_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
            assert got == want, column
        else:
            assert got is None, column
    # And NULLs stay empty, the id column is untouched, and every masked value is counted
    assert all(v is None for k, v in by_id[1].items() if k != "id") and sorted(by_id) == [1, 2, 3, 4, 5, 6]
    assert result["values_changed"][f"masked_{mask}"] == count
    # And no masked column's original value reached the file
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    assert "HYPERLINK" not in sheet and "SUM(A1" not in sheet and "99999999.99" not in sheet


def test_keyed_hashes_are_stable_across_runs_and_differ_across_environments(run, mysql):
    non_null_values(mysql)
    first = sheet_rows(run("masked", "sha256", KEY_A)[1], "Hostile")
    again = sheet_rows(run("masked", "sha256", KEY_A)[1], "Hostile")
    other = sheet_rows(run("masked", "sha256", KEY_B)[1], "Hostile")
    assert first == again  # the same values join across workbooks of one environment
    hashed = [(r, c) for r in range(1, len(first)) for c in range(1, len(first[0])) if first[r][c] is not None]
    assert hashed and all(first[r][c] != other[r][c] for r, c in hashed)  # another key: no hash in common
    # And a plain SHA-256 (what anyone could compute to look a value up) is not what the workbook holds
    assert first[2][header_index(first, "ch")] != hashlib.sha256(b"=1+1").hexdigest()


def header_index(rows, column: str) -> int:
    return list(rows[0]).index(column)


def test_a_mask_naming_a_column_no_sheet_has_fails_the_run_naming_it(run):
    with pytest.raises(ExportError, match=r"mask names column\(s\) 'lable' that no sheet has"):
        run("typo")


def test_the_about_sheet_holds_the_runs_facts_and_nothing_of_the_environment(run, mysql, s3):
    # Given an export with parameters, a time zone, a schedule, two sheets (one named About) and a masked column
    result, body = run("about", params={"day": "2024-01-05"})
    # When two independent readers open the workbook
    names = CalamineWorkbook.from_filelike(io.BytesIO(body)).sheet_names
    assert names == ["Numbers", "About", "About (2)"]  # the About sheet comes last and does not clash
    about = dict(CalamineWorkbook.from_filelike(io.BytesIO(body)).get_sheet_by_name("About (2)").to_python())
    assert dict(sheet_rows(body, "About (2)")) == {k: (int(v) if isinstance(v, float) else v) for k, v in about.items()}
    # Then it names the export, its schedule, the parameters given and resolved, the run's start in UTC and in the
    # export's zone, the rows of each sheet, the SQL digest and the object key
    head = s3.head_object(Bucket=BUCKET, Key=result["key"])["Metadata"]
    run_at = head[shared.META_RUN_AT]
    assert about["Export"] == "about" and about["Trigger"] == "invoked (its UTC schedule: cron(0 5 * * ? *))"
    assert about["Parameter day"] == "2024-01-05"
    assert about["Run started (UTC)"] == run_at.replace("T", " ").replace("Z", " UTC")
    assert about["Run started (Europe/Berlin)"].endswith(("CET (UTC+0100)", "CEST (UTC+0200)"))
    assert about["Rows in Numbers"] == 4 and about["Rows in About"] == 1
    assert about["SQL SHA-256"] == head[shared.META_SQL_SHA256] and about["Object key"] == result["key"]
    assert about["Masked columns"] == "label (last4)"
    # And nothing of the environment: no database host, port, user, password, secret or bucket
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        text = z.read("xl/worksheets/sheet3.xml").decode()
    environment = [mysql.host, mysql.user, f":{mysql.port}", mysql.database, BUCKET, "arn:aws:secretsmanager", KEY_A]
    environment += [mysql.password] if mysql.password else []
    assert [v for v in environment if v in text] == []
    # And the data sheets are tables (true: TableStyleMedium2); the About sheet is not
    book = openpyxl.load_workbook(io.BytesIO(body))
    assert [t.tableStyleInfo.name for t in book["Numbers"].tables.values()] == ["TableStyleMedium2"]
    assert not book["About (2)"].tables and book["About (2)"].auto_filter.ref is None


# --- names Excel accepts for tables and their columns ----------------------------------------------------


@pytest.mark.parametrize("sheet, expected", [
    ("Orders", "Orders"), ("Daily sales", "Daily_sales"), ("2024", "_2024"), ("A1", "_A1"), ("XFD1048576", "_XFD1048576"),
    ("R1C1", "_R1C1"), ("R", "_R"), ("c", "_c"), ("rc", "_rc"), ("Umsätze", "Umsätze"), ("a.b", "a.b"),
    ("x" * 300, "x" * 255),
])
def test_table_names_follow_excels_rules(sheet, expected):
    """Excel's rules for names (tables share them): https://support.microsoft.com/en-us/office/
    names-in-formulas-fc2935f9-115d-4bef-a370-3aa8bb4c91f1 (letters, digits, '.', '_'; starting with a letter,
    '_' or '\\'; not a cell reference; at most 255 characters; unique ignoring case)."""
    assert table_name(sheet, set()) == expected


def test_table_names_are_unique_ignoring_case_and_columns_unique_and_never_empty():
    taken: set[str] = set()
    assert [table_name(s, taken) for s in ("Sales", "SALES", "sales")] == ["Sales", "SALES_2", "sales_3"]
    assert table_columns(["id", "ID", "", "id", " a\tb ", "x\ny"]) == ["id", "ID2", "Column3", "id3", "a b", "x y"]


# --- the definition, config and stack -------------------------------------------------------------------


@pytest.mark.parametrize("fields, problem", [
    ({"table": "TableStyleMedium29"}, "table: 'TableStyleMedium29' is not true, false or one of Excel's table styles"),
    ({"table": "Fancy"}, "is not true, false or one of Excel's table styles"),
    ({"about_sheet": "yes"}, "about_sheet: expected true or false"),
    ({"mask": {"email": "md5"}}, "mask.email: 'md5' is not one of sha256, redact, last4"),
    ({"mask": []}, "mask: expected an object of column name -> mask"),
    ({"latest_copy": 1}, "latest_copy: expected true or false"),
])
def test_bad_workbook_fields_are_refused_naming_the_field(fields, problem):
    with pytest.raises(DefinitionError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        export_from({"name": "orders", "sql": "SELECT 1", **fields}, ROOT)


def test_the_definition_sends_the_function_what_it_uses_and_keeps_latest_copy_for_the_stack():
    export = export_from({"name": "orders", "sql": "SELECT 1", "schedule": "rate(1 day)", "table": "TableStyleDark3",
                          "about_sheet": True, "mask": {"email": "sha256"}, "latest_copy": True}, ROOT)
    assert export.table == "TableStyleDark3" and export.hashes and export.latest_copy
    wire = export.to_json()
    assert wire["table"] == "TableStyleDark3" and wire["about_sheet"] is True and wire["schedule"] == "rate(1 day)"
    assert "latest_copy" not in wire
    assert export_from({"name": "o", "sql": "SELECT 1", "table": True}, ROOT).to_json()["table"] is True
    assert "schedule" not in export_from({"name": "o", "sql": "SELECT 1", "schedule": "rate(1 day)"}, ROOT).to_json()


@pytest.fixture(scope="session")
def dev_workbooks():
    """dev whose first export asks for tables, an About sheet, a sha256 mask and a latest copy."""
    from tests.conftest import _variant

    def change(dev):
        dev["exports"][0].update(table=True, about_sheet=True, mask={"email": "sha256"}, latest_copy=True)

    return _variant("dev", change)


def test_a_sha256_mask_gets_a_generated_key_only_the_export_reads_through_the_endpoint(dev_workbooks, dev):
    s = dev_workbooks
    key = s.stack.export.mask_key
    assert key is not None and dev.stack.export.mask_key is None  # only where an export hashes
    secret = s.resources("AWS::SecretsManager::Secret")[s.logical_id(key)]["Properties"]
    assert secret["GenerateSecretString"]["PasswordLength"] == 64
    env = function_env(s, s.stack.export)
    assert set(env) == contract.env_names("iam", hashes=True)
    assert env[contract.ENV_MASK_KEY_SECRET_ARN] == {"Ref": s.logical_id(key)}
    reads = [st for st in policy_statements(s, s.stack.export.role) if "secretsmanager" in json.dumps(st["Action"])]
    assert reads == [{"Action": "secretsmanager:GetSecretValue", "Effect": "Allow", "Resource": {"Ref": s.logical_id(key)}}]
    # The export reaches Secrets Manager through the VPC's endpoint (no internet): HTTPS to the endpoint's group
    group = s.logical_id(s.stack.database.secrets_endpoint_security_group)
    egress = [r["Properties"] for r in s.resources("AWS::EC2::SecurityGroupEgress").values()]
    assert any(e["FromPort"] == 443 and e.get("DestinationSecurityGroupId") == {"Fn::GetAtt": [group, "GroupId"]}
               and e["GroupId"] == {"Fn::GetAtt": [s.logical_id(s.stack.export.security_group), "GroupId"]}
               for e in egress)


def test_the_replicator_learns_which_exports_keep_a_latest_copy_and_may_write_it(dev_workbooks):
    s = dev_workbooks
    export = s.config.exports[0]
    env = function_env(s, s.stack.replicator)
    folder = shared.export_prefix(s.config.key_prefix, export.name)
    assert json.loads(env[replicator_contract.ENV_LATEST_COPIES]) == {export.name: folder}
    latest = shared.latest_key(s.config.destination.prefix, s.config.key_prefix, export.name)
    names = {f"{s.logical_id(s.stack.destination_bucket)}.Arn": "arn:aws:s3:::destination",
             f"{s.logical_id(s.stack.source.bucket)}.Arn": "arn:aws:s3:::source",
             f"{s.logical_id(s.stack.replicator.log_group)}.Arn": "arn:aws:logs:us-east-1:1:log-group:r:*",
             f"{s.logical_id(s.stack.replicator.failure_queue)}.Arn": "arn:aws:sqs:us-east-1:1:failed",
             f"{s.logical_id(s.stack.ledger.table)}.Arn": "arn:aws:dynamodb:us-east-1:1:table/run-ledger"}
    statements = role_statements(s.template, s.logical_id(s.stack.replicator.role), names)
    needs = [Need("s3:PutObject", f"arn:aws:s3:::destination/{latest}"),
             Need("s3:GetObject", f"arn:aws:s3:::destination/{latest}")]
    assert denied(statements, needs) == []


def test_config_refuses_sha256_masks_where_the_export_cannot_reach_the_key_and_latest_copies_never_copied():
    import copy

    from pipeline_ops.synth import CDK_JSON
    from stacks.config import load_environment

    context = copy.deepcopy(CDK_JSON["context"])
    prod = context["environments"]["prod"]
    for key in ("secret_arn", "secrets_endpoint_security_group_id"):
        prod["database"].pop(key, None)
    prod["database"].update(auth="iam", resource_id="db-ABCDEFGHIJKLMNOPQRSTUVWXY2", create_endpoints=["s3"])
    prod["exports"][0]["mask"] = {"email": "sha256"}
    prod["exports"][0]["latest_copy"] = True
    prod["destination"]["source_prefix"] = "elsewhere/"
    with pytest.raises(DefinitionError) as raised:
        load_environment(context, "prod", root=ROOT)
    text = str(raised.value)
    assert "sha256 masks need the mask key from Secrets Manager" in text
    assert f"export {prod['exports'][0]['name']!r} has latest_copy, but its workbooks" in text
