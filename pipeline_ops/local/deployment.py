"""One local deployment of the template: moto for AWS, your MySQL, both handlers run as Lambda runs them."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping
from urllib.parse import quote_plus, unquote_plus

from lambdas.bucket_replicator.replicate import META_SOURCE_VERSION
from lambdas.bucket_replicator.settings import ENV_DESTINATION_PREFIX
from lambdas.contract import EVENT_EXPORT, EVENT_PARAMS, destination_key
from pipeline_ops import ROOT
from pipeline_ops.checks import CheckFailed, check
from pipeline_ops.iam import CallRecorder, denied, resolve, role_statements
from pipeline_ops.local.network import TcpProxy
from pipeline_ops.local.template import Function, Names, find_function, notification_rules

#: The day the parameterized exports are run for by a backfill's event, unless the run is given another.
SAMPLE_DAY = "2026-11-02"
SOURCE_NAME = "local-source-bucket"
LEDGER_NAME = "local-run-ledger"
DESTINATION_NAME = "local-destination-bucket"


@dataclass
class Context:
    """What Lambda passes a handler: here only the time left before the template's timeout."""

    timeout_seconds: float
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000)


@dataclass
class Delivery:
    key: str
    attempts: int
    outcome: str  # "copied" | "already-copied" | "failed: ..."


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class LocalPipeline:
    """One local deployment of the template: buckets, secret and both handlers, warm for several runs."""

    def __init__(self, template: dict, mysql: dict, *, say: Callable[[str], None] = print):
        self.template = template
        self.mysql = mysql
        self.say = say
        self.export_fn = find_function(template, "lambdas.export_to_xlsx.handler.handler")
        self.replicator_fn = find_function(template, "lambdas.bucket_replicator.handler.handler")
        self.failed_events: list[dict] = []  # what the on-failure destination received
        self._created: list[tuple[str, str]] = []
        self.export_calls = CallRecorder()
        self.replicator_calls = CallRecorder()
        self._stack = contextlib.ExitStack()

    # -- set-up --------------------------------------------------------------------------

    def __enter__(self) -> "LocalPipeline":
        try:
            return self._set_up()
        except BaseException:  # a half-built deployment is taken down: servers, patched settings, caches
            self._stack.close()
            raise

    def _set_up(self) -> "LocalPipeline":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        started = time.monotonic()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._stack.callback(server.stop)
        host, port = server.get_host_and_port()
        # moto keeps its state per process: start from empty buckets and secrets, and leave nothing behind
        import urllib.request

        def reset() -> None:
            urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))

        reset()
        self._stack.callback(reset)
        self.aws_env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "local",
                        "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        import boto3

        with environment(self.aws_env):
            self.s3 = boto3.client("s3")
            self.secrets = boto3.client("secretsmanager")

        export_env = self.export_fn.raw_environment
        replicator_env = self.replicator_fn.raw_environment
        self.source_id = export_env["SOURCE_BUCKET"]["Ref"]
        dest = replicator_env["DESTINATION_BUCKET"]
        self.names = Names()
        created = {self.source_id: SOURCE_NAME}
        if isinstance(dest, dict):  # a bucket of the stack's own; an imported one is named in the template
            created[dest["Ref"]] = DESTINATION_NAME
        for logical_id, local in created.items():
            self.names[logical_id] = local
            self.names[f"{logical_id}.Arn"] = f"arn:aws:s3:::{local}"
        self.source = SOURCE_NAME
        self.destination = DESTINATION_NAME if isinstance(dest, dict) else dest
        for name in (self.source, self.destination):
            self.s3.create_bucket(Bucket=name)
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        # The run ledger, keyed as the template's table (names from lambdas/contract.py).
        from lambdas import contract as shared

        ledger_ref = export_env.get("LEDGER_TABLE")
        self.ledger_table = LEDGER_NAME
        if isinstance(ledger_ref, dict):
            self.names[ledger_ref["Ref"]] = LEDGER_NAME
        with environment(self.aws_env):
            self.dynamodb = boto3.client("dynamodb")
        self.dynamodb.create_table(
            TableName=LEDGER_NAME, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": shared.LEDGER_EXPORT, "KeyType": "HASH"},
                       {"AttributeName": shared.LEDGER_RUN_ID, "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": shared.LEDGER_EXPORT, "AttributeType": "S"},
                                  {"AttributeName": shared.LEDGER_RUN_ID, "AttributeType": "S"}])

        self.proxy = TcpProxy((self.mysql["host"], self.mysql["port"]))
        self._stack.callback(self.proxy.stop)
        secret = self.secrets.create_secret(Name="local/export-db", SecretString=json.dumps({
            "engine": "mysql", "host": self.mysql["host"], "port": self.mysql["port"],
            "username": self.mysql["user"], "password": self.mysql["password"], "dbname": self.mysql["database"]}))
        self.secret_arn = secret["ARN"]
        raw_secret = export_env.get("DB_SECRET_ARN")
        if isinstance(raw_secret, dict):
            self.names[".".join(raw_secret["Fn::GetAtt"])] = self.secret_arn

        self.export_env = self._resolve_env(self.export_fn, {
            "DB_HOST": "127.0.0.1", "DB_PORT": str(self.proxy.port), "DB_NAME": self.mysql["database"],
            "DB_TLS": "off", "DB_SECRET_ARN": self.secret_arn})
        # A local MariaDB cannot check an RDS IAM token (RDS asks IAM): with auth 'iam' the export logs in with
        # the local secret instead, and the role's rds-db:connect is checked by tests/test_stack.py.
        self.iam_stand_in = self.export_env.pop("DB_USER", None) is not None
        self.export_env.update(DB_AUTH="secret", DB_SECRET_ARN=self.secret_arn)
        self.replicator_env = self._resolve_env(self.replicator_fn, {})

        import lambdas.export_to_xlsx.handler as export_handler
        import lambdas.export_to_xlsx.settings as export_settings
        import lambdas.bucket_replicator.handler as replicator_handler

        # The .sql files sit at the same paths (sql/...) in the project as in the function's package.
        saved_dir, export_settings.PACKAGE_DIR = export_settings.PACKAGE_DIR, ROOT
        self._stack.callback(setattr, export_settings, "PACKAGE_DIR", saved_dir)

        self.export_handler, self.replicator_handler = export_handler, replicator_handler
        for module, env, recorder in ((export_handler, self.export_env, self.export_calls),
                                      (replicator_handler, self.replicator_env, self.replicator_calls)):
            module.runtime.cache_clear()
            self._stack.callback(module.runtime.cache_clear)
            with environment({**self.aws_env, **env}):
                rt = module.runtime()  # the cold start: settings read and checked once, clients created
            recorder.attach(rt.s3)
            if hasattr(rt, "secrets"):
                recorder.attach(rt.secrets._client)
            if hasattr(rt, "events"):
                recorder.attach(rt.events)
        #: The definitions as the function decoded them from the template's EXPORTS at its cold start.
        self.exports: Mapping = export_handler.runtime().settings.exports
        self._subscribe_to_delivered_events()
        self.say(f"local deployment of {self.template.get('Description', 'the template')} ready in "
                 f"{time.monotonic() - started:.2f} s: s3://{self.source} -> s3://{self.destination}, "
                 f"database via 127.0.0.1:{self.proxy.port} -> {self.mysql['host']}:{self.mysql['port']}")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _subscribe_to_delivered_events(self) -> None:
        """A rule on the default bus, as the README shows, sending "Workbook Delivered" events to a queue."""
        import boto3

        from lambdas.bucket_replicator.settings import DELIVERED_DETAIL_TYPE, DELIVERED_SOURCE

        with environment(self.aws_env):
            self.events = boto3.client("events")
            self.sqs = boto3.client("sqs")
        self.delivered_queue = self.sqs.create_queue(QueueName="local-workbook-delivered")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.delivered_queue,
                                            AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        pattern = {"source": [DELIVERED_SOURCE], "detail-type": [DELIVERED_DETAIL_TYPE]}
        self.events.put_rule(Name="workbook-delivered", EventPattern=json.dumps(pattern))
        self.events.put_targets(Rule="workbook-delivered", Targets=[{"Id": "local-queue", "Arn": arn}])

    def delivered_events(self) -> list[dict]:
        """The "Workbook Delivered" events the rule routed since the last call."""
        events = []
        while True:
            answer = self.sqs.receive_message(QueueUrl=self.delivered_queue, MaxNumberOfMessages=10)
            messages = answer.get("Messages", [])
            if not messages:
                return events
            for m in messages:
                events.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.delivered_queue, ReceiptHandle=m["ReceiptHandle"])

    def check_delivered_event(self, result: dict, copy_: dict, events: list[dict]) -> dict:
        """Exactly one delivered event names this copy, with the export's name, parameters and rows."""
        mine = [e for e in events if e["detail"]["destination"]["key"] == copy_["key"]]
        check(len(mine) == 1, f"{len(mine)} delivered events for {copy_['key']}")
        detail = mine[0]["detail"]
        version = self.s3.head_object(Bucket=self.destination, Key=copy_["key"]).get("VersionId")
        check(detail["destination"] == {"bucket": self.destination, "key": copy_["key"], "version_id": version},
              f"the delivered event names {detail['destination']} as the copy")
        check(detail["source"]["bucket"] == self.source and detail["source"]["key"] == result["key"],
              f"the delivered event names {detail['source']} as the source")
        check(detail["export"] == result["export"] and detail["rows"] == result["rows"]
              and detail["parameters"] == result.get("params", {}),
              f"the delivered event's export, rows or parameters differ from the run's: {detail}")
        return mine[0]

    def ledger_items(self) -> list[dict]:
        """Every item of the local run ledger, as the functions wrote it."""
        from lambdas.ledger import item_of

        return [item_of(i) for i in self.dynamodb.scan(TableName=self.ledger_table)["Items"]]

    def history(self, export: str) -> list[dict]:
        """``pipeline-ops history EXPORT --json``'s lines, read from the local ledger by the command's own code."""
        from pipeline_ops.cli import _history_line
        from pipeline_ops.history import runs

        return [_history_line(i) for i in runs(self.dynamodb, self.ledger_table, export)]

    def _resolve_env(self, fn: Function, database: dict[str, str]) -> dict[str, str]:
        """The function's variables from the template; database settings replaced by the local ones."""
        env = {}
        for name, value in fn.raw_environment.items():
            env[name] = database[name] if name in database else resolve(value, self.names)
        return env

    # -- steps ---------------------------------------------------------------------------

    def run_export(self, event: dict) -> dict:
        started = time.monotonic()
        before = len(self.export_calls.calls)
        try:
            result = self.export_handler.handler(event, Context(self.export_fn.properties.get("Timeout", 3)))
        finally:
            self._created = self._objects_created(self.export_calls.calls[before:])
        for r in result["exports"]:
            params = f" with {r['params']}" if r.get("params") else ""
            if r["outcome"] != "uploaded":
                self.say(f"export {r['export']}{params}: {r['outcome']}")
                continue
            self.say(f"export {r['export']}{params}: {r['rows']} rows, {r['sheets']} sheet(s), {r['bytes']} bytes "
                     f"-> s3://{r['bucket']}/{r['key']} ({r['seconds']:.2f} s)")
        self.say(f"export step took {time.monotonic() - started:.2f} s")
        return result

    def _objects_created(self, calls: list[tuple[str, dict]]) -> list[tuple[str, str]]:
        """(event name, key) of each object a run created, from the calls that create objects."""
        names = {"s3.PutObject": "ObjectCreated:Put",
                 "s3.CompleteMultipartUpload": "ObjectCreated:CompleteMultipartUpload"}
        return [(names[op], params["Key"]) for op, params in calls if op in names and params["Bucket"] == self.source]

    def created_by_last_export(self) -> list[tuple[str, str]]:
        return list(self._created)

    def drop_object(self, key: str, body: bytes = b"not a workbook") -> tuple[str, str]:
        """Someone puts an object into the source bucket by hand."""
        self.s3.put_object(Bucket=self.source, Key=key, Body=body)
        return ("ObjectCreated:Put", key)

    def notifications(self, created: list[tuple[str, str]]) -> list[dict]:
        """The events S3 would send for ``created``, per the template's notification configuration."""
        rules = notification_rules(self.template, self.source_id)
        events = []
        for event_name, key in created:
            matching = [r for r in rules if r.matches(event_name, key)]
            if not matching:
                self.say(f"no notification for s3://{self.source}/{key} ({event_name}): no rule matches")
                continue
            for rule in matching:
                if rule.function_logical_id != self.replicator_fn.logical_id:
                    raise CheckFailed(f"the notification for {key} targets {rule.function_logical_id}")
                try:
                    head = self.s3.head_object(Bucket=self.source, Key=key)
                except self.s3.exceptions.ClientError:
                    self.say(f"s3://{self.source}/{key} was never created: no notification")
                    continue
                events.append({"Records": [{
                    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                    "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "eventName": event_name,
                    "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": self.source, "arn": f"arn:aws:s3:::{self.source}"},
                           "object": {"key": quote_plus(key, safe="/"), "size": head["ContentLength"],
                                      "eTag": head["ETag"].strip('"'), "versionId": head.get("VersionId"),
                                      "sequencer": f"{time.time_ns():X}"}},
                }]})
                self.say(f"notification: s3:{event_name} {key} matches {rule.events} prefix={rule.prefix!r} "
                         f"suffix={rule.suffix!r} -> replicator")
        return events

    def deliver(self, event: dict) -> Delivery:
        """Invoke the replicator as Lambda does for async events: retries, then the on-failure destination."""
        retries = self.replicator_fn.invoke_config.get("MaximumRetryAttempts", 2)
        key = unquote_key(event)
        started = time.monotonic()
        for attempt in range(1, retries + 2):
            try:
                result = self.replicator_handler.handler(copy.deepcopy(event), Context(
                    self.replicator_fn.properties.get("Timeout", 3)))
            except self.replicator_handler.ReplicationError as exc:
                self.say(f"replicator attempt {attempt} for {key} failed: {exc}")
                last = str(exc)
                continue
            outcome = "copied" if result["copied"] else "already-copied" if result["already_copied"] else "skipped"
            self.say(f"replicator: {key} {outcome} to s3://{self.destination}/"
                     f"{destination_key(self.destination_prefix, key)} "
                     f"(attempt {attempt}, {time.monotonic() - started:.2f} s)")
            return Delivery(key, attempt, outcome)
        destination = self.replicator_fn.invoke_config.get("DestinationConfig", {}).get("OnFailure", {})
        self.failed_events.append({"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": event,
                                   "destination": destination})
        self.say(f"replicator gave up on {key} after {retries + 1} attempts: kept in the on-failure queue")
        return Delivery(key, retries + 1, f"failed: {last}")

    # -- checks --------------------------------------------------------------------------

    def listing(self) -> dict[str, list[str]]:
        out = {}
        for bucket in (self.source, self.destination):
            out[bucket] = sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", []))
        return out

    @property
    def destination_prefix(self) -> str:
        return self.replicator_env.get(ENV_DESTINATION_PREFIX, "")

    def save_objects(self, out: Path) -> list[Path]:
        """Every object of both buckets written under ``out/<bucket>/<key>``; returns the files written."""
        written = []
        for bucket, keys in self.listing().items():
            for key in keys:
                path = out.joinpath(bucket, *[part for part in key.split("/") if part not in ("", ".", "..")])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                written.append(path)
        return written

    def uploads_in_progress(self) -> list[str]:
        return [u["Key"] for b in (self.source, self.destination)
                for u in self.s3.list_multipart_uploads(Bucket=b).get("Uploads", [])]

    def check_replicated(self, key: str) -> dict:
        """The destination copy is byte for byte the source, with its metadata and the source recorded."""
        dest_key = destination_key(self.destination_prefix, key)
        src = self.s3.get_object(Bucket=self.source, Key=key)
        dst = self.s3.get_object(Bucket=self.destination, Key=dest_key)
        body = src["Body"].read()
        check(dst["Body"].read() == body, f"{dest_key} differs from {key}")
        check(dst["ContentType"] == src["ContentType"], f"{dest_key}: content type {dst['ContentType']!r}")
        for name, value in src["Metadata"].items():
            check(dst["Metadata"].get(name) == value, f"{dest_key}: metadata {name} not carried over")
        check(dst["Metadata"].get(META_SOURCE_VERSION) == src["VersionId"], f"{dest_key}: source version not recorded")
        return {"key": dest_key, "bytes": len(body), "metadata": dst["Metadata"], "body": body}

    def backfill_events(self, day: str = SAMPLE_DAY) -> list[dict]:
        """One event per export with a date parameter, giving it ``day`` (as the operator's backfill does)."""
        events = []
        for export in self.exports.values():
            dates = [p.name for p in export.parameters if p.type == "date"]
            if dates:
                events.append({EVENT_EXPORT: export.name, EVENT_PARAMS: {dates[0]: day}})
        return events

    def check_rows(self, result: dict, body: bytes, given: dict | None = None) -> int:
        """Each sheet of the workbook holds the rows its SQL returns now, with the run's parameters bound: the
        values the result records, and for sensitive ones (recorded as digests) the values the event ``given``."""
        import datetime as dt
        import io

        import openpyxl
        import pymysql

        from pipeline_ops.xlsx_expect import assert_rows_match, query
        from lambdas.export_to_xlsx import params as export_params

        export = self.exports[result["export"]]
        secret = {p.name for p in export.parameters if p.sensitive}
        run_values = {k: v for k, v in result.get("params", {}).items() if k not in secret}
        run_values.update({k: v for k, v in (given or {}).items() if k in secret})
        values = export_params.resolve(export.parameters, run_values,
                                       dt.datetime.now(dt.timezone.utc), export.time_zone, export=export.name)
        conn = pymysql.connect(host=self.mysql["host"], port=self.mysql["port"], user=self.mysql["user"],
                               password=self.mysql["password"], database=self.mysql["database"], charset="utf8mb4")
        wb = openpyxl.load_workbook(io.BytesIO(body))
        sheets = iter(wb.worksheets)
        total = 0
        try:
            for sheet in export.sheets:
                columns, rows, types = query(conn, sheet.sql, values or None)
                read, left = [], len(rows)
                while True:  # a sheet past the row limit continues on the next ones
                    ws = next(sheets)
                    part = list(ws.iter_rows(values_only=True))
                    check(list(part[0]) == columns, f"{ws.title}: header {part[0]} != {columns}")
                    read += part[1:]
                    left -= len(part) - 1
                    if left <= 0:
                        break
                assert_rows_match(read, columns, rows, types)
                total += len(rows)
        finally:
            conn.close()
        check(next(sheets, None) is None, "the workbook has more sheets than the export")
        return total

    def denied_calls(self) -> dict[str, list]:
        """Calls each handler made that the role the template gives it would not allow."""
        out = {}
        for fn, recorder in ((self.export_fn, self.export_calls), (self.replicator_fn, self.replicator_calls)):
            statements = role_statements(self.template, fn.role_logical_id, self.names)
            needs = [n for n in recorder.needs()
                     if not (self.iam_stand_in and n.action == "secretsmanager:GetSecretValue")]
            out[fn.logical_id] = denied(statements, needs)
        return out


def unquote_key(event: dict) -> str:
    return unquote_plus(event["Records"][0]["s3"]["object"]["key"])
