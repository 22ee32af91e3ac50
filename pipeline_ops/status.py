"""What state an environment is in: latest workbook per export and its copy, failure queues, alarms."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from lambdas import cron
from lambdas.bucket_replicator.replicate import META_SOURCE_VERSION as SOURCE_VERSION_METADATA
from lambdas.contract import META_ROWS, SUFFIXES as WORKBOOK_SUFFIXES, destination_key, export_prefix
from pipeline_ops.aws import Deployment, OperatorError, calling, explain
from pipeline_ops.replay import present_queues

#: The replicator's copy records the source version it copied (lambdas/bucket_replicator/replicate.py).


@dataclass(frozen=True)
class Check:
    """One line of the report; ``attention`` makes the command exit non-zero."""

    what: str
    state: str
    detail: str = ""
    attention: bool = False


@dataclass(frozen=True)
class ExportStatus:
    export: str
    key: str | None
    modified: dt.datetime | None
    rows: str | None
    delivered: Check
    last_run: str = "-"  # from the run ledger: outcome, start time and trigger of the newest run


def latest_workbook(s3: Any, bucket: str, prefix: str) -> dict | None:
    latest = None
    with calling(f"listing s3://{bucket}/{prefix}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                # S3 keeps LastModified to the second; the key (which holds the time in ms) breaks ties
                newest = (obj["LastModified"], obj["Key"])
                if obj["Key"].endswith(WORKBOOK_SUFFIXES) and (latest is None or
                                                                newest > (latest["LastModified"], latest["Key"])):
                    latest = obj
    return latest


def _delivery(s3: Any, source: dict, destination_bucket: str, destination_key: str, now: dt.datetime,
              grace: dt.timedelta) -> Check:
    what = f"s3://{destination_bucket}/{destination_key}"
    try:
        copy = s3.head_object(Bucket=destination_bucket, Key=destination_key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            if now - source["LastModified"] < grace:
                return Check(what, "not yet", f"written {now - source['LastModified']} ago; copies take seconds")
            return Check(what, "missing", "not copied: see `pipeline-ops replay --dry-run`", attention=True)
        return Check(what, "unknown", str(explain(exc, "reading the copy")))
    version = source.get("VersionId")
    copied = copy.get("Metadata", {}).get(SOURCE_VERSION_METADATA)
    if version and version != "null" and copied != version:
        return Check(what, "other version", f"the copy is of version {copied}, the latest is {version}",
                     attention=now - source["LastModified"] >= grace)
    return Check(what, "delivered")


def exports(deployment: Deployment, *, now: dt.datetime, grace: dt.timedelta) -> list[ExportStatus]:
    """Per export of the config: the newest workbook in the source bucket and whether its copy arrived."""
    config = deployment.config
    s3 = deployment.client("s3")
    source_bucket = deployment.output("SourceBucketName")
    destination_bucket = deployment.output("DestinationBucketName")
    table = deployment.outputs.get("RunLedgerTableName")  # absent on a stack deployed before the ledger
    dynamodb = deployment.client("dynamodb") if table else None
    out = []
    for export in config.exports:
        last = "-"
        if table:
            from pipeline_ops.history import latest_run

            run = latest_run(dynamodb, table, export.name)
            if run is not None:
                last = f"{run.get('outcome')} {run.get('started')} ({run.get('trigger')})"
        latest = latest_workbook(s3, source_bucket, export_prefix(config.key_prefix, export.name))
        if latest is None:
            out.append(ExportStatus(export.name, None, None, None, Check("", "no workbook yet"), last))
            continue
        with calling(f"reading s3://{source_bucket}/{latest['Key']}"):
            head = s3.head_object(Bucket=source_bucket, Key=latest["Key"])
        source = {**latest, "VersionId": head.get("VersionId")}
        delivered = _delivery(s3, source, destination_bucket, destination_key(config.destination.prefix, latest["Key"]), now, grace)
        out.append(ExportStatus(export.name, latest["Key"], latest["LastModified"],
                                head.get("Metadata", {}).get(META_ROWS), delivered, last))
    return out


def queues(deployment: Deployment) -> list[Check]:
    """Depth of every failure queue: any message is a failure waiting for `replay`."""
    sqs = deployment.client("sqs")
    out = []
    for queue, url in present_queues(deployment):
        with calling(f"reading the {queue.label} queue's depth"):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        visible = int(attributes.get("ApproximateNumberOfMessages", 0))
        hidden = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
        waiting = visible + hidden
        detail = f"{visible} waiting" + (f", {hidden} being read" if hidden else "")
        out.append(Check(queue.label, "empty" if not waiting else f"{waiting} message(s)", detail if waiting else "",
                         attention=bool(waiting)))
    return out


def alarms(deployment: Deployment) -> list[Check]:
    """State of every alarm the stack created (its AlarmNames output); ALARM needs attention."""
    names = [n for n in deployment.output("AlarmNames").split(",") if n]
    cloudwatch = deployment.client("cloudwatch")
    found = {}
    for start in range(0, len(names), 100):  # DescribeAlarms takes at most 100 names
        with calling("reading the alarms' states"):
            answer = cloudwatch.describe_alarms(AlarmNames=names[start:start + 100],
                                                AlarmTypes=["MetricAlarm", "CompositeAlarm"])
        for alarm in answer.get("MetricAlarms", []) + answer.get("CompositeAlarms", []):
            found[alarm["AlarmName"]] = alarm
    out = []
    for name in names:
        alarm = found.get(name)
        if alarm is None:
            out.append(Check(name, "not found", "the stack names it but CloudWatch does not have it", attention=True))
            continue
        state = alarm["StateValue"]
        out.append(Check(name, state, alarm.get("StateReason", "") if state != "OK" else "",
                         attention=state == "ALARM"))
    return out


@dataclass(frozen=True)
class ScheduleStatus:
    """One Scheduler schedule of an export: its next run on its own clock, and its last run."""

    name: str  # <export>.<schedule>, as in Scheduler
    expression: str
    time_zone: str
    next_run: dt.datetime | None  # UTC; None for a rate (its phase is not known) or a schedule that ended
    deadline_minutes: int | None
    last_run: dt.datetime | None
    last: Check

    def next_local(self) -> str:
        if self.next_run is None:
            return "-" if self.expression.startswith("cron(") else f"{self.expression}, counted from its deployment"
        local = self.next_run.astimezone(cron.ZoneInfo(self.time_zone))
        return f"{local:%Y-%m-%d %H:%M %Z} ({self.next_run:%H:%M} UTC)"


def schedules(deployment: Deployment, *, now: dt.datetime) -> list[ScheduleStatus]:
    """Each export's schedules: the next run in its zone (EventBridge Scheduler's rules, ``lambdas/cron.py``) and
    whether the last run was delivered by its deadline, as the deadline check judges it from the run ledger (runs
    started until now count, so a replay after the deadline shows as delivered late)."""
    from lambdas.deadline_check import check as deadline_check
    from lambdas.deadline_check.settings import Deadline

    config = deployment.config
    entries = [(e, s) for e in config.exports for s in e.schedules]
    if not entries:
        return []
    table = deployment.outputs.get("RunLedgerTableName")  # absent on a stack deployed before the ledger
    dynamodb = deployment.client("dynamodb") if table else None
    out = []
    for export, entry in entries:
        name = entry.scheduler_name(export.name)
        if not entry.expression.startswith("cron("):
            out.append(ScheduleStatus(name, entry.expression, entry.time_zone, None, entry.deliver_within_minutes,
                                      None, Check("", "not tracked", "a rate schedule's run times are not known")))
            continue
        (next_run,) = cron.next_fires(entry.expression, entry.time_zone, now, 1) or (None,)
        last = cron.last_fire(entry.expression, entry.time_zone, now)
        if last is None:
            out.append(ScheduleStatus(name, entry.expression, entry.time_zone, next_run, entry.deliver_within_minutes,
                                      None, Check("", "no run yet")))
            continue
        minutes = entry.deliver_within_minutes or 0
        deadline = Deadline(export.name, entry.name, entry.expression, entry.time_zone, minutes)
        if dynamodb is None:
            out.append(ScheduleStatus(name, entry.expression, entry.time_zone, next_run, entry.deliver_within_minutes,
                                      last, Check("", "not tracked", "the stack has no run ledger")))
            continue
        try:
            verdict = deadline_check.judge(dynamodb, table, deadline, last, now, until=now)
        except deadline_check.CheckError as exc:
            raise OperatorError(f"reading {name}'s run at {last:%Y-%m-%dT%H:%MZ}: {exc}") from None
        if entry.deliver_within_minutes is None:  # no deadline: what the run did, nothing is late
            state = {deadline_check.NOT_RECORDED: "no run recorded"}.get(verdict.state, verdict.state)
            check = Check("", "delivered" if state in (deadline_check.DELIVERED, deadline_check.DELIVERED_LATE)
                          else state, verdict.known, attention=state == deadline_check.FAILED)
        else:
            state = ("delivered by its deadline" if verdict.state == deadline_check.DELIVERED else verdict.state)
            # late and still not there needs attention; delivered late was announced and is there now
            check = Check("", state, verdict.known, attention=verdict.late and verdict.state != deadline_check.DELIVERED_LATE)
        out.append(ScheduleStatus(name, entry.expression, entry.time_zone, next_run, entry.deliver_within_minutes,
                                  last, check))
    return out
