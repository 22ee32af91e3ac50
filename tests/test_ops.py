"""`pipeline-ops run|backfill|replay|status` against moto's server in a process of its own.

The fake deployment holds real (moto) buckets, queues and alarms, and a CloudFormation stack whose
outputs carry the keys of the synthesized dev template. moto cannot run the functions' code, so
Lambda's Invoke is answered by a double at the API boundary: the commands' own requests go out
unchanged and the double records each payload.
"""

from __future__ import annotations

import datetime as dt

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote

import boto3
import pytest
from click.testing import CliRunner

from pipeline_ops.aws import OPTIONAL_OUTPUTS, OUTPUTS, load_config
from pipeline_ops.cli import Tools, cli
from tests.conftest import create_ledger_table
from tests.faults import lambda_answer, query_error, rest_json_error, s3_error

STACK = "MysqlXlsxPipeline-dev"
#: One of dev's exports with a date parameter, whichever dev lists: the run and backfill tests use it.
_DEV = load_config("dev")
DATED = next(e for e in _DEV.exports if any(p.type == "date" for p in e.parameters))
DAY = next(p.name for p in DATED.parameters if p.type == "date")


@pytest.fixture(scope="module")
def moto_server():
    """`python -m moto.server` on a free port, as a user would start it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto's server did not start on port {port}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def endpoint(moto_server, monkeypatch):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("COLUMNS", "500")  # rich wraps tables at the terminal's width
    return moto_server


Answer = Callable[[dict], tuple[object, str | None]]


@dataclass
class FakeLambda:
    """Answers Invoke per function name; records (function, payload) of every call."""

    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def session(self, **kwargs) -> boto3.Session:
        session = boto3.Session(**kwargs)
        session.events.register("before-send.lambda.Invoke", self._invoke)
        return session

    def _invoke(self, request, **_):
        function = unquote(request.url.split("/functions/", 1)[1].split("/", 1)[0])
        payload = json.loads(request.body)
        self.calls.append((function, payload))
        result, error = self.answers[function](payload)
        return lambda_answer(result, error)

    def payloads(self, function: str) -> list[dict]:
        return [p for f, p in self.calls if f == function]


@dataclass
class Deployed:
    outputs: dict[str, str]
    fake: FakeLambda
    s3: object
    sqs: object
    cloudwatch: object

    def cli(self, *args: str, extra_session_hooks: Callable | None = None):
        factory = self.fake.session
        if extra_session_hooks:
            def factory(**kwargs):
                session = self.fake.session(**kwargs)
                extra_session_hooks(session)
                return session
        return CliRunner().invoke(cli, list(args), obj=Tools(session_factory=factory), catch_exceptions=False)

    def queue_bodies(self, output: str) -> list[dict]:
        messages = self.sqs.receive_message(QueueUrl=self.outputs[output], MaxNumberOfMessages=10,
                                            VisibilityTimeout=0).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


def deploy(dev, *, export_queue: bool = True) -> Deployed:
    """Buckets, queues and alarms in moto, and a stack named as `cdk deploy` names it with the template's outputs."""
    s3, sqs, cloudwatch, cfn = (boto3.client(s) for s in ("s3", "sqs", "cloudwatch", "cloudformation"))
    outputs = {key: f"{STACK}-{key}" for key in dev.template["Outputs"]}  # outputs the commands do not read
    for key in ("SourceBucketName", "DestinationBucketName"):
        outputs[key] = f"{STACK.lower()}-{key.lower()}"
        s3.create_bucket(Bucket=outputs[key])
        s3.put_bucket_versioning(Bucket=outputs[key], VersioningConfiguration={"Status": "Enabled"})
    queues = ["FailedCopiesQueueUrl"] + (["FailedExportsQueueUrl"] if export_queue else [])
    for key in queues:
        outputs[key] = sqs.create_queue(QueueName=f"{STACK}-{key[:-8]}")["QueueUrl"]
    if not export_queue:
        outputs.pop("FailedExportsQueueUrl", None)
    alarm_names = [f"{STACK}-{logical_id}" for logical_id in dev.resources("AWS::CloudWatch::Alarm")]
    for name in alarm_names:
        cloudwatch.put_metric_alarm(AlarmName=name, MetricName="Errors", Namespace="AWS/Lambda", Statistic="Sum",
                                    Period=300, EvaluationPeriods=1, Threshold=1,
                                    ComparisonOperator="GreaterThanOrEqualToThreshold")
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="fine")
    outputs["AlarmNames"] = ",".join(alarm_names)
    create_ledger_table(boto3.client("dynamodb"), outputs["RunLedgerTableName"])
    template = {"Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    return Deployed(outputs, FakeLambda(), s3, sqs, cloudwatch)


@pytest.fixture
def deployed(endpoint, dev) -> Deployed:
    return deploy(dev)


def test_every_output_the_commands_read_is_in_the_synthesized_templates(dev, prod):
    for synthesized in (dev, prod):
        assert set(OUTPUTS) - OPTIONAL_OUTPUTS <= set(synthesized.template["Outputs"])


# --- run -----------------------------------------------------------------------------------------


def upload(export: str, **extra) -> dict:
    return {"export": export, "outcome": "uploaded", "bucket": "src", "key": f"exports/{export}/2026/11/20/{export}-20261120T050000.000Z.xlsx",
            "rows": 25, "sheets": 1, "bytes": 3780, "seconds": 0.42, **extra}


def test_run_invokes_the_export_and_prints_what_it_uploaded(deployed):
    fn = deployed.outputs["ExportFunctionName"]
    deployed.fake.answers[fn] = lambda event: ({"exports": [upload(event["export"])]}, None)
    result = deployed.cli("run", DATED.name, "--param", f"{DAY}=2026-11-20")
    assert result.exit_code == 0, result.output
    assert deployed.fake.payloads(fn) == [{"export": DATED.name, "params": {DAY: "2026-11-20"}}]
    name = DATED.name
    for text in ("src", f"exports/{name}/2026/11/20/{name}-20261120T050000.000Z.xlsx", "25", "3780", "0.42",
                 f"{DAY}=2026-11-20"):
        assert text in result.stdout


def test_run_fails_with_the_functions_own_error(deployed):
    fn = deployed.outputs["ExportFunctionName"]
    deployed.fake.answers[fn] = lambda event: (
        {"errorMessage": "orders: cannot connect to the database at db:3306: timed out", "errorType": "ExportError",
         "stackTrace": []}, "Unhandled")
    result = deployed.cli("run", DATED.name)
    assert result.exit_code == 1
    assert (f"export {DATED.name} failed: ExportError: orders: cannot connect to the database at db:3306: timed out"
            in result.stderr)
    assert deployed.fake.payloads(fn) == [{"export": DATED.name}]


def test_run_refuses_an_unknown_export_before_invoking(deployed):
    result = deployed.cli("run", "ordrs")
    assert result.exit_code == 1
    assert (f"unknown export 'ordrs' in environment dev; configured: {', '.join(e.name for e in _DEV.exports)}"
            in result.stderr)
    assert deployed.fake.calls == []


@pytest.mark.parametrize("args, message", [
    (["--param", "nope=1"], f"export '{DATED.name}': unknown parameter(s) 'nope'; declared: "),
    (["--param", f"{DAY}=2026-02-30"], f"parameter '{DAY}': value '2026-02-30' is not a date"),
])
def test_run_checks_parameters_with_the_functions_parser_before_any_aws_call(args, message, monkeypatch):
    # Given no AWS at all: no credentials, no endpoint, a session factory that fails if it is ever used
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")

    def no_aws(**_):
        raise AssertionError("an AWS session was created")

    result = CliRunner().invoke(cli, ["run", DATED.name, *args], obj=Tools(session_factory=no_aws))
    # Then the bad value is refused by the same parser the function uses, naming it
    assert result.exit_code == 1 and message in result.stderr, result.output


def test_a_backfill_day_the_parser_refuses_stops_before_any_aws_call():
    def no_aws(**_):
        raise AssertionError("an AWS session was created")

    result = CliRunner().invoke(cli, ["backfill", DATED.name, "--param", f"{DAY}=2026-11-01..2026-11-02",
                                      "--param", "nope=1"], obj=Tools(session_factory=no_aws))
    assert result.exit_code == 1 and "unknown parameter(s) 'nope'" in result.stderr


def test_aws_region_is_honoured_when_cdk_json_names_none(monkeypatch):
    """boto3 reads AWS_DEFAULT_REGION but not AWS_REGION (https://docs.aws.amazon.com/sdkref/latest/guide/
    feature-region.html lists AWS_REGION as the SDKs' variable); the command passes it on itself."""
    seen = {}

    def factory(**kwargs):
        seen.update(kwargs)
        raise AssertionError("stop here")

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    with pytest.raises(AssertionError, match="stop here"):
        CliRunner().invoke(cli, ["status"], obj=Tools(session_factory=factory), catch_exceptions=False)
    assert seen["region_name"] == "eu-central-1"


def test_the_command_tells_its_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("pipeline-ops, version ")


def test_a_parameter_without_a_value_is_a_usage_error():
    result = CliRunner().invoke(cli, ["run", "orders", "--param", "day", "--env", "prod"])
    assert result.exit_code == 2 and "expected NAME=VALUE" in result.stderr


# --- finding the environment ---------------------------------------------------------------------


def test_a_stack_that_is_not_deployed_is_named(endpoint):
    result = CliRunner().invoke(cli, ["status", "--env", "prod", "--region", "eu-west-1"])
    assert result.exit_code == 1
    assert "the stack MysqlXlsxPipeline-prod is not deployed in eu-west-1" in result.stderr
    assert "npx cdk deploy -c env=prod" in result.stderr


def test_an_unknown_environment_names_the_configured_ones():
    result = CliRunner().invoke(cli, ["status", "--env", "staging"])
    assert result.exit_code == 1
    assert "cdk.json: unknown environment 'staging'; configured: dev, prod" in result.stderr


def test_missing_credentials_are_named(endpoint, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1
    assert "no AWS credentials found" in result.stderr and "--profile" in result.stderr


def test_an_unknown_profile_is_named(endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    result = CliRunner().invoke(cli, ["status", "--profile", "nobody"])
    assert result.exit_code == 1 and "nobody" in result.stderr


def test_a_missing_permission_is_named_from_the_access_denied_answer(deployed):
    """IAM's AccessDenied message names the action ("... is not authorized to perform: ACTION on resource"):
    https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html"""
    message = ("User: arn:aws:iam::123456789012:user/ops is not authorized to perform: cloudformation:DescribeStacks "
               "on resource: arn:aws:cloudformation:us-east-1:123456789012:stack/MysqlXlsxPipeline-dev/*")
    result = deployed.cli("status", extra_session_hooks=lambda session: session.events.register(
        "before-send.cloudformation.DescribeStacks", lambda **_: query_error(403, "AccessDenied", message)))
    assert result.exit_code == 1
    assert "permission denied: your credentials lack cloudformation:DescribeStacks" in result.stderr


def test_s3s_bare_403_is_named_by_the_action_the_call_needs(deployed):
    """S3 answers a denied ListObjectsV2 with a bare 403; the call needs s3:ListBucket:
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html"""
    result = deployed.cli("status", extra_session_hooks=lambda session: session.events.register(
        "before-send.s3.ListObjectsV2", lambda **_: s3_error(403, "AccessDenied", "Access Denied")))
    assert result.exit_code == 1
    assert f"listing s3://{deployed.outputs['SourceBucketName']}/exports/orders/: permission denied: " \
           "your credentials lack s3:ListBucket" in result.stderr


# --- replay --------------------------------------------------------------------------------------


def s3_event(key: str, version: str = "v1") -> dict:
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": "source"}, "object": {"key": key.replace(" ", "+"), "versionId": version, "size": 10}}}]}


def on_failure_record(event: dict, error: str) -> dict:
    """Lambda's record of an asynchronous invocation that failed for good:
    https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html"""
    return {"version": "1.0", "timestamp": "2026-11-24T05:00:09.000Z",
            "requestContext": {"requestId": "r-1", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
                               "condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": error, "errorType": "ReplicationError"}}


GOOD = "exports/orders/2026/11/24/orders-1.xlsx"
BAD = "exports/customers/2026/11/24/customers 2.xlsx"


def fill_failed_copies(deployed: Deployed) -> None:
    for key in (GOOD, BAD):
        deployed.sqs.send_message(QueueUrl=deployed.outputs["FailedCopiesQueueUrl"],
                                  MessageBody=json.dumps(on_failure_record(s3_event(key), f"{key}: AccessDenied")))


def replicator_failing_on(deployed: Deployed, key: str | None) -> str:
    fn = deployed.outputs["ReplicatorFunctionName"]

    def answer(event):
        if key and unquote(event["Records"][0]["s3"]["object"]["key"].replace("+", " ")) == key:
            return {"errorMessage": f"1 object(s) not copied: {key}: AccessDenied", "errorType": "ReplicationError"}, \
                "Unhandled"
        return {"copied": 1, "already_copied": 0, "skipped": 0}, None

    deployed.fake.answers[fn] = answer
    return fn


def test_replay_deletes_only_what_was_replayed_and_a_second_run_finishes_the_rest(deployed):
    # Given two failed copies, the replicator still failing on one of them
    fill_failed_copies(deployed)
    fn = replicator_failing_on(deployed, BAD)
    # When replayed
    first = deployed.cli("replay")
    # Then each original event went to the replicator, the one that failed again is still in the queue
    assert first.exit_code == 1
    assert sorted(json.dumps(p) for p in deployed.fake.payloads(fn)) == sorted(
        json.dumps(s3_event(k)) for k in (GOOD, BAD))
    assert [b["requestPayload"] for b in deployed.queue_bodies("FailedCopiesQueueUrl")] == [s3_event(BAD)]
    for text in (GOOD, BAD, f"RetriesExhausted: {GOOD}: AccessDenied", "replayed",
                 f"failed: ReplicationError: 1 object(s) not copied: {BAD}: AccessDenied",
                 "2 message(s): 1 replayed, 1 failed"):
        assert text in first.stdout
    # When the cause is fixed and it runs again, only the one left is replayed, and the queue is empty
    replicator_failing_on(deployed, None)
    second = deployed.cli("replay")
    assert second.exit_code == 0, second.output
    assert deployed.fake.payloads(fn)[2:] == [s3_event(BAD)]
    assert deployed.queue_bodies("FailedCopiesQueueUrl") == []
    assert "1 message(s): 1 replayed" in second.stdout
    # And a third run finds nothing to do
    third = deployed.cli("replay")
    assert third.exit_code == 0 and "nothing waits in the failure queues" in third.stdout
    assert len(deployed.fake.calls) == 3


def test_replay_dry_run_invokes_and_deletes_nothing(deployed):
    fill_failed_copies(deployed)
    result = deployed.cli("replay", "--dry-run")
    assert result.exit_code == 0, result.output
    assert deployed.fake.calls == []
    assert "2 message(s): 2 would replay" in result.stdout and GOOD in result.stdout and BAD in result.stdout
    # the messages are visible again at once, for the real replay
    assert len(deployed.queue_bodies("FailedCopiesQueueUrl")) == 2


def test_replay_re_runs_failed_exports_with_their_event(deployed):
    export_fn = deployed.outputs["ExportFunctionName"]
    event = {"export": "orders", "params": {"day": "2026-11-20"}}
    deployed.sqs.send_message(QueueUrl=deployed.outputs["FailedExportsQueueUrl"],
                              MessageBody=json.dumps(on_failure_record(event, "orders: SQL error 1146")))
    deployed.fake.answers[export_fn] = lambda e: ({"exports": [upload("orders")]}, None)
    result = deployed.cli("replay")
    assert result.exit_code == 0, result.output
    assert deployed.fake.payloads(export_fn) == [{**event, "trigger": "replay"}]  # its ledger item says replay
    assert deployed.queue_bodies("FailedExportsQueueUrl") == []
    assert 'orders {"day": "2026-11-20"}' in result.stdout and "RetriesExhausted: orders: SQL error 1146" \
        in result.stdout


def test_replay_re_runs_a_schedules_dead_letter(deployed):
    """EventBridge's dead letter is the target's input, with the error in message attributes:
    https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-event-delivery.html#eb-rule-dlq"""
    export_fn = deployed.outputs["ExportFunctionName"]
    deployed.sqs.send_message(
        QueueUrl=deployed.outputs["FailedExportsQueueUrl"], MessageBody=json.dumps({"export": "customers"}),
        MessageAttributes={"ERROR_CODE": {"DataType": "String", "StringValue": "SDK_CLIENT_ERROR"},
                           "ERROR_MESSAGE": {"DataType": "String", "StringValue": "Rate exceeded"}})
    deployed.fake.answers[export_fn] = lambda e: ({"exports": [upload("customers")]}, None)
    result = deployed.cli("replay")
    assert result.exit_code == 0, result.output
    assert deployed.fake.payloads(export_fn) == [{"export": "customers", "trigger": "replay"}]
    assert "SDK_CLIENT_ERROR: Rate exceeded" in result.stdout
    assert deployed.queue_bodies("FailedExportsQueueUrl") == []


def test_replay_re_runs_a_scheduler_dead_letter_with_its_schedule(deployed):
    """EventBridge Scheduler's dead letter is the schedule's input with its context attributes filled in, the
    error in message attributes: https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html"""
    export_fn = deployed.outputs["ExportFunctionName"]
    event = {"export": "customers", "params": {},
             "schedule": {"name": "eu-morning", "scheduled_time": "2026-07-01T04:00:00Z"}}
    deployed.sqs.send_message(
        QueueUrl=deployed.outputs["FailedExportsQueueUrl"], MessageBody=json.dumps(event),
        MessageAttributes={name: {"DataType": "String", "StringValue": value} for name, value in {
            "ERROR_CODE": "AWS.Lambda.TooManyRequestsException", "ERROR_MESSAGE": "Rate Exceeded.",
            "EXECUTION_ID": "ad06616e51cdf74a", "EXHAUSTED_RETRY_CONDITION": "MaximumRetryAttempts",
            "IS_PAYLOAD_TRUNCATED": "false", "RETRY_ATTEMPTS": "5", "SCHEDULED_TIME": "2026-07-01T04:00:00Z",
            "SCHEDULE_ARN": "arn:aws:scheduler:us-east-1:123456789012:schedule/MysqlXlsxPipeline-dev/customers.eu-morning",
            "TARGET_ARN": "arn:aws:lambda:us-east-1:123456789012:function:export"}.items()})
    deployed.fake.answers[export_fn] = lambda e: ({"exports": [upload("customers")]}, None)
    result = deployed.cli("replay")
    assert result.exit_code == 0, result.output
    assert deployed.fake.payloads(export_fn) == [{**event, "trigger": "replay"}]  # replayed: the ledger says so
    assert "customers (eu-morning at 2026-07-01T04:00:00Z)" in result.stdout
    assert "MaximumRetryAttempts: AWS.Lambda.TooManyRequestsException: Rate Exceeded." in result.stdout
    assert deployed.queue_bodies("FailedExportsQueueUrl") == []


def test_replay_leaves_a_scheduler_dead_letter_whose_payload_was_cut(deployed):
    """Scheduler marks a dead letter whose body it cut with IS_PAYLOAD_TRUNCATED
    (https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html): even if what is left
    parses, it is not the schedule's input, so it is not replayed but left for a person to read."""
    export_fn = deployed.outputs["ExportFunctionName"]
    body = json.dumps({"export": "customers"})
    deployed.sqs.send_message(
        QueueUrl=deployed.outputs["FailedExportsQueueUrl"], MessageBody=body,
        MessageAttributes={name: {"DataType": "String", "StringValue": value} for name, value in {
            "ERROR_CODE": "AWS.Lambda.TooManyRequestsException", "IS_PAYLOAD_TRUNCATED": "true"}.items()})
    result = deployed.cli("replay")
    assert result.exit_code == 1
    assert "holds no event to replay (its payload was truncated" in result.stdout and "1 left" in result.stdout
    assert deployed.fake.payloads(export_fn) == []
    assert deployed.queue_bodies("FailedExportsQueueUrl") == [{"export": "customers"}]


def test_replay_works_without_the_failed_exports_queue(endpoint, dev):
    deployed = deploy(dev, export_queue=False)
    fill_failed_copies(deployed)
    fn = replicator_failing_on(deployed, None)
    result = deployed.cli("replay")
    assert result.exit_code == 0, result.output
    assert len(deployed.fake.payloads(fn)) == 2


def test_replay_leaves_a_message_that_is_no_invocation_record(deployed):
    deployed.sqs.send_message(QueueUrl=deployed.outputs["FailedCopiesQueueUrl"], MessageBody="hello")
    result = deployed.cli("replay")
    assert result.exit_code == 1
    assert "holds no event to replay" in result.stdout and "1 left" in result.stdout
    assert deployed.fake.calls == []
    left = deployed.sqs.receive_message(QueueUrl=deployed.outputs["FailedCopiesQueueUrl"], VisibilityTimeout=0)
    assert [m["Body"] for m in left["Messages"]] == ["hello"]


# --- status --------------------------------------------------------------------------------------


def put_workbook(deployed: Deployed, key: str, rows: int, *, copy: bool) -> str:
    src, dst = deployed.outputs["SourceBucketName"], deployed.outputs["DestinationBucketName"]
    version = deployed.s3.put_object(Bucket=src, Key=key, Body=b"xlsx", Metadata={"rows": str(rows)})["VersionId"]
    if copy:
        deployed.s3.put_object(Bucket=dst, Key="incoming/" + key, Body=b"xlsx",
                               Metadata={"rows": str(rows), "source-version-id": version})
    return version


def deliver_last_runs(deployed: Deployed, now: dt.datetime) -> None:
    """A delivered workbook for the last run of every cron schedule of dev, and that run in the ledger as the
    export and the replicator write it (the schedule and scheduled time, then the delivery a minute later)."""
    from lambdas import contract, cron
    from lambdas.ledger import Ledger, iso

    ledger = Ledger(boto3.client("dynamodb"), deployed.outputs["RunLedgerTableName"], function_name="f",
                    history_days=400)
    for export in _DEV.exports:
        for entry in export.schedules:
            if entry.expression.startswith("cron("):
                last = cron.last_fire(entry.expression, entry.time_zone, now)
                # an older folder than the other tests' workbooks, so it is not the export's latest
                key = f"{_DEV.key_prefix}{export.name}/2026/11/01/{export.name}-{entry.name}.xlsx"
                put_workbook(deployed, key, 3, copy=True)
                started = last
                run = contract.run_id(iso(started), entry.name)
                ledger.record_run(export.name, run, {
                    contract.LEDGER_TRIGGER: f"schedule: {entry.name}", contract.LEDGER_OUTCOME: "uploaded",
                    contract.LEDGER_KEY: key, contract.LEDGER_STARTED: iso(started),
                    contract.LEDGER_SCHEDULE: entry.name,
                    contract.LEDGER_SCHEDULED_TIME: last.strftime(contract.SCHEDULED_TIME_FORMAT)}, started)
                ledger.record_delivery(export.name, run, {
                    "bucket": deployed.outputs["DestinationBucketName"], "key": "incoming/" + key,
                    "at": iso(min(started + dt.timedelta(minutes=1), now))})


def test_status_all_well(deployed):
    deliver_last_runs(deployed, dt.datetime.now(dt.timezone.utc))
    put_workbook(deployed, "exports/orders/2026/11/23/orders-1.xlsx", 20, copy=True)
    put_workbook(deployed, "exports/orders/2026/11/24/orders-2.xlsx", 25, copy=True)
    put_workbook(deployed, "exports/customers/2026/11/24/customers-1.xlsx", 10, copy=True)
    result = deployed.cli("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    orders = next(line for line in lines if "exports/orders/" in line)
    assert "orders-2.xlsx" in orders and " 25 " in orders and "delivered" in orders
    assert any("customers-1.xlsx" in line and "delivered" in line for line in lines)
    assert "failed copies" in result.stdout and "failed exports" in result.stdout
    for export in _DEV.exports:  # each schedule's last run: its record and its copy
        for entry in export.schedules:
            line = next(line for line in lines if f"  {export.name}.{entry.name}: " in line)
            assert "delivered" in line or not entry.expression.startswith("cron(")
    for name in deployed.outputs["AlarmNames"].split(","):
        assert any(name in line and "OK" in line for line in lines)
    assert "all well" in result.stdout


def test_status_names_what_needs_attention(deployed):
    # Given every schedule's last run delivered (so the test does not depend on the time of day) and
    deliver_last_runs(deployed, dt.datetime.now(dt.timezone.utc))
    # a workbook not copied, an older copy of another, a failed copy waiting and an alarm firing
    put_workbook(deployed, "exports/orders/2026/11/24/orders-1.xlsx", 25, copy=False)
    key = "exports/customers/2026/11/24/customers-1.xlsx"
    put_workbook(deployed, key, 10, copy=True)
    put_workbook(deployed, key, 11, copy=False)  # a newer version the replicator has not copied
    deployed.sqs.send_message(QueueUrl=deployed.outputs["FailedCopiesQueueUrl"], MessageBody="{}")
    alarm = deployed.outputs["AlarmNames"].split(",")[0]
    deployed.cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="Threshold Crossed: 1 >= 1")
    # When the status is read with no grace for copies in flight
    result = deployed.cli("status", "--grace-minutes", "0")
    # Then it exits 1 and names each
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any("orders-1.xlsx" in line and "missing" in line for line in lines)
    assert any("customers-1.xlsx" in line and "other version" in line for line in lines)
    assert any("failed copies" in line and "1 message(s)" in line for line in lines)
    assert any(alarm in line and "ALARM" in line and "Threshold Crossed" in line for line in lines)
    assert f"needs attention: orders, customers, failed copies, {alarm}" in result.stdout


def test_status_shows_each_schedules_next_run_on_its_clock_and_a_late_last_run(deployed):
    """Next runs follow EventBridge Scheduler's cron rules in each schedule's zone
    (https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html)."""
    from lambdas import cron

    now = dt.datetime.now(dt.timezone.utc)
    entries = [(e, s) for e in _DEV.exports for s in e.schedules]
    # Given no run of any schedule recorded
    result = deployed.cli("status")
    lines = result.stdout.splitlines()
    for export, entry in entries:
        line = next(line for line in lines if f"{export.name}.{entry.name}" in line)
        (next_run,) = cron.next_fires(entry.expression, entry.time_zone, now)
        local = next_run.astimezone(cron.ZoneInfo(entry.time_zone))
        # Then each shows its next run in its own zone (and UTC)
        assert f"{local:%Y-%m-%d %H:%M}" in line and f"{next_run:%H:%M} UTC" in line
        # and a schedule with a deadline whose last run left no record is late once its deadline has passed
        last = cron.last_fire(entry.expression, entry.time_zone, now)
        due = entry.deliver_within_minutes and last + dt.timedelta(minutes=entry.deliver_within_minutes)
        if due:
            assert f"last run {last:%Y-%m-%d %H:%M} UTC: " + ("no run recorded" if now >= due else "not due yet") in line
    late = [f"{e.name}.{s.name}" for e, s in entries if s.deliver_within_minutes and now >= cron.last_fire(
        s.expression, s.time_zone, now) + dt.timedelta(minutes=s.deliver_within_minutes)]
    assert result.exit_code == (1 if late else 0)
    if late:
        assert all(name in result.stdout.split("needs attention:")[1] for name in late)


def test_status_judges_each_schedules_last_run_from_the_ledger(deployed):
    """On a fixed clock: a deadline schedule's last run delivered after its deadline shows `delivered late` (it was
    announced; nothing to do now), a schedule without a deadline `delivered`; the next run, failed, shows `failed`
    and needs attention. No copy is in a bucket: status reads the delivery the replicator recorded, as the check."""
    from lambdas import contract, cron
    from lambdas.ledger import Ledger, iso
    from pipeline_ops import status as st
    from pipeline_ops.aws import Deployment

    ledger = Ledger(boto3.client("dynamodb"), deployed.outputs["RunLedgerTableName"], function_name="f",
                    history_days=400)
    deployment = Deployment(_DEV, boto3.Session(), deployed.outputs)
    crons = [(e, s) for e in _DEV.exports for s in e.schedules if s.expression.startswith("cron(")]

    def record(export, entry, last: dt.datetime, delivered: dt.datetime | None) -> None:
        run = contract.run_id(iso(last + dt.timedelta(seconds=2)), entry.name)
        fields = {contract.LEDGER_SCHEDULE: entry.name, contract.LEDGER_TRIGGER: f"schedule: {entry.name}",
                  contract.LEDGER_SCHEDULED_TIME: last.strftime(contract.SCHEDULED_TIME_FORMAT)}
        if delivered is None:
            ledger.record_run(export.name, run, {**fields, contract.LEDGER_OUTCOME: "failed",
                                                 contract.LEDGER_ERROR: "the database did not answer"}, last)
        else:
            ledger.record_run(export.name, run, {**fields, contract.LEDGER_OUTCOME: "uploaded", "key": "k.xlsx"}, last)
            ledger.record_delivery(export.name, run, {"bucket": "partner", "key": "in/k.xlsx", "at": iso(delivered)})

    # Given each schedule's last run delivered 5 minutes after its deadline (or its time, without one)
    now = dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.timezone.utc)
    for export, entry in crons:
        last = cron.last_fire(entry.expression, entry.time_zone, now)
        record(export, entry, last, last + dt.timedelta(minutes=(entry.deliver_within_minutes or 0) + 5))
    found = {s.name: s.last for s in st.schedules(deployment, now=now)}
    for export, entry in crons:
        last = found[entry.scheduler_name(export.name)]
        expected = "delivered late" if entry.deliver_within_minutes else "delivered"
        assert (last.state, last.attention) == (expected, False), last
        assert "copied to s3://partner/in/k.xlsx at" in last.detail
    # Given the next run of each deadline schedule failed, seen once its deadline has passed
    for export, entry in crons:
        if entry.deliver_within_minutes:
            (fire,) = cron.next_fires(entry.expression, entry.time_zone, now)
            record(export, entry, fire, None)
            later = fire + dt.timedelta(minutes=entry.deliver_within_minutes + 1)
            (status,) = [s for s in st.schedules(deployment, now=later) if s.name == entry.scheduler_name(export.name)]
            assert (status.last.state, status.last.attention) == ("failed", True)
            assert "the database did not answer" in status.last.detail


def test_status_gives_a_new_workbook_time_to_arrive(deployed):
    deliver_last_runs(deployed, dt.datetime.now(dt.timezone.utc))  # whatever the time of day
    put_workbook(deployed, "exports/orders/2026/11/24/orders-1.xlsx", 25, copy=False)
    result = deployed.cli("status")
    assert result.exit_code == 0, result.output
    assert any("orders-1.xlsx" in line and "not yet" in line for line in result.stdout.splitlines())


# --- backfill ------------------------------------------------------------------------------------


def export_failing_on(deployed: Deployed, day: str) -> str:
    fn = deployed.outputs["ExportFunctionName"]

    def answer(event):
        if event["params"][DAY] == day:
            return {"errorMessage": f"orders: no partition for {day}", "errorType": "ExportError"}, "Unhandled"
        return {"exports": [upload("orders", key=f"exports/orders/{event['params'][DAY]}.xlsx")]}, None

    deployed.fake.answers[fn] = answer
    return fn


def test_backfill_runs_one_day_after_the_other_and_stops_at_the_first_failure(deployed):
    fn = export_failing_on(deployed, "2026-11-02")
    result = deployed.cli("backfill", DATED.name, "--param", f"{DAY}=2026-10-31..2026-11-03")
    assert result.exit_code == 1
    assert deployed.fake.payloads(fn) == [{"export": DATED.name, "params": {DAY: d}, "trigger": "backfill"}
                                          for d in ("2026-10-31", "2026-11-01", "2026-11-02")]
    lines = result.stdout.splitlines()
    assert any("2026-11-01" in line and "uploaded" in line and "exports/orders/2026-11-01.xlsx" in line
               for line in lines)
    assert any("2026-11-02" in line and "failed" in line and "no partition for 2026-11-02" in line for line in lines)
    assert any("2026-11-03" in line and "not run" in line for line in lines)
    assert "2 succeeded, 1 failed, 1 not run of 4 day(s)" in result.stdout


def test_backfill_continue_on_error_runs_every_day(deployed):
    fn = export_failing_on(deployed, "2026-11-02")
    result = deployed.cli("backfill", DATED.name, "--param", f"{DAY}=2026-11-01..2026-11-03", "--continue-on-error")
    assert result.exit_code == 1
    assert [p["params"][DAY] for p in deployed.fake.payloads(fn)] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert "2 succeeded, 1 failed, 0 not run of 3 day(s)" in result.stdout


def test_a_throttled_day_is_one_failure_and_the_other_days_still_run(deployed):
    # Given a function that answers one day with Lambda's own throttling error (HTTP 429), as it does when a
    # reserved concurrency of 1 is busy (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html)
    fn = export_failing_on(deployed, "never")

    def throttle_one_day(session):
        def answer(request, **_):
            if json.loads(request.body)["params"][DAY] == "2026-11-02":
                return rest_json_error(429, "TooManyRequestsException", "Rate Exceeded.")
        session.events.register_first("before-send.lambda.Invoke", answer)

    # When the backfill goes on after errors
    result = deployed.cli("backfill", DATED.name, "--param", f"{DAY}=2026-11-01..2026-11-03", "--continue-on-error",
                          extra_session_hooks=throttle_one_day)
    # Then that day is a failure with the reason, the table is printed, and every day was tried
    assert result.exit_code == 1
    assert [p["params"][DAY] for p in deployed.fake.payloads(fn)][-1] == "2026-11-03"
    assert any("2026-11-02" in line and "failed" in line and "TooManyRequests" in line
               for line in result.stdout.splitlines())
    assert "2 succeeded, 1 failed, 0 not run of 3 day(s)" in result.stdout


def test_keys_with_brackets_are_printed_as_they_are(deployed):
    fn = deployed.outputs["ExportFunctionName"]
    deployed.fake.answers[fn] = lambda event: ({"exports": [upload("orders", key="exports/orders/Q3 [draft] [/x].xlsx")]},
                                               None)
    result = deployed.cli("run", DATED.name)
    assert result.exit_code == 0 and "exports/orders/Q3 [draft] [/x].xlsx" in result.stdout


@pytest.mark.parametrize("param, message", [
    ("day=2026-11-03..2026-11-01", "TO is before FROM"),
    ("day=yesterday..today", "must be dates like 2026-11-01"),
    ("day=2026-11-01", "exactly one NAME=FROM..TO range"),
])
def test_backfill_refuses_a_bad_range_before_running(param, message):
    # a usage error, before any AWS call: no stack needed
    result = CliRunner().invoke(cli, ["backfill", "orders", "--param", param, "--env", "prod"])
    assert result.exit_code == 2 and message in result.stderr


# --- history and verify: the run ledger ---------------------------------------------------------------


def _ledger_run(deployed: Deployed, export: str, started: str, *, outcome: str = "uploaded", body: bytes | None = None,
                deliver: bool = True, trigger: str = "manual", params: dict | None = None) -> dict:
    """A run as the functions record it (their own ledger writer), with its workbook and copy in S3."""
    import datetime as dt
    import hashlib

    from lambdas import contract as shared
    from lambdas.ledger import Ledger

    ledger = Ledger(boto3.client("dynamodb"), deployed.outputs["RunLedgerTableName"], function_name="f",
                    history_days=400)
    run = shared.run_id(started, "abc")
    fields = {"trigger": trigger, "params": params or {}, "params_requested": params or {}, "started": started,
              "finished": started, "outcome": outcome, "seconds": 1.5}
    key = f"exports/{export}/{started[:10].replace('-', '/')}/{export}-x.xlsx"
    if outcome == "uploaded":
        body = body or b"PK\x03\x04 " + started.encode()
        version = deployed.s3.put_object(Bucket=deployed.outputs["SourceBucketName"], Key=key, Body=body, Metadata={
            "export": export, "run-id": run, "sha256": hashlib.sha256(body).hexdigest()})["VersionId"]
        fields.update(rows=3, rows_per_sheet={"Orders": 3}, bytes=len(body), key=key, version_id=version,
                      sha256=hashlib.sha256(body).hexdigest(), bucket=deployed.outputs["SourceBucketName"])
    else:
        fields["error"] = "export 'orders': SQL error 1146: Table 'sales.orders' doesn't exist"
    assert ledger.record_run(export, run, fields, dt.datetime.fromisoformat(started.replace("Z", "+00:00")))
    if outcome == "uploaded" and deliver:
        copy = deployed.s3.put_object(Bucket=deployed.outputs["DestinationBucketName"], Key=f"incoming/{key}", Body=body)
        assert ledger.record_delivery(export, run, {"bucket": deployed.outputs["DestinationBucketName"],
                                                    "key": f"incoming/{key}", "version_id": copy["VersionId"],
                                                    "at": started, "sha256": fields["sha256"], "verified": True}) == "recorded"
    return {**fields, "run_id": run}


def test_history_lists_runs_newest_first_and_json_is_one_object_per_line(deployed):
    export = deployed_export(deployed)
    first = _ledger_run(deployed, export, "2026-11-19T05:00:00.000Z")
    failed = _ledger_run(deployed, export, "2026-11-20T05:00:00.000Z", outcome="failed", trigger="schedule: nightly")
    third = _ledger_run(deployed, export, "2026-11-21T05:00:00.000Z", trigger="backfill", params={"day": "2026-11-20"})
    result = deployed.cli("history", export, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["run_id"] for line in lines] == [third["run_id"], failed["run_id"], first["run_id"]]
    assert lines[0]["trigger"] == "backfill" and lines[0]["params"] == {"day": "2026-11-20"}
    assert lines[0]["delivery"]["checksum_matched"] is True and lines[0]["sha256"] == third["sha256"]
    assert lines[1]["outcome"] == "failed" and "doesn't exist" in lines[1]["error"] and lines[1]["delivery"] is None
    # --since/--until are UTC days, both included
    result = deployed.cli("history", export, "--json", "--since", "2026-11-20", "--until", "2026-11-20")
    assert [json.loads(line)["run_id"] for line in result.output.splitlines()] == [failed["run_id"]]
    text = deployed.cli("history", export)
    assert text.exit_code == 0 and "3 run(s)" in text.output and "matched" in text.output
    assert "schedule: nightly" in text.output
    bad = deployed.cli("history", export, "--since", "20 Nov")
    assert bad.exit_code == 2 and "expected a date YYYY-MM-DD" in bad.output


def deployed_export(deployed) -> str:
    return load_config("dev").exports[0].name


def test_verify_checks_the_workbook_and_its_copy_against_the_ledger(deployed):
    export = deployed_export(deployed)
    run = _ledger_run(deployed, export, "2026-11-21T05:00:00.000Z")
    result = deployed.cli("verify", run["key"])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok  ") == 2 and run["sha256"] in result.output
    # When the partner's copy is changed after the copy
    deployed.s3.put_object(Bucket=deployed.outputs["DestinationBucketName"], Key=f"incoming/{run['key']}",
                           Body=b"PK\x03\x04 something else")
    result = deployed.cli("verify", run["key"])
    assert result.exit_code == 1 and "MISMATCH" in result.output and "the copy changed" in result.output


def test_status_shows_the_last_run_from_the_ledger(deployed):
    export = deployed_export(deployed)
    _ledger_run(deployed, export, "2026-11-21T05:00:00.000Z", outcome="failed", trigger="schedule: nightly")
    result = deployed.cli("status", "--grace-minutes", "0")
    assert "last run (ledger)" in result.output
    assert "failed 2026-11-21T05:00:00.000Z (schedule: nightly)" in result.output
