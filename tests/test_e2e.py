"""The whole pipeline, locally, driven by the synthesized dev template (see pipeline_ops/local/).

Nothing here depends on which exports dev lists: they come from its config, its data from its init SQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline_ops.synth import CDK_JSON
from stacks.config import CONTEXT_KEY, load_environment
from tests.faults import s3_error
from pipeline_ops.local import SAMPLE_DAY, LocalPipeline, load_sample_data, run




@pytest.fixture(scope="module")
def sample_tables(mysql, dev):
    """Dev's init SQL (its tables and sample rows) in a database of its own, so no real table is touched."""
    e2e_database = f"{mysql.database}_xlsx_e2e"  # per server database, so parallel checkouts do not collide
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {e2e_database}")
        cur.execute(f"CREATE DATABASE {e2e_database} CHARACTER SET utf8mb4")
    db = {"host": mysql.host, "port": mysql.port, "user": mysql.user, "password": mysql.password,
          "database": e2e_database}
    load_sample_data(db, dev.config.database.init_sql)
    yield db
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {e2e_database}")
    conn.close()


#: Two of dev's exports, whichever it lists, and its prefixes: the tests below do not name them.
_DEV = load_environment({CONTEXT_KEY: CDK_JSON["context"][CONTEXT_KEY]}, "dev")
_PLAIN = [e.name for e in _DEV.exports if e.on_empty == "upload" and all(p.default is not None for p in e.parameters)]
FIRST, SECOND = (_PLAIN * 2)[:2]  # exports that upload even when empty and run without parameters
PREFIX, KEY_PREFIX = _DEV.destination.prefix, _DEV.key_prefix


@pytest.fixture
def tmp_files(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def pipeline(dev, sample_tables, tmp_files):
    lines = []
    with LocalPipeline(dev.template, sample_tables, say=lines.append) as p:
        p.lines = lines
        yield p


def assert_nothing_half_written(p: LocalPipeline, tmp_files) -> None:
    assert p.uploads_in_progress() == []
    assert list(tmp_files.iterdir()) == []


def test_the_pipeline_end_to_end(dev, sample_tables, tmp_files):
    lines = []
    report = run(dev.template, sample_tables, say=lines.append)
    # Every export of the dev config went to the source bucket (or was skipped as empty, as configured) and,
    # through the notification, to the destination
    prefix = dev.config.destination.prefix
    dated = {e.name: [p.name for p in e.parameters if p.type == "date"][0] for e in dev.config.exports
             if any(p.type == "date" for p in e.parameters)}
    runs = report["exports"] + report["skipped"]
    backfilled = [r for r in runs if r["export"] in dated and r.get("params", {}).get(dated[r["export"]]) == SAMPLE_DAY]
    first_run = [r["export"] for r in runs if r not in backfilled]
    assert sorted(first_run) == sorted(e.name for e in dev.config.exports)
    skippable = {e.name for e in dev.config.exports if e.on_empty == "skip"}
    assert {r["export"] for r in report["skipped"]} <= skippable
    # And each export with a date parameter ran again for the sample day, as a backfill's event asks, into that
    # day's folder, with as many sheets as it defines
    assert sorted(r["export"] for r in backfilled) == sorted(dated)
    sheets = {e.name: len(e.sheets) for e in dev.config.exports}
    for r in backfilled:
        if r["outcome"] == "uploaded":
            assert r["sheets"] >= sheets[r["export"]]
            assert r["key"].startswith(f"{dev.config.key_prefix}{r['export']}/{SAMPLE_DAY.replace('-', '/')}/")
    # And each copy was announced once on the default bus, routed by the README's rule, with its parameters
    assert sorted(e["detail"]["destination"]["key"] for e in report["delivered"]) == sorted(report["copies"])
    for r in report["exports"]:
        (announced,) = [e for e in report["delivered"] if e["detail"]["source"]["key"] == r["key"]]
        assert announced["detail"]["parameters"] == r.get("params", {})
        assert announced["detail"]["sheets"] == r["sheets"] and announced["detail"]["rows"] == r["rows"]
        assert announced["detail"]["sha256"] == r["sha256"] and announced["detail"]["checksum"]["verified"] is True
    # And the run ledger holds one item per run, each uploaded one with its verified delivery, and one per
    # workbook put in by hand
    ledger = report["ledger"]
    assert sorted(i["run_id"] for i in ledger if i["export"] != "(by hand)") == sorted(
        r["run_id"] for r in report["exports"] + report["skipped"])
    for r in report["exports"]:
        (item,) = [i for i in ledger if i["run_id"] == r["run_id"]]
        assert item["sha256"] == r["sha256"] == item["delivery"]["sha256"] and item["delivery"]["verified"] is True
    assert sorted(i["key"] for i in ledger if i["export"] == "(by hand)") == ["report.xlsx", "team/q3/Summary.XLSX"]
    listing = report["listing"]
    source_keys = [r["key"] for r in report["exports"]]
    # And the original acceptance test: .xlsx files put there by hand, at the root and in a folder, .xlsx or
    # .XLSX, were copied byte for byte; a .txt and a .Xlsx (no filter delivers it) stayed behind
    hand = ["report.xlsx", "team/q3/Summary.XLSX", "notes.txt", "team/Mixed.Xlsx"]
    assert report["hand_uploads"] == {"report.xlsx": True, "team/q3/Summary.XLSX": True, "notes.txt": False,
                                      "team/Mixed.Xlsx": False}
    assert listing["local-source-bucket"] == sorted(source_keys + hand)
    assert listing["local-destination-bucket"] == sorted(prefix + k for k in source_keys + hand[:2])
    assert any(line.startswith("IAM: every call") for line in lines)
    assert list(tmp_files.iterdir()) == []


def test_the_database_stops_between_two_exports(pipeline, tmp_files):
    first = pipeline.run_export({"export": FIRST})["exports"][0]
    created = pipeline.created_by_last_export()
    pipeline.proxy.stop()  # the database goes away
    with pytest.raises(Exception, match="cannot connect to the database"):
        pipeline.run_export({"export": SECOND})
    assert pipeline.created_by_last_export() == []
    for event in pipeline.notifications(created):
        assert pipeline.deliver(event).outcome == "copied"
    listing = pipeline.listing()
    assert listing["local-source-bucket"] == [first["key"]]
    assert listing["local-destination-bucket"] == [PREFIX + first["key"]]
    assert_nothing_half_written(pipeline, tmp_files)


def test_the_source_bucket_refuses_the_upload(pipeline, tmp_files):
    s3 = pipeline.export_handler.runtime().s3
    s3.meta.events.register_first("before-send.s3.PutObject", lambda **_: s3_error(403, "AccessDenied"))
    with pytest.raises(Exception, match=f"upload to s3://local-source-bucket/{KEY_PREFIX}{FIRST}/.* AccessDenied"):
        pipeline.run_export({"export": FIRST})
    assert pipeline.notifications(pipeline.created_by_last_export()) == []
    assert pipeline.listing() == {"local-source-bucket": [], "local-destination-bucket": []}
    assert_nothing_half_written(pipeline, tmp_files)


def test_the_destination_refuses_a_copy_once_then_the_retry_delivers_it(pipeline, tmp_files):
    result = pipeline.run_export({"export": FIRST})["exports"][0]
    (event,) = pipeline.notifications(pipeline.created_by_last_export())
    refusals = [s3_error(403, "AccessDenied")]
    s3 = pipeline.replicator_handler.runtime().s3
    s3.meta.events.register_first("before-send.s3.CopyObject", lambda **_: refusals.pop() if refusals else None)
    delivery = pipeline.deliver(event)
    assert delivery.outcome == "copied" and delivery.attempts == 2
    assert pipeline.failed_events == []
    pipeline.check_replicated(result["key"])
    assert pipeline.listing()["local-destination-bucket"] == [PREFIX + result["key"]]
    assert_nothing_half_written(pipeline, tmp_files)


def test_a_copy_refused_on_every_retry_is_kept_with_its_event(pipeline, tmp_files):
    pipeline.run_export({"export": FIRST})
    (event,) = pipeline.notifications(pipeline.created_by_last_export())
    s3 = pipeline.replicator_handler.runtime().s3
    s3.meta.events.register_first("before-send.s3.CopyObject", lambda **_: s3_error(403, "AccessDenied"))
    delivery = pipeline.deliver(event)
    assert delivery.outcome.startswith("failed") and delivery.attempts == 3  # 1 + MaximumRetryAttempts
    (kept,) = pipeline.failed_events
    assert kept["requestPayload"] == event  # the queue holds the event, ready to replay
    assert pipeline.listing()["local-destination-bucket"] == []
    assert_nothing_half_written(pipeline, tmp_files)


def test_the_same_event_delivered_twice_is_copied_once(pipeline, tmp_files):
    result = pipeline.run_export({"export": SECOND})["exports"][0]
    (event,) = pipeline.notifications(pipeline.created_by_last_export())
    assert pipeline.deliver(event).outcome == "copied"
    assert pipeline.deliver(event).outcome == "already-copied"
    versions = pipeline.s3.list_object_versions(Bucket="local-destination-bucket")["Versions"]
    assert [v["Key"] for v in versions] == [PREFIX + result["key"]]
    assert_nothing_half_written(pipeline, tmp_files)


def test_objects_the_notification_filter_excludes_are_not_copied(pipeline, tmp_files):
    dropped = [pipeline.drop_object(f"{KEY_PREFIX}{FIRST}/readme.txt"), pipeline.drop_object("elsewhere/report.xlsm"),
               pipeline.drop_object("elsewhere/Report.Xlsx")]
    assert pipeline.notifications(dropped) == []
    assert pipeline.listing() == {
        "local-source-bucket": sorted(["elsewhere/Report.Xlsx", "elsewhere/report.xlsm", f"{KEY_PREFIX}{FIRST}/readme.txt"]),
        "local-destination-bucket": []}
    assert any("no rule matches" in line for line in pipeline.lines)


def test_a_workbook_dropped_anywhere_by_hand_is_copied(pipeline, tmp_files):
    dropped = [pipeline.drop_object("elsewhere/report.xlsx", b"PK hand made"), pipeline.drop_object("TOP.XLSX")]
    events = pipeline.notifications(dropped)
    assert len(events) == 2
    assert [pipeline.deliver(e).outcome for e in events] == ["copied", "copied"]
    assert pipeline.check_replicated("elsewhere/report.xlsx")["body"] == b"PK hand made"
    assert pipeline.listing()["local-destination-bucket"] == [PREFIX + "TOP.XLSX", PREFIX + "elsewhere/report.xlsx"]


def test_a_role_missing_a_permission_is_caught(dev, sample_tables, tmp_files):
    # Given the template with the export role's S3 write statement removed
    import copy

    template = copy.deepcopy(dev.template)
    role = dev.logical_id(dev.stack.export.role)
    for r in template["Resources"].values():
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": role} in r["Properties"]["Roles"]:
            r["Properties"]["PolicyDocument"]["Statement"] = [
                st for st in r["Properties"]["PolicyDocument"]["Statement"] if "s3:PutObject" not in st["Action"]]
    # When the pipeline runs, then the check names the call the role would deny
    with pytest.raises(AssertionError, match="s3:PutObject"):
        run(template, sample_tables, say=lambda line: None)


def test_the_installed_command_runs_the_pipeline_locally(dev, sample_tables, tmp_path):
    """`pipeline-ops local` (what `make e2e` runs), installed into the venv by the set-up, on a template file."""
    # Given the dev template written out as `cdk synth` would, and the sample tables' database
    template = tmp_path / "MysqlXlsxPipeline-dev.template.json"
    template.write_text(json.dumps(dev.template))
    db = sample_tables
    dsn = f"mysql://{db['user']}:{db['password']}@{db['host']}:{db['port']}/{db['database']}"
    # When the console script runs it
    command = Path(sys.executable).parent / "pipeline-ops"
    done = subprocess.run([str(command), "local", "--template", str(template), "--no-sample-tables"],
                          env={**os.environ, "MYSQL_DSN": dsn}, capture_output=True, text=True, timeout=300)
    # Then every export of the dev config is copied and checked, and the IAM check passed
    assert done.returncode == 0, done.stderr
    for export in dev.config.exports:
        assert (f"checked {export.name}: s3://local-destination-bucket/{PREFIX}{KEY_PREFIX}{export.name}/" in done.stdout
                or f"export {export.name}: skipped: empty" in done.stdout)
    assert "IAM: every call of both handlers is allowed" in done.stdout


def _local_command(dev, db, tmp_path, *args: str) -> subprocess.CompletedProcess:
    template = tmp_path / "MysqlXlsxPipeline-dev.template.json"
    template.write_text(json.dumps(dev.template))
    dsn = f"mysql://{db['user']}:{db['password']}@{db['host']}:{db['port']}/{db['database']}"
    command = Path(sys.executable).parent / "pipeline-ops"
    return subprocess.run([str(command), "local", "--template", str(template), "--no-sample-tables", *args],
                          env={**os.environ, "MYSQL_DSN": dsn}, capture_output=True, text=True, timeout=300)


def test_the_local_command_keeps_the_workbooks_of_one_export_run_with_chosen_values(dev, sample_tables, tmp_path):
    # Given one of dev's exports with a date parameter, whichever it is
    dated = next(e for e in dev.config.exports if any(p.type == "date" for p in e.parameters))
    day = next(p.name for p in dated.parameters if p.type == "date")
    out = tmp_path / "out"
    # When the command runs that export alone for a chosen day, keeping what it produced
    done = _local_command(dev, sample_tables, tmp_path, "--export", dated.name, "--param", f"{day}={SAMPLE_DAY}",
                          "--out", str(out))
    # Then the upload and its copy are in DIR under their buckets and keys, and openpyxl reads them
    assert done.returncode == 0, done.stderr
    folder = f"{dev.config.key_prefix}{dated.name}/{SAMPLE_DAY.replace('-', '/')}"
    (upload,) = (out / "local-source-bucket" / folder).glob("*.xlsx")
    (copy_,) = (out / "local-destination-bucket" / f"{dev.config.destination.prefix}{folder}").glob("*.xlsx")
    assert upload.read_bytes() == copy_.read_bytes()
    import openpyxl

    assert [ws.title for ws in openpyxl.load_workbook(upload).worksheets][:len(dated.sheets)] == \
        [s.name for s in dated.sheets]
    assert f"checked {dated.name}:" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--export", "no_such_export"], "error: unknown export 'no_such_export'; dev's exports: "),
    (["--param", "day=2026-11-02"], "error: --param needs --export"),
])
def test_the_local_command_refuses_a_bad_request_in_one_line(dev, sample_tables, tmp_path, args, message):
    done = _local_command(dev, sample_tables, tmp_path, *args)
    assert done.returncode == 1
    assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_failed_export_in_the_local_command_is_one_line_and_exit_1(dev, sample_tables, tmp_path):
    # Given a database the run cannot read: the sample tables' database does not exist on the server
    broken = {**sample_tables, "database": "no_such_database_here"}
    done = _local_command(dev, broken, tmp_path, "--export", FIRST)
    # Then the export's own error is the one line printed, and no traceback
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_template_that_is_not_devs_is_one_line_not_a_traceback(dev, sample_tables, tmp_path):
    # Given a template from before the function packages moved under lambdas/ (another handler name)
    old = json.loads(json.dumps(dev.template).replace('"lambdas.export_to_xlsx.handler.handler"',
                                                      '"export_to_xlsx.handler.handler"'))
    template = tmp_path / "old.template.json"
    template.write_text(json.dumps(old))
    dsn = (f"mysql://{sample_tables['user']}:{sample_tables['password']}@{sample_tables['host']}:"
           f"{sample_tables['port']}/{sample_tables['database']}")
    done = subprocess.run([str(Path(sys.executable).parent / "pipeline-ops"), "local", "--template", str(template),
                           "--no-sample-tables"], env={**os.environ, "MYSQL_DSN": dsn}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
