"""The deadline check against moto (the run ledger in DynamoDB, EventBridge, SQS) with a fixed clock: on time,
late, failed, never started and skipped runs of a schedule in Europe/Berlin, each announced once, and the Scheduler
cron rules it relies on."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from lambdas import contract, cron
from lambdas.deadline_check import handler as deadline_handler
from lambdas.deadline_check.settings import Deadline, Settings
from lambdas.export_to_xlsx.definition import ExportDefinition
from tests.conftest import LEDGER_TABLE

UTC = dt.timezone.utc
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
def aws(moto_aws, ledger):
    """The run ledger (moto DynamoDB, keyed as the stack's table), and the README's rule for late and skipped
    workbooks on the default bus, delivering into a queue the test reads. No bucket: the check reads none."""
    import boto3

    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    events = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="announced")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
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

    return dynamodb, events, announced


SETTINGS = Settings(ledger_table=LEDGER_TABLE, deadlines=(BERLIN,), history_days=400)
TIME_TEXT = RUN.strftime(contract.SCHEDULED_TIME_FORMAT)
PARTNER = "partner-bucket-in-another-account"  # exists nowhere here: the check never reads a bucket
EXPORT = ExportDefinition.single("daily_sales", "SELECT 1 AS n")


def run(dynamodb, *, started: dt.timedelta = dt.timedelta(seconds=12), outcome: str = "uploaded",
        delivered: dt.timedelta | None = None, schedule: str | None = BERLIN.schedule,
        scheduled: dt.datetime = RUN, error: str | None = None) -> str:
    """One run's ledger item as the two functions write it: the export's (``record``, its handler's own writer:
    trigger, outcome, the schedule and scheduled time its event named), then, ``delivered`` after the scheduled
    time, the replicator's delivery to the partner's bucket (``Ledger.record_delivery``, the replicator's writer).
    ``schedule=None``: a run by hand in the same hour."""
    from lambdas.export_to_xlsx.errors import ExportError
    from lambdas.export_to_xlsx.export import ScheduledRun
    from lambdas.export_to_xlsx.handler import record
    from lambdas.ledger import Ledger, iso

    ledger = Ledger(dynamodb, LEDGER_TABLE, function_name="test", history_days=400)
    start = RUN + started
    run_id = contract.run_id(iso(start), f"{int(started.total_seconds()):012d}")
    key = f"{PREFIX}daily_sales/2026/06/30/daily_sales-{start:%Y%m%dT%H%M%S}.000Z.xlsx"
    result = {"outcome": outcome, "params": {}, "rows": 0 if outcome == "skipped: empty" else 3, "seconds": 1.5,
              "bytes": 4096, "bucket": "source-bucket", "key": key, "version_id": "v1", "sha256": "ab" * 32}
    planned = ScheduledRun(schedule, scheduled) if schedule else None
    record(ledger, EXPORT, run_id, trigger=f"schedule: {schedule}" if schedule else "manual", requested={},
           started=start, scheduled=planned, result=None if error else result,
           error=ExportError(error) if error else None)
    if delivered is not None:
        assert ledger.record_delivery("daily_sales", run_id, {
            "bucket": PARTNER, "key": DEST_PREFIX + key, "version_id": "d1", "at": iso(RUN + delivered),
            "sha256": "ab" * 32, "verified": True}) == "recorded"
    return run_id


def run_check(dynamodb, events, at: dt.datetime, out: io.StringIO | None = None) -> dict:
    """The check as Scheduler starts it at ``at`` (its scheduled time), a few seconds later on the clock."""
    import contextlib

    event = {"checked_at": at.strftime(contract.SCHEDULED_TIME_FORMAT)}
    with contextlib.redirect_stdout(out or io.StringIO()):
        return deadline_handler.check(event, SETTINGS, dynamodb, events, now=at + dt.timedelta(seconds=5))


def test_a_scheduled_run_delivered_by_its_deadline_announces_nothing(aws):
    """The check reads the delivery the replicator recorded, not the partner's bucket: a copy in another account's
    bucket that the check could never read is judged by its recorded time (formerly it counted as delivered
    whatever happened)."""
    dynamodb, events, announced = aws
    # Given the 06:00 run uploaded and its copy reached the partner's bucket at 06:12
    run(dynamodb, delivered=dt.timedelta(minutes=12))
    # When the check runs at the deadline (07:00 CEST)
    out = io.StringIO()
    result = run_check(dynamodb, events, DUE, out)
    # Then it looked at that run, found it delivered, and said nothing
    (line,) = result["runs"]
    assert (line["scheduled_time"], line["state"], line["announced"]) == (TIME_TEXT, "delivered", False)
    assert line["known"] == f"copied to s3://{PARTNER}/{DEST_PREFIX}exports/daily_sales/2026/06/30/" \
                            "daily_sales-20260701T040012.000Z.xlsx at 2026-07-01T04:12:00Z"
    assert announced() == [] and out.getvalue() == ""


def test_a_retried_run_that_delivered_counts_and_other_runs_in_the_window_do_not(aws):
    """One Query on the export's partition, key condition from the scheduled time to the deadline, filtered on the
    schedule and its time (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.FilterExpression.html:
    the filter is applied after the items are read, so the runs of other schedules in the range are read, not
    returned)."""
    dynamodb, events, announced = aws
    # Given a run by hand and a run for another scheduled time, both delivered in the hour, and this run failing
    run(dynamodb, started=dt.timedelta(minutes=1), schedule=None, delivered=dt.timedelta(minutes=3))
    run(dynamodb, started=dt.timedelta(minutes=2), scheduled=RUN - dt.timedelta(days=1),
        delivered=dt.timedelta(minutes=4))
    run(dynamodb, started=dt.timedelta(seconds=5), error="export 'daily_sales': the database did not answer")
    # Then neither counts: the run is failed
    from lambdas.deadline_check.check import judge

    verdict = judge(dynamodb, LEDGER_TABLE, BERLIN, RUN, now=DUE)
    assert verdict.state == "failed" and verdict.run["trigger"] == "schedule: eu-morning"
    # When Lambda retries the same event (a second item, same schedule and time) and that run is delivered by 06:40
    run(dynamodb, started=dt.timedelta(minutes=3), delivered=dt.timedelta(minutes=40))
    # Then the run was delivered on time, and the check at the deadline announces nothing
    assert run_check(dynamodb, events, DUE)["runs"][0]["state"] == "delivered"
    assert announced() == []


@pytest.mark.parametrize("given, state, known", [
    ("never started", "no run recorded", "never started"),
    ("failed", "failed", "the run failed: export 'daily_sales': the SQL failed: (1146) Table 'x' doesn't exist"),
    ("uploaded, not copied", "copy missing", "no delivery recorded in the run ledger"),
])
def test_a_run_not_delivered_by_its_deadline_is_announced_once(aws, ledger, given, state, known):
    dynamodb, events, announced = aws
    # Given a run that never started, failed, or whose copy never reached the partner's bucket
    if given == "failed":
        run(dynamodb, error="export 'daily_sales': the SQL failed: (1146) Table 'x' doesn't exist")
    elif given == "uploaded, not copied":
        run(dynamodb, delivered=None)
    out = io.StringIO()
    # When the check runs at the deadline, and again (a retried or repeated invocation)
    first = run_check(dynamodb, events, DUE, out)
    second = run_check(dynamodb, events, DUE)
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
    # and the notice is an item of the ledger's notice partition, not of the export's runs
    notices = [i for i in ledger.items() if i["export"] == contract.LEDGER_NOTICE_PARTITION]
    assert [(n["run_id"], n["notice"]["detail_type"]) for n in notices] == [
        ("2026-07-01T04:00:00Z#daily_sales#eu-morning", "Workbook Late")]
    assert notices[0]["expires_at"] == int(RUN.timestamp()) + 400 * 86400
    assert all(i.get("notice") is None for i in ledger.items() if i["export"] == "daily_sales")


def test_a_run_that_delivers_after_its_deadline_is_late_then_shows_as_delivered_late(aws):
    dynamodb, events, announced = aws
    # Given the run is still going at the deadline (its item is written when it ends)
    run_check(dynamodb, events, DUE)
    (event,) = announced()
    assert event["detail"]["state"] == "no run recorded"
    # When it ends and its workbook arrives ten minutes after the deadline
    run(dynamodb, started=dt.timedelta(minutes=2), delivered=dt.timedelta(minutes=70))
    # Then the run's state (what `pipeline-ops status` shows) is delivered late, and nothing more is announced
    from lambdas.deadline_check.check import judge

    verdict = judge(dynamodb, LEDGER_TABLE, BERLIN, RUN, now=DUE + dt.timedelta(minutes=15))
    assert verdict.state == "delivered late" and "2026-07-01T05:10:00Z, after the deadline" in verdict.known
    assert run_check(dynamodb, events, DUE)["runs"][0]["announced"] is False
    assert announced() == []


def test_a_run_delivered_a_minute_late_is_announced_late(aws):
    dynamodb, events, announced = aws
    # Given the copy was recorded at 07:01 (a check retried after it, or status, sees it)
    run(dynamodb, delivered=dt.timedelta(minutes=61))
    from lambdas.deadline_check.check import announce, judge

    verdict = judge(dynamodb, LEDGER_TABLE, BERLIN, RUN, now=DUE + dt.timedelta(minutes=5))
    # Then it is late, announced once
    assert verdict.state == "delivered late" and verdict.late
    assert announce(dynamodb, events, SETTINGS, verdict) and not announce(dynamodb, events, SETTINGS, verdict)
    assert [e["detail"]["state"] for e in announced()] == ["delivered late"]


def test_an_empty_run_skipped_by_on_empty_is_announced_as_skipped_not_late(aws):
    dynamodb, events, announced = aws
    run(dynamodb, outcome="skipped: empty")
    out = io.StringIO()
    run_check(dynamodb, events, DUE, out)
    run_check(dynamodb, events, DUE, out)
    (event,) = announced()
    assert event["detail-type"] == "Workbook Skipped" and event["detail"]["state"] == "skipped"
    assert event["detail"]["run"]["outcome"] == "skipped: empty" and event["detail"]["run"]["rows"] == 0
    assert out.getvalue() == ""  # no late metric


def test_an_event_that_could_not_be_put_is_announced_by_the_retry(aws):
    """The notice is taken back when EventBridge refuses the event, so the retried check announces the run."""
    from botocore.exceptions import ClientError

    from lambdas.deadline_check.check import CheckError

    dynamodb, events, announced = aws

    class Refusing:
        def put_events(self, **_):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "PutEvents")

    with pytest.raises(CheckError, match="ThrottlingException"):
        run_check(dynamodb, Refusing(), DUE)
    assert run_check(dynamodb, events, DUE)["runs"][0]["announced"] is True
    assert len(announced()) == 1


def test_the_check_does_not_depend_on_the_run_and_looks_at_each_deadline_once(aws):
    dynamodb, events, announced = aws
    # Checks every minute from 06:55 to 07:10 CEST: only the 07:00 one has a deadline in its minute
    looked = []
    for minute in range(-5, 11):
        result = run_check(dynamodb, events, DUE + dt.timedelta(minutes=minute))
        looked += [(minute, r["scheduled_time"]) for r in result["runs"]]
    assert looked == [(0, TIME_TEXT)]
    assert len(announced()) == 1


def test_a_check_is_within_a_minute_of_a_deadline_in_winter_too(aws):
    dynamodb, events, announced = aws
    # 06:00 CET is 05:00 UTC in January: due at 06:00 UTC
    result = run_check(dynamodb, events, dt.datetime(2026, 1, 15, 6, 0, 30, tzinfo=UTC))
    assert [r["scheduled_time"] for r in result["runs"]] == ["2026-01-15T05:00:00Z"]
    assert announced()[0]["detail"]["deadline"] == "2026-01-15T06:00:00Z"


def test_a_bad_event_fails_clearly():
    from lambdas.deadline_check.check import CheckError

    with pytest.raises(CheckError, match='"checked_at": "YYYY-MM-DDTHH:MM:SSZ"'):
        deadline_handler.check({}, SETTINGS, None, None, now=DUE)


@pytest.mark.parametrize("environ, message", [
    ({"DEADLINES": "[]", "HISTORY_DAYS": "400"}, "missing environment variables: LEDGER_TABLE"),
    ({"DEADLINES": "[]", "HISTORY_DAYS": "0", "LEDGER_TABLE": "t"}, "HISTORY_DAYS must be a whole number"),
])
def test_its_environment_is_checked_at_cold_start(environ, message):
    from lambdas.deadline_check.settings import ConfigurationError, load_settings

    with pytest.raises(ConfigurationError, match=message):
        load_settings(environ)
