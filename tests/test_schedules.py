"""Schedules on the reader's clock: the template's Scheduler schedules, config's refusals, and the export's
session (time zone, statement time limit) and scheduled runs against the real server."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time

import pytest
from aws_cdk.assertions import Match, Template

from lambdas import contract
from pipeline_ops.synth import CDK_JSON
from stacks.config import ConfigError, load_environment
from tests.conftest import _variant

SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"


def _with_schedules(dev: dict) -> None:
    """dev, its daily_sales export also run for two regions' mornings, with parameter values and a deadline."""
    daily = next(e for e in dev["exports"] if e.get("parameters"))
    daily["schedules"] = [
        {"name": "eu-morning", "cron": "cron(0 6 ? * MON-FRI *)", "time_zone": "Europe/Berlin",
         "params": {"day": "yesterday"}, "deliver_within_minutes": 60},
        {"name": "us-morning", "rate": "rate(1 day)", "params": {"day": "-2d"}},
    ]


@pytest.fixture(scope="module")
def scheduled():
    return _variant("dev", _with_schedules)


def all_schedules(synth) -> list[tuple]:
    return [(e, s) for e in synth.config.exports for s in e.schedules]


# --- the template ---------------------------------------------------------------------------------


def test_every_schedule_is_a_scheduler_schedule_in_its_zone_with_its_input(scheduled, dev, prod):
    """AWS::Scheduler::Schedule (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-scheduler-schedule.html):
    ScheduleExpressionTimezone, FlexibleTimeWindow OFF, the target's RetryPolicy and DeadLetterConfig. Scheduler
    fills in <aws.scheduler.scheduled-time> (https://docs.aws.amazon.com/scheduler/latest/UserGuide/managing-schedule-context-attributes.html)."""
    for synth in (scheduled, dev, prod):
        entries = all_schedules(synth)
        t = Template.from_json(synth.template)
        t.resource_count_is("AWS::Scheduler::Schedule", len(entries) + (synth.stack.deadline_check is not None))
        for export, entry in entries:
            expected_input = {"export": export.name, "params": dict(entry.params),
                              "schedule": {"name": entry.name, "scheduled_time": SCHEDULED_TIME}}
            found = [r["Properties"] for r in synth.resources("AWS::Scheduler::Schedule").values()
                     if r["Properties"]["Name"] == f"{export.name}.{entry.name}"]
            (p,) = found
            assert p["GroupName"] == {"Ref": synth.logical_id(synth.stack.schedule_group)}
            assert p["ScheduleExpression"] == entry.expression
            assert p["ScheduleExpressionTimezone"] == entry.time_zone
            assert p["FlexibleTimeWindow"] == {"Mode": "OFF"}
            assert json.loads(p["Target"]["Input"]) == expected_input
            assert p["Target"]["Arn"] == {"Fn::GetAtt": [synth.logical_id(synth.stack.export.function), "Arn"]}
            assert p["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 5, "MaximumEventAgeInSeconds": 7200}
            assert p["Target"]["DeadLetterConfig"] == {
                "Arn": {"Fn::GetAtt": [synth.logical_id(synth.stack.export.failure_queue), "Arn"]}}


def test_a_schedule_runs_in_the_exports_zone_unless_it_names_its_own(scheduled):
    daily = next(e for e in scheduled.config.exports if e.schedules and e.parameters)
    zones = {s.name: s.time_zone for s in daily.schedules}
    assert zones == {"eu-morning": "Europe/Berlin", "us-morning": daily.time_zone}


def test_only_legacy_schedules_remain_eventbridge_rules(scheduled, dev, prod):
    """Legacy ``schedule`` entries keep their UTC EventBridge rule, so no existing environment's runs move."""
    for synth in (scheduled, dev, prod):
        rules = [r["Properties"] for r in synth.resources("AWS::Events::Rule").values()]
        assert sorted(r["ScheduleExpression"] for r in rules) == sorted(
            e.schedule for e in synth.config.exports if e.schedule)


def test_the_scheduler_role_may_only_invoke_the_export_and_only_scheduler_may_assume_it(scheduled):
    """Confused deputy: https://docs.aws.amazon.com/scheduler/latest/UserGuide/cross-service-confused-deputy-prevention.html
    (aws:SourceAccount, aws:SourceArn = the schedule group). Scheduler sends dead letters with the schedule's
    execution role, which therefore needs sqs:SendMessage on the queue
    (https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html)."""
    s = scheduled
    role_id = s.logical_id(s.stack.export.scheduler_role)
    role = s.template["Resources"][role_id]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        "ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [s.logical_id(s.stack.schedule_group), "Arn"]}}}
    policies = [r["Properties"] for r in s.resources("AWS::IAM::Policy").values()
                if {"Ref": role_id} in r["Properties"]["Roles"]]
    statements = [st for p in policies for st in p["PolicyDocument"]["Statement"]]
    assert sorted((st["Action"], json.dumps(st["Resource"])) for st in statements) == sorted([
        ("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": [s.logical_id(s.stack.export.function), "Arn"]})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": [s.logical_id(s.stack.export.failure_queue), "Arn"]})),
    ])
    # every export schedule uses it
    for props in s.resources("AWS::Scheduler::Schedule").values():
        if "." in props["Properties"]["Name"]:
            assert props["Properties"]["Target"]["RoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}


def test_deadlines_are_checked_every_minute_by_their_own_schedule(scheduled):
    s = scheduled
    check = s.stack.deadline_check
    t = Template.from_json(s.template)
    t.has_resource_properties("AWS::Scheduler::Schedule", {
        "Name": "deadline-check", "ScheduleExpression": "cron(* * * * ? *)", "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": Match.object_like({
            "Arn": {"Fn::GetAtt": [s.logical_id(check.function), "Arn"]},
            "Input": json.dumps({"checked_at": SCHEDULED_TIME}, separators=(",", ":")),
            "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [s.logical_id(check.failure_queue), "Arn"]}},
        }),
    })
    # its role puts only the two announcements from the pipeline's source on the default bus
    policy = s.template["Resources"][s.logical_id(check.role.node.find_child("DefaultPolicy"))]["Properties"]
    (put,) = [st for st in policy["PolicyDocument"]["Statement"] if st["Action"] == "events:PutEvents"]
    assert put["Condition"] == {"ForAllValues:StringEquals": {"events:source": ["mysql-xlsx-pipeline"]},
                                "StringEquals": {"events:detail-type": ["Workbook Late", "Workbook Skipped"]}}
    t.has_resource_properties("AWS::CloudWatch::Alarm", {"MetricName": "WorkbooksLate",
                                                         "Namespace": "MysqlXlsxPipeline"})


def test_the_deadline_check_reads_only_its_exports_runs_in_the_ledger_and_writes_only_its_notices(scheduled, dev):
    """Query only on the partitions of exports with a deadline and UpdateItem only on the notices' partition,
    each limited by dynamodb:LeadingKeys with ForAllValues:StringEquals, which applies to Query as to writes
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html); no S3 action at
    all: the check reads no bucket, its own or a partner's."""
    for s in (scheduled, dev):
        check = s.stack.deadline_check
        if check is None:
            continue
        policy = s.template["Resources"][s.logical_id(check.role.node.find_child("DefaultPolicy"))]["Properties"]
        statements = policy["PolicyDocument"]["Statement"]
        actions = [a for st in statements for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])]
        assert not [a for a in actions if a.startswith("s3:")]
        table = {"Fn::GetAtt": [s.logical_id(s.stack.ledger.table), "Arn"]}
        exports = sorted({e.name for e in s.config.exports for x in e.schedules if x.deliver_within_minutes})
        assert [st for st in statements if str(st["Action"]).startswith("dynamodb:")] == [
            {"Action": "dynamodb:Query", "Effect": "Allow", "Resource": table,
             "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": exports}}},
            {"Action": "dynamodb:UpdateItem", "Effect": "Allow", "Resource": table,
             "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["(deadline notices)"]}}},
        ]
        env = s.template["Resources"][s.logical_id(check.function)]["Properties"]["Environment"]["Variables"]
        assert env["LEDGER_TABLE"] == {"Ref": s.logical_id(s.stack.ledger.table)}
        assert env["HISTORY_DAYS"] == str(s.config.history_days)


def test_the_export_gets_its_statement_limit_in_its_environment(scheduled):
    from lambdas.export_to_xlsx.definition import QUERY_TIME_MARGIN_SECONDS

    s = scheduled
    env = s.template["Resources"][s.logical_id(s.stack.export.function)]["Properties"]["Environment"]["Variables"]
    limits = {name: body["max_query_seconds"] for name, body in json.loads(env["EXPORTS"]).items()}
    timeout = s.config.export_function.timeout_seconds
    assert limits == {e.name: timeout - QUERY_TIME_MARGIN_SECONDS for e in s.config.exports}


# --- config refuses --------------------------------------------------------------------------------


def _load(change) -> str:
    environments = copy.deepcopy(CDK_JSON["context"]["environments"])
    _with_schedules(environments["dev"])
    change(environments["dev"])
    with pytest.raises(ConfigError) as info:
        load_environment({"environments": environments}, "dev")
    return str(info.value)


def _daily(dev: dict) -> dict:
    return next(e for e in dev["exports"] if e.get("schedules") and e.get("parameters"))


def _index(dev: dict) -> int:
    return dev["exports"].index(_daily(dev))


@pytest.mark.parametrize("change, field, message", [
    (lambda d: _daily(d)["schedules"][0].update(time_zone="Europe/Berln"), "schedules[0].time_zone",
     "'Europe/Berln' is not an IANA time zone name"),
    (lambda d: _daily(d).update(time_zone="Mars/Olympus"), "time_zone", "'Mars/Olympus' is not an IANA time zone"),
    (lambda d: _daily(d)["schedules"][0].update(params={"region": "EU"}), "schedules[0].params",
     "unknown parameter(s) 'region'"),
    (lambda d: _daily(d)["schedules"][0].update(params={"day": "someday"}), "schedules[0].params",
     "parameter 'day': value 'someday' is not a date"),
    (lambda d: _daily(d)["schedules"][1].update(name="eu-morning"), "schedules",
     "duplicate schedule name(s): eu-morning"),
    (lambda d: _daily(d)["schedules"][0].update(deliver_within_minutes=0), "schedules[0].deliver_within_minutes",
     "0 is outside 1..10080"),
    (lambda d: _daily(d)["schedules"][0].update(cron="cron(0 6,8 ? * MON-FRI *)", deliver_within_minutes=121),
     "schedules[0].deliver_within_minutes",
     "121 minutes is longer than the 120 minutes between two runs of cron(0 6,8 ? * MON-FRI *)"),
    (lambda d: _daily(d)["schedules"][0].update(cron="cron(0 3 * * ? *)", deliver_within_minutes=1440),
     "schedules[0].deliver_within_minutes", "longer than the 1380 minutes between two runs"),  # the spring day
    (lambda d: _daily(d)["schedules"][1].update(deliver_within_minutes=30), "schedules[1].deliver_within_minutes",
     "needs a cron schedule"),
    (lambda d: _daily(d)["schedules"][0].update(cron="cron(0 6 * * * *)"), "schedules[0].cron",
     "exactly one of day-of-month and day-of-week"),
    (lambda d: _daily(d)["schedules"][0].update(name="EU Morning"), "schedules[0].name", "is not a schedule name"),
    (lambda d: _daily(d).update(max_query_seconds=880), "max_query_seconds", "at most 870"),
])
def test_config_refuses_naming_the_field(change, field, message):
    environments = copy.deepcopy(CDK_JSON["context"]["environments"])
    _with_schedules(environments["dev"])
    text = _load(change)
    assert f"environments.dev.exports[{_index(environments['dev'])}].{field}: " in text
    assert message in text


# --- the export's session and scheduled runs, against the real server ------------------------------

from tests.test_export_handler import BUCKET, PREFIX, Context, env, tables, tls_server, tmp_files  # noqa: E402,F401
from lambdas.export_to_xlsx import export as export_module  # noqa: E402
from lambdas.export_to_xlsx import handler as export_handler  # noqa: E402
from lambdas.export_to_xlsx.definition import ExportDefinition  # noqa: E402
from lambdas.export_to_xlsx.errors import ExportError  # noqa: E402


@pytest.fixture
def stamped(mysql):
    conn = mysql.connect()
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("DROP TABLE IF EXISTS clock_stamps")
        cur.execute("CREATE TABLE clock_stamps (id INT PRIMARY KEY, at_ts TIMESTAMP NULL, at_dt DATETIME)")
        cur.execute("INSERT INTO clock_stamps VALUES (1, '2026-07-01 04:00:00', '2026-07-01 04:00:00'), "
                    "(2, '2026-01-15 05:00:00', '2026-01-15 05:00:00')")
    yield
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS clock_stamps")
    conn.close()


def _run(name: str, sql: str, **fields):
    rt = export_handler.runtime()
    return export_module.run_export(ExportDefinition.single(name, sql, **fields), endpoint=rt.endpoint,
                                    secrets=rt.secrets, s3=rt.s3, target=rt.target)


def test_timestamps_read_in_the_reports_time_zone_datetimes_as_stored(env, s3, stamped):
    """MySQL converts TIMESTAMP values from UTC to the session time zone on retrieval, DATETIME not at all
    (https://dev.mysql.com/doc/refman/8.4/en/datetime.html)."""
    from tests.test_export_handler import open_workbook

    result = _run("berlin", "SELECT id, at_ts, at_dt FROM clock_stamps ORDER BY id", time_zone="Europe/Berlin")
    rows = list(open_workbook(s3, result["key"]).active.iter_rows(values_only=True))
    assert rows[1:] == [(1, dt.datetime(2026, 7, 1, 6, 0), dt.datetime(2026, 7, 1, 4, 0)),
                        (2, dt.datetime(2026, 1, 15, 6, 0), dt.datetime(2026, 1, 15, 5, 0))]
    utc = _run("utc", "SELECT at_ts FROM clock_stamps WHERE id = 1")
    assert list(open_workbook(s3, utc["key"]).active.iter_rows(values_only=True))[1] == (dt.datetime(2026, 7, 1, 4),)


def test_now_reads_in_the_reports_time_zone(env, s3):
    from tests.test_export_handler import open_workbook

    result = _run("now", "SELECT NOW() AS local_now, UTC_TIMESTAMP() AS utc_now", time_zone="Asia/Kolkata")
    (_, (local_now, utc_now)) = list(open_workbook(s3, result["key"]).active.iter_rows(values_only=True))
    assert abs((local_now - utc_now) - dt.timedelta(hours=5, minutes=30)) < dt.timedelta(seconds=5)


def test_a_query_past_its_limit_is_stopped_by_the_server_and_nothing_is_uploaded(env, s3, tmp_files):
    # Given an export whose query sleeps 5 s and a limit of 1 s
    started = time.monotonic()
    with pytest.raises(ExportError) as info:
        _run("slow", "SELECT SLEEP(5) AS slept", max_query_seconds=1, sheet_name="Slow")
    # Then it fails within 3 s with one line naming the export, the sheet and the limit
    assert time.monotonic() - started < 3
    assert str(info.value) == ("export 'slow', sheet 'Slow': the query ran past its limit of 1 s (max_query_seconds) "
                               "and the server stopped it; nothing was uploaded")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    assert list(tmp_files.iterdir()) == []


def test_a_server_without_time_zone_tables_names_the_zone(tls_server, env, s3):
    # A fresh server (mariadb-install-db loads no time zone tables), as a self-managed MySQL may be
    from lambdas.export_to_xlsx.database import Endpoint

    rt = export_handler.runtime()
    endpoint = Endpoint(tls_server.host, tls_server.port, "mysql", tls_server.ca_file)
    with pytest.raises(ExportError) as info:
        export_module.run_export(ExportDefinition.single("berlin", "SELECT 1", time_zone="Europe/Berlin"),
                                 endpoint=endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target)
    assert str(info.value).startswith("export 'berlin': the database does not know the time zone 'Europe/Berlin': "
                                      "its time zone tables are not loaded")
    assert "\n" not in str(info.value)


def _scheduled_event(export: str = "numbers", **schedule) -> dict:
    return {"export": export, "params": {},
            "schedule": {"name": "eu-morning", "scheduled_time": "2026-07-01T04:00:00Z", **schedule}}


def _scheduled_item(ledger, export: str) -> dict:
    """The run's one ledger item, and nothing else of the export's written anywhere but the workbook."""
    (item,) = [i for i in ledger.items() if i["export"] == export]
    return item


def _no_run_records(s3) -> None:
    """The export writes nothing but workbooks into the source bucket: the deadline check reads the ledger."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(k.endswith(".xlsx") for k in keys), keys


def test_a_scheduled_run_records_why_it_ran(env, s3, ledger, caplog):
    caplog.set_level("INFO")
    # When Scheduler's event runs the export
    result = export_handler.handler(_scheduled_event(), Context())
    (run,) = result["exports"]
    # Then the result, the log line, the workbook's metadata and the ledger item name the schedule and its time
    assert run["schedule"] == {"name": "eu-morning", "scheduled_time": "2026-07-01T04:00:00Z"}
    head = s3.head_object(Bucket=BUCKET, Key=run["key"])
    assert head["Metadata"][contract.META_SCHEDULE] == "eu-morning"
    assert head["Metadata"][contract.META_SCHEDULED_TIME] == "2026-07-01T04:00:00Z"
    item = _scheduled_item(ledger, "numbers")
    assert (item[contract.LEDGER_SCHEDULE], item[contract.LEDGER_SCHEDULED_TIME]) == ("eu-morning",
                                                                                      "2026-07-01T04:00:00Z")
    assert item["outcome"] == "uploaded" and item["key"] == run["key"] and item["trigger"] == "schedule: eu-morning"
    assert any('"schedule": {"name": "eu-morning"' in r.getMessage() for r in caplog.records)
    _no_run_records(s3)


def test_a_replayed_scheduled_run_keeps_its_schedule_in_the_ledger(env, s3, ledger):
    # A replay of Scheduler's dead letter is still the run that schedule planned for that time
    export_handler.handler({**_scheduled_event(), "trigger": "replay"}, Context())
    item = _scheduled_item(ledger, "numbers")
    assert item["trigger"] == "replay"
    assert (item[contract.LEDGER_SCHEDULE], item[contract.LEDGER_SCHEDULED_TIME]) == ("eu-morning",
                                                                                      "2026-07-01T04:00:00Z")


def test_a_run_by_hand_names_no_schedule_in_the_ledger(env, s3, ledger):
    export_handler.handler({"export": "numbers"}, Context())
    item = _scheduled_item(ledger, "numbers")
    assert contract.LEDGER_SCHEDULE not in item and contract.LEDGER_SCHEDULED_TIME not in item


def test_a_failed_scheduled_run_records_its_error(env, s3, ledger):
    with pytest.raises(ExportError):
        export_handler.handler(_scheduled_event("broken"), Context())
    item = _scheduled_item(ledger, "broken")
    assert item["outcome"] == "failed" and "no_such_table_here" in item["error"]
    assert item[contract.LEDGER_SCHEDULED_TIME] == "2026-07-01T04:00:00Z"
    _no_run_records(s3)


def test_a_skipped_scheduled_run_records_the_skip(env, s3, ledger, monkeypatch):
    monkeypatch.setenv("EXPORTS", json.dumps({"empty": {"sql": "SELECT 1 AS n FROM DUAL WHERE 1 = 0",
                                                        "on_empty": "skip"}}))
    export_handler.runtime.cache_clear()
    export_handler.handler(_scheduled_event("empty"), Context())
    item = _scheduled_item(ledger, "empty")
    assert item["outcome"] == "skipped: empty" and item[contract.LEDGER_SCHEDULE] == "eu-morning"
    _no_run_records(s3)


@pytest.mark.parametrize("schedule", [
    {"name": "eu-morning", "scheduled_time": "<aws.scheduler.scheduled-time>"},
    {"name": "EU morning", "scheduled_time": "2026-07-01T04:00:00Z"},
    "eu-morning",
    {"name": "eu-morning"},
])
def test_a_bad_schedule_in_the_event_is_refused_before_anything_runs(env, s3, schedule):
    with pytest.raises(ExportError, match=r'"schedule" must be \{"name": NAME, "scheduled_time"'):
        export_handler.handler({"export": "numbers", "schedule": schedule}, Context())
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_relative_dates_of_a_scheduled_run_are_taken_at_its_scheduled_time(env, s3, monkeypatch):
    # Given an export with a "yesterday" date parameter, replayed long after its scheduled time
    monkeypatch.setenv("EXPORTS", json.dumps({"daily": {
        "sql": "SELECT %(day)s AS day", "parameters": [{"name": "day", "type": "date", "default": "yesterday"}],
        "time_zone": "Europe/Berlin"}}))
    export_handler.runtime.cache_clear()
    (run,) = export_handler.handler(_scheduled_event("daily"), Context())["exports"]
    # Then it reads the day before the planned run (1 July 06:00 in Berlin), in that day's folder
    assert run["params"] == {"day": "2026-06-30"} and "/2026/06/30/" in run["key"]
