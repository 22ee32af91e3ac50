"""How the export logs in: an RDS IAM token signed by the function's own credentials, over verified TLS.

The token is checked against an independent implementation of AWS Signature Version 4 query
signing written from AWS's documentation, then presented to a real (TLS) MariaDB whose user has
that token as its password: only the right token for the right host, port, user and region lets
the export in. The same server (real accounts, TLS) shows that the user the bootstrap creates reads
and cannot write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from urllib.parse import parse_qsl, quote

import botocore.auth
import pytest

from pipeline_ops.local.sample import first_run_values

from lambdas.export_to_xlsx import export as export_module
from lambdas.export_to_xlsx import handler as export_handler
from lambdas.export_to_xlsx import settings as contract
from lambdas.export_to_xlsx.definition import ExportDefinition
from lambdas.export_to_xlsx.credentials import IamToken
from lambdas.export_to_xlsx.database import Endpoint
from lambdas.export_to_xlsx.errors import ExportError

FIXED_NOW = dt.datetime(2026, 11, 25, 12, 0, 0)
KEY_ID, SECRET_KEY, SESSION_TOKEN = "AKIAEXAMPLEEXPORT", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdz//token+/="
HOST, PORT, USER, REGION = "app-db.abcdefghijkl.eu-west-1.rds.amazonaws.com", 3306, "xlsx_export", "eu-west-1"


def expected_signature(token: str, secret_key: str) -> str:
    """SigV4 query signing, step by step as in "Create a signed AWS API request",
    https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html : canonical request
    (GET, '/', the sorted URI-encoded query without X-Amz-Signature, the host header, the SHA-256 of
    the empty payload), string to sign, signing key derived from date/region/service."""
    host, query = token.split("/?", 1)
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.pop("X-Amz-Signature")
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{host}", "", "host",
                                   hashlib.sha256(b"").hexdigest()])
    key_id, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def function_credentials(monkeypatch):
    """What Lambda gives the function: its role's temporary credentials and its region, at a fixed time."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED_NOW)


def iam_env(monkeypatch, host=HOST, port=PORT, user=USER):
    values = {contract.ENV_SOURCE_BUCKET: "source-bucket", contract.ENV_KEY_PREFIX: "exports/",
              contract.ENV_DB_AUTH: "iam", contract.ENV_DB_USER: user, contract.ENV_DB_HOST: host,
              contract.ENV_DB_PORT: str(port), contract.ENV_DB_NAME: "app", contract.ENV_DB_TLS: "verify",
              contract.ENV_EXPORTS: json.dumps({"one": {"sql": "SELECT 1 AS one", "sheet_name": "one"}}),
              contract.ENV_LEDGER_TABLE: "run-ledger", contract.ENV_HISTORY_DAYS: "400"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(contract.ENV_DB_SECRET_ARN, raising=False)
    export_handler.runtime.cache_clear()


def test_the_token_is_signed_for_the_host_port_user_and_region_with_the_functions_credentials(
        function_credentials, monkeypatch):
    """Token format and lifetime: https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.Connecting.html
    (a SigV4-signed string used instead of a password, valid for 15 minutes)."""
    iam_env(monkeypatch)
    credentials = export_handler.runtime().secrets.get()
    export_handler.runtime.cache_clear()
    token = credentials.password
    assert credentials.username == USER and credentials.iam_token
    host, query = token.split("/?", 1)
    params = dict(parse_qsl(query))
    assert host == f"{HOST}:{PORT}"
    assert params["Action"] == "connect" and params["DBUser"] == USER
    assert params["X-Amz-Credential"] == f"{KEY_ID}/20261125/{REGION}/rds-db/aws4_request"
    assert params["X-Amz-Date"] == "20261125T120000Z" and params["X-Amz-Expires"] == "900"
    assert params["X-Amz-Security-Token"] == SESSION_TOKEN and params["X-Amz-SignedHeaders"] == "host"
    assert params["X-Amz-Signature"] == expected_signature(token, SECRET_KEY)
    # The same clock and credentials give the same token; another user or port does not
    assert IamToken(export_handler.rds_client(), host=HOST, port=PORT, user=USER).get().password == token
    assert IamToken(export_handler.rds_client(), host=HOST, port=3307, user=USER).get().password != token
    assert IamToken(export_handler.rds_client(), host=HOST, port=PORT, user="other").get().password != token


def test_signing_makes_no_network_call(function_credentials, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("token signing tried to open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert IamToken(export_handler.rds_client(), host=HOST, port=PORT, user=USER).get().password


def test_iam_mode_needs_no_secret_and_refuses_plain_tcp(monkeypatch):
    iam_env(monkeypatch)
    settings = contract.load_settings(dict(os.environ))
    assert settings.auth == "iam" and settings.secret_arn is None and settings.db_user == USER
    monkeypatch.setenv(contract.ENV_DB_TLS, "off")
    with pytest.raises(contract.ConfigurationError, match="DB_AUTH=iam needs DB_TLS=verify"):
        contract.load_settings(dict(os.environ))
    monkeypatch.delenv(contract.ENV_DB_USER)
    monkeypatch.setenv(contract.ENV_DB_TLS, "verify")
    with pytest.raises(contract.ConfigurationError, match="missing environment variables: DB_USER"):
        contract.load_settings(dict(os.environ))


def test_the_token_and_its_signing_are_never_logged_even_at_debug(function_credentials, monkeypatch, caplog):
    """At DEBUG botocore logs the canonical request, string to sign and signature of every token it signs."""
    iam_env(monkeypatch, host="127.0.0.1", port=1)  # nothing listens: the run fails right after signing
    caplog.set_level("DEBUG")
    with pytest.raises(ExportError):
        export_handler.handler({"export": "one"}, None)
    export_handler.runtime.cache_clear()
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert '"outcome": "failed"' in logged  # the function's own line is there
    for secret in (SESSION_TOKEN, SECRET_KEY, "X-Amz-Signature", "Signature:", "StringToSign", "CanonicalRequest"):
        assert secret not in logged


def test_a_token_is_never_sent_without_tls(function_credentials, mysql):
    from lambdas.export_to_xlsx.database import connect

    token = IamToken(export_handler.rds_client(), host=mysql.host, port=mysql.port, user=USER).get()
    with pytest.raises(ExportError, match="only sent over verified TLS"):
        connect(Endpoint(mysql.host, mysql.port, mysql.database, None), token)


# --- the token as the password of a real TLS MariaDB user ---------------------------------------


@pytest.fixture(scope="module")
def tls_server_with_grants(tmp_path_factory):
    from tests import tls_mysql

    try:
        server, stop = tls_mysql.start(tmp_path_factory.mktemp("tls-grants"), grant_tables=True)
    except RuntimeError as exc:
        pytest.fail(f"cannot start the TLS MariaDB these tests need: {exc}", pytrace=False)
    yield server
    stop()


@pytest.fixture
def s3_bucket(s3):
    s3.create_bucket(Bucket="source-bucket")
    return s3


def test_a_user_whose_password_is_the_token_lets_the_export_in_over_tls(
        tls_server_with_grants, function_credentials, monkeypatch, s3_bucket, tmp_path):
    import pymysql

    server = tls_server_with_grants
    # Given the token the function will sign (fixed clock, its own credentials) as a TLS-only user's password
    iam_env(monkeypatch, host=server.host, port=server.port, user="iam_export")
    rt = export_handler.runtime()
    token = rt.secrets.get().password
    admin = pymysql.connect(host=server.host, port=server.port, user="root", password="", autocommit=True,
                            ssl={"ca": str(server.ca_file)})
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
        cur.execute("CREATE OR REPLACE TABLE app.orders (id INT PRIMARY KEY, amount DECIMAL(10,2))")
        cur.execute("INSERT INTO app.orders VALUES (1, 9.50), (2, 12.25)")
        cur.execute("DROP USER IF EXISTS 'iam_export'@'%'")
        cur.execute("CREATE USER 'iam_export'@'%%' IDENTIFIED BY %s REQUIRE SSL", (token,))
        cur.execute("GRANT SELECT ON app.* TO 'iam_export'@'%'")
    endpoint = Endpoint(server.host, server.port, "app", server.ca_file)
    export = ExportDefinition.single("orders", "SELECT id, amount FROM orders ORDER BY id")
    # When the export runs with the function's credential source
    result = export_module.run_export(export, endpoint=endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                      temp_dir=tmp_path)
    # Then it logged in with the token over TLS and read the rows
    assert result["rows"] == 2
    # And a token signed a minute later (another token) is refused, with a message naming IAM, not the token
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED_NOW + dt.timedelta(minutes=1))
    with pytest.raises(ExportError, match="failed for user 'iam_export' with an IAM token") as err:
        export_module.run_export(export, endpoint=endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                 temp_dir=tmp_path)
    assert "X-Amz" not in str(err.value)
    export_handler.runtime.cache_clear()
    admin.close()


def test_the_bootstrapped_user_reads_the_dev_tables_over_tls_and_can_write_nothing(tls_server_with_grants):
    """The whole create-mode path on a server with real accounts: the bootstrap, as the master user,
    creates the export user and applies dev's init SQL; the export's own connection code then logs in
    as that user over verified TLS and reads every dev export's rows, and the server refuses it any write."""
    import pymysql

    from lambdas.db_bootstrap.bootstrap import bootstrap
    from lambdas.export_to_xlsx.credentials import Credentials
    from lambdas.export_to_xlsx.database import connect
    from pipeline_ops.synth import CDK_JSON
    from stacks.config import load_environment

    server = tls_server_with_grants
    dev = load_environment(CDK_JSON["context"], "dev")
    admin = pymysql.connect(host=server.host, port=server.port, user="root", password="", autocommit=True,
                            ssl={"ca": str(server.ca_file)})
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS dev_app")
        cur.execute("CREATE DATABASE dev_app")
    bootstrap(admin, database="dev_app", user="xlsx_export", auth="secret", password="Boot-Pa55-word",
              init_sql=dev.database.init_sql.read_text(encoding="utf-8"))
    export_user = Credentials("xlsx_export", "Boot-Pa55-word")
    conn = connect(Endpoint(server.host, server.port, "dev_app", server.ca_file), export_user)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_DATE")
            (deploy_day,) = cur.fetchone()
            for export in dev.exports:
                for sheet in export.sheets:
                    cur.execute(sheet.sql, first_run_values(export, deploy_day) or None)
                    assert cur.fetchall(), f"{export.name}/{sheet.name} read no rows"
            for write in ("INSERT INTO orders (id, customer, amount, ordered_at) VALUES (99, 'x', 1, NOW())",
                          "CREATE TABLE intruder (id INT)", "DROP TABLE orders", "SELECT * FROM mysql.user"):
                with pytest.raises(pymysql.err.MySQLError) as err:
                    cur.execute(write)
                assert err.value.args[0] in (1142, 1044), (write, err.value.args)  # command/access denied
    finally:
        conn.close()
    # And without TLS the same user cannot log in at all (REQUIRE SSL)
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host=server.host, port=server.port, user="xlsx_export", password="Boot-Pa55-word",
                        ssl_disabled=True)
    assert err.value.args[0] == 1045
    admin.close()
