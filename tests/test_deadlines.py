"""The deadline check against moto (S3, EventBridge, SQS) with a fixed clock: on time, late, failed, never
started and skipped runs of a schedule in Europe/Berlin, and the Scheduler cron rules it relies on."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from lambdas import contract, cron
from lambdas.deadline_check import handler as deadline_handler
from lambdas.deadline_check.settings import Deadline, Settings

UTC = dt.timezone.utc
SOURCE, DESTINATION = "source-bucket", "destination-bucket"
PREFIX, DEST_PREFIX = "exports/", "incoming/"
#: 06:00 in Berlin every day; each run's workbook is due an hour later.
BERLIN = Deadline(export="daily_sales", schedule="eu-morning", cron="cron(0 6 * * ? *)", time_zone="Europe/Berlin",
                  minutes=60)
RUN = dt.datetime(2026, 7, 1, 4, 0, tzinfo=UTC)  # 06:00 CEST
DUE = RUN + dt.timedelta(minutes=60)


# --- Scheduler's cron rules ---------------------------------------------------------------


def test_a_berlin_morning_schedule_follows_daylight_saving_time():
    """EventBridge Scheduler evaluates a cron expression on the wall clock of ScheduleExpressionTimezone
    (https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html#time-zones): 06:00 in Berlin
    is 04:00 UTC in summer (CEST, UTC+2) and 05:00 UTC in winter (CET, UTC+1)."""
    july = cron.next_fires("cron(0 6 * * ? *)", "Europe/Berlin", dt.datetime(2026, 7, 14, 12, tzinfo=UTC), 2)
    january = cron.next_fires("cron(0 6 * * ? *)", "Europe/Berlin", dt.datetime(2026, 1, 14, 12, tzinfo=UTC), 2)
    assert july == [dt.datetime(2026, 7, 15, 4, tzinfo=UTC), dt.datetime(2026, 7, 16, 4, tzinfo=UTC)]
    assert january == [dt.datetime(2026, 1, 15, 5, tzinfo=UTC), dt.datetime(2026, 1, 16, 5, tzinfo=UTC)]


def test_a_time_the_clock_skips_is_skipped_and_a_repeated_one_runs_once():
    """Scheduler's daylight saving rules (https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html
    #daylist-savings-time): "When the time shifts forward in Spring, your schedule invocation gets skipped if the
    cron expression falls on a non-existent date and time. When the time shifts back in the Fall, your schedule
    runs only once"."""
    spring = cron.next_fires("cron(30 2 * * ? *)", "Europe/Berlin", dt.datetime(2026, 3, 28, tzinfo=UTC), 2)
    autumn = cron.fires_between("cron(30 2 * * ? *)", "Europe/Berlin", dt.datetime(2026, 10, 24, 12, tzinfo=UTC),
                                dt.datetime(2026, 10, 26, 12, tzinfo=UTC))
    # 29 March 2026 has no 02:30 in Berlin: 28 March (CET) and then 30 March (CEST)
    assert spring == [dt.datetime(2026, 3, 28, 1, 30, tzinfo=UTC), dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    # 25 October 2026 has two 02:30s: one run, at the first (CEST); then 26 October (CET)
    assert autumn == [dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC), dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


@pytest.mark.parametrize("expression, after, expected", [
    ("cron(0 7 ? * MON-FRI *)", dt.datetime(2026, 7, 3, 12, tzinfo=UTC), dt.datetime(2026, 7, 6, 11, tzinfo=UTC)),
    ("cron(0 9 ? * 3#2 *)", dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 13, 14, tzinfo=UTC)),
    ("cron(0 9 L * ? *)", dt.datetime(2026, 2, 1, tzinfo=UTC), dt.datetime(2026, 2, 28, 14, tzinfo=UTC)),
    ("cron(0 9 ? * 6L *)", dt.datetime(2026, 2, 1, tzinfo=UTC), dt.datetime(2026, 2, 27, 14, tzinfo=UTC)),
    ("cron(0 9 15W * ? *)", dt.datetime(2026, 8, 1, tzinfo=UTC), dt.datetime(2026, 8, 14, 13, tzinfo=UTC)),
    ("cron(0/20 8-9 * JAN ? 2027)", dt.datetime(2026, 7, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, 13, tzinfo=UTC)),
])
def test_cron_fields_in_new_york(expression, after, expected):
    """Field rules of https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html#cron-based:
    day-of-week 1-7 = SUN-SAT, ``3#2`` the second Tuesday, ``L`` the last day, ``6L`` the last Friday, ``15W`` the
    weekday nearest the 15th (Saturday 15 August 2026 -> Friday 14th), year field."""
    assert cron.next_fires(expression, "America/New_York", after) == [expected]


@pytest.mark.parametrize("expression, message", [
    ("cron(0 6 * * * *)", "exactly one of day-of-month and day-of-week"),
    ("cron(0 24 * * ? *)", "hour 24 is outside 0-23"),
    ("cron(0 6 * * ?)", "6 fields"),
    ("cron(0 6 ? * FUNDAY *)", "day-of-week 'FUNDAY'"),
    ("rate(1 hours)", "use 'hour' for 1"),
])
def test_bad_expressions_are_named(expression, message):
    with pytest.raises(cron.CronError, match=message):
        cron.check_expression(expression)


# --- the check ------------------------------------------------------------------------------


@pytest.fixture
def aws(moto_aws):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in (SOURCE, DESTINATION):
        s3.create_bucket(Bucket=bucket)
    events = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="announced")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # the README's rule for late and skipped workbooks
    events.put_rule(Name="late-or-skipped", EventPattern=json.dumps(
        {"source": [contract.EVENT_SOURCE], "detail-type": [contract.LATE_DETAIL_TYPE, contract.SKIPPED_DETAIL_TYPE]}))
    events.put_targets(Rule="late-or-skipped", Targets=[{"Id": "q", "Arn": arn}])

    def announced() -> list[dict]:
        out = []
        while True:
            batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return out
            for m in batch:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    return s3, events, announced


SETTINGS = Settings(source_bucket=SOURCE, key_prefix=PREFIX, destination_bucket=DESTINATION,
                    destination_prefix=DEST_PREFIX, deadlines=(BERLIN,))
TIME_TEXT = RUN.strftime(contract.SCHEDULED_TIME_FORMAT)


def record(s3, body: dict) -> None:
    key = contract.run_record_key(PREFIX, BERLIN.export, BERLIN.schedule, TIME_TEXT)
    s3.put_object(Bucket=SOURCE, Key=key, Body=json.dumps(body).encode())


def uploaded(s3, *, copied: bool, at: dt.datetime = RUN + dt.timedelta(minutes=12)) -> None:
    """The run's workbook, uploaded and (``copied``) copied at ``at`` on a fixed clock."""
    from freezegun import freeze_time

    key = f"{PREFIX}daily_sales/2026/06/30/daily_sales-20260701T040012.345Z.xlsx"
    with freeze_time(at):
        s3.put_object(Bucket=SOURCE, Key=key, Body=b"xlsx")
        if copied:
            s3.put_object(Bucket=DESTINATION, Key=DEST_PREFIX + key, Body=b"xlsx")
        record(s3, {"export": "daily_sales", "outcome": "uploaded", "key": key, "rows": 3})


def run_check(s3, events, at: dt.datetime, out: io.StringIO | None = None) -> dict:
    """The check as Scheduler starts it at ``at`` (its scheduled time), a few seconds later on the clock."""
    import contextlib

    event = {"checked_at": at.strftime(contract.SCHEDULED_TIME_FORMAT)}
    with contextlib.redirect_stdout(out or io.StringIO()):
        return deadline_handler.check(event, SETTINGS, s3, events, now=at + dt.timedelta(seconds=5))


def test_a_workbook_in_the_destination_by_its_deadline_announces_nothing(aws):
    s3, events, announced = aws
    # Given the 06:00 run uploaded and its copy arrived
    uploaded(s3, copied=True)
    # When the check runs at the deadline (07:00 CEST)
    result = run_check(s3, events, DUE)
    # Then it looked at that run, found it delivered, and said nothing
    assert [(r["scheduled_time"], r["state"]) for r in result["runs"]] == [(TIME_TEXT, "delivered")]
    assert announced() == []


@pytest.mark.parametrize("given, state, known", [
    (lambda s3: None, "no run recorded", "never started"),
    (lambda s3: record(s3, {"export": "daily_sales", "outcome": "failed",
                            "error": "export 'daily_sales': the SQL failed: (1146) Table 'x' doesn't exist"}),
     "failed", "the run failed: export 'daily_sales': the SQL failed"),
    (lambda s3: uploaded(s3, copied=False), "copy missing", "no copy at s3://destination-bucket/incoming/exports/"),
])
def test_a_run_not_delivered_by_its_deadline_is_announced_once(aws, given, state, known):
    s3, events, announced = aws
    # Given a run that never started, failed, or whose copy is missing
    given(s3)
    out = io.StringIO()
    # When the check runs at the deadline, and again (a retried or repeated invocation)
    first = run_check(s3, events, DUE, out)
    second = run_check(s3, events, DUE)
    # Then exactly one "Workbook Late" event says what is known, and one WorkbooksLate metric point is written
    (event,) = announced()
    assert event["detail-type"] == "Workbook Late" and event["source"] == "mysql-xlsx-pipeline"
    assert event["detail"]["export"] == "daily_sales" and event["detail"]["schedule"] == "eu-morning"
    assert event["detail"]["scheduled_time"] == "2026-07-01T04:00:00Z"
    assert event["detail"]["deadline"] == "2026-07-01T05:00:00Z"
    assert event["detail"]["state"] == state and known in event["detail"]["known"]
    assert first["runs"][0]["announced"] and not second["runs"][0]["announced"]
    (metric,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert metric["WorkbooksLate"] == 1 and metric["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "MysqlXlsxPipeline"


def test_a_run_that_delivers_after_its_deadline_is_late_then_shows_as_delivered_late(aws):
    s3, events, announced = aws
    # Given the run is still going at the deadline
    run_check(s3, events, DUE)
    (event,) = announced()
    assert event["detail"]["state"] == "no run recorded"
    # When its workbook arrives ten minutes after the deadline
    uploaded(s3, copied=True, at=DUE + dt.timedelta(minutes=10))
    # Then the run's state (what `pipeline-ops status` shows) is delivered late, and nothing more is announced
    from lambdas.deadline_check.check import judge

    verdict = judge(s3, SETTINGS, BERLIN, RUN, now=DUE + dt.timedelta(minutes=15))
    assert verdict.state == "delivered late" and "2026-07-01T05:10:00Z" in verdict.known
    assert run_check(s3, events, DUE)["runs"][0]["announced"] is False
    assert announced() == []


def test_an_empty_run_skipped_by_on_empty_is_announced_as_skipped_not_late(aws):
    s3, events, announced = aws
    record(s3, {"export": "daily_sales", "outcome": "skipped: empty", "rows": 0})
    out = io.StringIO()
    run_check(s3, events, DUE, out)
    run_check(s3, events, DUE, out)
    (event,) = announced()
    assert event["detail-type"] == "Workbook Skipped" and event["detail"]["state"] == "skipped"
    assert out.getvalue() == ""  # no late metric


def test_the_check_does_not_depend_on_the_run_and_looks_at_each_deadline_once(aws):
    s3, events, announced = aws
    # Checks every minute from 06:55 to 07:10 CEST: only the 07:00 one has a deadline in its minute
    looked = []
    for minute in range(-5, 11):
        result = run_check(s3, events, DUE + dt.timedelta(minutes=minute))
        looked += [(minute, r["scheduled_time"]) for r in result["runs"]]
    assert looked == [(0, TIME_TEXT)]
    assert len(announced()) == 1


def test_a_check_is_within_a_minute_of_a_deadline_in_winter_too(aws):
    s3, events, announced = aws
    # 06:00 CET is 05:00 UTC in January: due at 06:00 UTC
    result = run_check(s3, events, dt.datetime(2026, 1, 15, 6, 0, 30, tzinfo=UTC))
    assert [r["scheduled_time"] for r in result["runs"]] == ["2026-01-15T05:00:00Z"]
    assert announced()[0]["detail"]["deadline"] == "2026-01-15T06:00:00Z"


def test_a_bad_event_fails_clearly():
    from lambdas.deadline_check.check import CheckError

    with pytest.raises(CheckError, match='"checked_at": "YYYY-MM-DDTHH:MM:SSZ"'):
        deadline_handler.check({}, SETTINGS, None, None, now=DUE)
