"""BucketReplicator with moto: S3 notification documents in, exact copies (or a named failure) out."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from types import SimpleNamespace
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from boto3.s3.transfer import TransferConfig

from lambdas.bucket_replicator import handler as replicator
from lambdas.bucket_replicator import replicate as replicate_module
from lambdas.bucket_replicator import settings as contract
from tests.faults import s3_error
from pipeline_ops.iam import CallRecorder, denied, role_statements

SOURCE, DESTINATION = "source-bucket", "destination-bucket"
EVENTS = Path(__file__).parent / "events"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def event_for(*objects: tuple[str, str | None], name: str = "ObjectCreated:Put", bucket: str = SOURCE) -> dict:
    """An S3 notification like put.json, one record per (key, version), the key URL-encoded as S3 does."""
    template = load_event("put.json")["Records"][0]
    records = []
    for key, version in objects:
        record = copy.deepcopy(template)
        record["eventName"] = name
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        if version:
            record["s3"]["object"]["versionId"] = version
        else:
            record["s3"]["object"].pop("versionId")
        records.append(record)
    return {"Records": records}


@pytest.fixture
def buckets(s3):
    for name in (SOURCE, DESTINATION):
        s3.create_bucket(Bucket=name)
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return s3


@pytest.fixture
def env(monkeypatch, buckets, ledger):
    monkeypatch.setenv(contract.ENV_LEDGER_TABLE, ledger.name)
    monkeypatch.setenv(contract.ENV_HISTORY_DAYS, "400")
    monkeypatch.setenv(contract.ENV_SOURCE_BUCKET, SOURCE)
    monkeypatch.setenv(contract.ENV_DESTINATION_BUCKET, DESTINATION)
    monkeypatch.setenv(contract.ENV_DESTINATION_PREFIX, "")
    replicator.runtime.cache_clear()
    yield
    replicator.runtime.cache_clear()


#: Multipart copies from 5 MiB, so a test object of about 11 MiB is copied in parts.
SMALL_PARTS = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(replicate_module, "TRANSFER", SMALL_PARTS)


def recorded_runtime() -> CallRecorder:
    """The function's runtime built again (its environment read anew), with every S3 call recorded."""
    replicator.runtime.cache_clear()
    recorder = CallRecorder()
    recorder.attach(replicator.runtime().s3)
    return recorder


def put(s3, key: str, body: bytes = b"PK\x03\x04 workbook", **extra) -> str:
    return s3.put_object(Bucket=SOURCE, Key=key, Body=body, ContentType=XLSX, **extra)["VersionId"]


def destination_keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=DESTINATION).get("Contents", []))


def body(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# --- S3's own documents ------------------------------------------------------------------


@pytest.mark.parametrize("document", ["put.json", "multipart.json", "copy.json"])
def test_each_kind_of_object_created_event_is_copied(env, buckets, document):
    event = load_event(document)
    obj = event["Records"][0]["s3"]["object"]
    version = put(buckets, obj["key"], b"x" * 100)
    obj["versionId"] = version  # moto's version ids are its own
    result = replicator.handler(event, None)
    assert result == {"copied": 1, "already_copied": 0, "skipped": 0}
    assert body(buckets, DESTINATION, obj["key"]) == b"x" * 100


def test_the_s3_test_event_is_ignored(env, buckets):
    assert replicator.handler(load_event("test_event.json"), None) == {"copied": 0, "already_copied": 0, "skipped": 1}
    assert destination_keys(buckets) == []


# --- keys -------------------------------------------------------------------------------

KEYS = [
    "exports/orders/with space.xlsx",
    "exports/orders/a+b=c.xlsx",
    "exports/orders/100% done.xlsx",
    "exports/ünïcödé/日本語 ✓.xlsx",
    "exports/deep/a/b/c/d/e/f/g/report (final).xlsx",
    "exports/orders/SHOUTING REPORT.XLSX",
]


@pytest.mark.parametrize("key", KEYS)
def test_url_encoded_keys_are_decoded_and_copied(env, buckets, key):
    version = put(buckets, key)
    encoded = event_for((key, version))["Records"][0]["s3"]["object"]["key"]
    assert encoded != key  # the event really carries the encoded form
    replicator.handler(event_for((key, version)), None)
    assert destination_keys(buckets) == [key]


@pytest.mark.parametrize("event, reason", [
    (lambda v: event_for(("exports/orders/data.csv", v)), "key does not end in .xlsx"),
    (lambda v: event_for(("exports/orders/data.xlsx", v), bucket="someone-elses"), "not the source bucket"),
    (lambda v: event_for(("exports/orders/data.xlsx", v), name="ObjectRemoved:DeleteMarkerCreated"),
     "is not an object creation"),
    (lambda v: event_for(("exports/orders/data.xlsx", v), name="X" * 300_000), "XXXX...(300000 characters) is not"),
])
def test_what_is_not_ours_is_skipped_with_a_log_line(env, buckets, caplog, event, reason):
    version = put(buckets, "exports/orders/data.csv")
    caplog.set_level("INFO")
    assert replicator.handler(event(version), None)["skipped"] == 1
    assert destination_keys(buckets) == []
    assert any(reason in r.getMessage() for r in caplog.records)


# --- exact content -----------------------------------------------------------------------


def test_the_version_in_the_event_is_copied_even_after_an_overwrite(env, buckets):
    key = "exports/orders/race.xlsx"
    first = put(buckets, key, b"first version")
    put(buckets, key, b"second version")  # overwritten before the copy runs
    replicator.handler(event_for((key, first)), None)
    assert body(buckets, DESTINATION, key) == b"first version"
    assert buckets.head_object(Bucket=DESTINATION, Key=key)["Metadata"]["source-version-id"] == first


def test_content_type_and_metadata_are_carried_over_and_the_source_is_recorded(env, buckets):
    key = "exports/orders/meta.xlsx"
    version = put(buckets, key, Metadata={"rows": "42", "sheets": "1"}, ContentDisposition="attachment")
    replicator.handler(event_for((key, version)), None)
    head = buckets.head_object(Bucket=DESTINATION, Key=key)
    assert head["ContentType"] == XLSX
    assert head["ContentDisposition"] == "attachment"
    assert head["Metadata"] == {
        "rows": "42", "sheets": "1", "source-bucket": SOURCE, "source-key": key,
        "source-version-id": version, "source-etag": buckets.head_object(Bucket=SOURCE, Key=key)["ETag"].strip('"'),
    }


def test_a_destination_prefix_is_put_before_the_key(env, buckets, monkeypatch):
    monkeypatch.setenv(contract.ENV_DESTINATION_PREFIX, "incoming/")
    replicator.runtime.cache_clear()
    version = put(buckets, "exports/orders/p.xlsx")
    replicator.handler(event_for(("exports/orders/p.xlsx", version)), None)
    assert destination_keys(buckets) == ["incoming/exports/orders/p.xlsx"]


def test_a_large_object_is_copied_in_parts_server_side(env, buckets, small_parts):
    # Given a multipart threshold lowered to 5 MiB and a 12 MiB object with metadata
    data = bytes(range(256)) * (12 * 2**20 // 256)
    key = "exports/orders/large.xlsx"
    version = put(buckets, key, data, Metadata={"rows": "1000000"})
    recorder = recorded_runtime()
    # When it is replicated
    replicator.handler(event_for((key, version)), None)
    # Then parts were copied server-side, never uploaded through the function; a copy in parts has a
    # composite checksum, so the copy and (put by hand, with no SHA-256 of its own) the source are read once
    # each to compare their SHA-256
    ops = [name for name, _ in recorder.calls]
    assert ops.count("s3.UploadPartCopy") == 3
    assert not {"s3.PutObject", "s3.UploadPart"} & set(ops) and ops.count("s3.GetObject") == 2
    assert body(buckets, DESTINATION, key) == data
    head = buckets.head_object(Bucket=DESTINATION, Key=key)
    assert head["ContentType"] == XLSX and head["Metadata"]["rows"] == "1000000"
    assert head["Metadata"]["source-version-id"] == version


# --- at least once, and failures ------------------------------------------------------


def test_a_repeated_event_is_not_copied_twice(env, buckets):
    key = "exports/orders/twice.xlsx"
    version = put(buckets, key)
    event = event_for((key, version))
    assert replicator.handler(event, None)["copied"] == 1
    recorder = CallRecorder()
    recorder.attach(replicator.runtime().s3)
    assert replicator.handler(event, None) == {"copied": 0, "already_copied": 1, "skipped": 0}
    assert "s3.CopyObject" not in recorder.operations()
    versions = buckets.list_object_versions(Bucket=DESTINATION, Prefix=key)["Versions"]
    assert len(versions) == 1


def test_a_new_version_of_the_same_key_is_copied_again(env, buckets):
    key = "exports/orders/again.xlsx"
    replicator.handler(event_for((key, put(buckets, key, b"one"))), None)
    replicator.handler(event_for((key, put(buckets, key, b"two"))), None)
    assert body(buckets, DESTINATION, key) == b"two"


def test_a_missing_object_fails_the_invocation_naming_the_key(env, buckets):
    with pytest.raises(replicator.ReplicationError, match="exports/orders/gone.xlsx: the object .* no longer exists"):
        replicator.handler(event_for(("exports/orders/gone.xlsx", None)), None)


def test_one_failed_record_fails_the_event_and_the_retry_copies_nothing_twice(env, buckets):
    good = [f"exports/orders/ok-{i}.xlsx" for i in range(3)]
    versions = [put(buckets, k) for k in good]
    event = event_for((good[0], versions[0]), ("exports/orders/missing.xlsx", None), *zip(good[1:], versions[1:]))
    with pytest.raises(replicator.ReplicationError) as err:
        replicator.handler(event, None)
    assert str(err.value).startswith("1 object(s) not copied: exports/orders/missing.xlsx")
    assert destination_keys(buckets) == sorted(good)
    # The platform retries the whole event: the good ones are recognised, the bad one fails again.
    with pytest.raises(replicator.ReplicationError):
        replicator.handler(event, None)
    for key in good:
        assert len(buckets.list_object_versions(Bucket=DESTINATION, Prefix=key)["Versions"]) == 1


def test_access_denied_on_the_destination_is_a_named_failure(env, buckets):
    key = "exports/orders/denied.xlsx"
    version = put(buckets, key)
    # S3 answers the copy with 403 (moto does not evaluate policies, so the answer is injected).
    replicator.runtime().s3.meta.events.register_first(
        "before-send.s3.CopyObject", lambda **_: s3_error(403, "AccessDenied", "Access Denied"))
    with pytest.raises(replicator.ReplicationError, match="denied.xlsx: copy to s3://destination-bucket/.* AccessDenied"):
        replicator.handler(event_for((key, version)), None)


def test_throttling_is_retried_with_backoff_inside_the_invocation(env, buckets, monkeypatch):
    key = "exports/orders/throttled.xlsx"
    version = put(buckets, key)
    s3 = replicator.runtime().s3
    answers = [s3_error(503, "SlowDown", "Please reduce your request rate."),
               s3_error(503, "SlowDown", "Please reduce your request rate.")]
    sent = []

    def throttle(**kwargs):
        sent.append(1)
        return answers.pop(0) if answers else None

    s3.meta.events.register_first("before-send.s3.CopyObject", throttle)
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # the backoff itself is botocore's
    assert replicator.handler(event_for((key, version)), None)["copied"] == 1
    assert len(sent) == 3
    assert destination_keys(buckets) == [key]


def test_one_json_log_line_per_record_without_content(env, buckets, caplog):
    key = "exports/orders/logged.xlsx"
    version = put(buckets, key, b"SECRET-CONTENT")
    caplog.set_level("INFO")
    replicator.handler(event_for((key, version)), None)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "root"]
    (line,) = lines
    assert line["key"] == key and line["version"] == version and line["bytes"] == 14
    assert line["outcome"] == "copied" and isinstance(line["ms"], int)
    assert "SECRET-CONTENT" not in caplog.text


@pytest.mark.parametrize("destination", [SOURCE, f"arn:aws:s3:::{SOURCE}"])
def test_a_destination_equal_to_the_source_is_refused_at_cold_start(monkeypatch, destination):
    monkeypatch.setenv(contract.ENV_LEDGER_TABLE, "run-ledger")
    monkeypatch.setenv(contract.ENV_HISTORY_DAYS, "400")
    monkeypatch.setenv(contract.ENV_SOURCE_BUCKET, SOURCE)
    monkeypatch.setenv(contract.ENV_DESTINATION_BUCKET, destination)
    replicator.runtime.cache_clear()
    with pytest.raises(contract.ConfigurationError, match="resolves to the source bucket"):
        replicator.handler(event_for(("exports/x.xlsx", None)), None)
    replicator.runtime.cache_clear()


# --- the role the stack gives the function allows exactly these calls ---------------------------


def test_the_role_in_the_template_allows_exactly_the_calls_the_code_makes(env, buckets, dev, monkeypatch,
                                                                          small_parts):
    # Given the replicator role as synthesized, with bucket logical IDs standing for the local buckets
    names = {
        f"{dev.logical_id(dev.stack.source.bucket)}.Arn": f"arn:aws:s3:::{SOURCE}",
        f"{dev.logical_id(dev.stack.destination_bucket)}.Arn": f"arn:aws:s3:::{DESTINATION}",
        f"{dev.logical_id(dev.stack.replicator.log_group)}.Arn": "arn:aws:logs:us-east-1:1:log-group:r:*",
        f"{dev.logical_id(dev.stack.replicator.failure_queue)}.Arn": "arn:aws:sqs:us-east-1:1:failed",
        f"{dev.logical_id(dev.stack.ledger.table)}.Arn": "arn:aws:dynamodb:us-east-1:1:table/run-ledger",
    }
    statements = role_statements(dev.template, dev.logical_id(dev.stack.replicator.role), names)
    prefix = dev.config.destination.prefix
    monkeypatch.setenv(contract.ENV_DESTINATION_PREFIX, prefix)
    recorder = recorded_runtime()
    s3 = replicator.runtime().s3
    source_prefix = dev.config.key_prefix
    # When the handler copies small and multipart objects, skips a repeat, and aborts a failed multipart copy
    small, large = f"{source_prefix}orders/s.xlsx", f"{source_prefix}orders/l.xlsx"
    event = event_for((small, put(buckets, small)), (large, put(buckets, large, b"z" * 11 * 2**20)))
    replicator.handler(event, None)
    replicator.handler(event, None)
    failing = f"{source_prefix}orders/fail.xlsx"
    version = put(buckets, failing, b"y" * 11 * 2**20)
    parts = []

    def fail_second_part(**kwargs):
        parts.append(1)
        return s3_error(403, "AccessDenied", "Access Denied") if len(parts) == 2 else None

    s3.meta.events.register_first("before-send.s3.UploadPartCopy", fail_second_part)
    with pytest.raises(replicator.ReplicationError):
        replicator.handler(event_for((failing, version)), None)
    # Then every call is allowed by the role ...
    needs = recorder.needs()
    assert denied(statements, needs) == []
    # ... and every S3 action the role grants is one the code used
    granted = {a for st in statements for a in st["Action"] if a.startswith("s3:")}
    assert granted == {n.action for n in needs}
    assert {"s3.AbortMultipartUpload", "s3.UploadPartCopy", "s3.CopyObject"} <= recorder.operations()


# --- which keys travel: the same rule as the notification filter ----------------------------


@pytest.mark.parametrize("source_prefix, key, copied", [
    ("", "report.xlsx", True),                       # a file dropped at the bucket root by a person
    ("", "team/2026/report.xlsx", True),             # under any folder, whoever wrote it
    ("", "exports/orders/x.xlsx", True),             # the export's own files
    ("", "SHOUTING.XLSX", True),                     # the second filter
    ("", "Mixed.Xlsx", False),                       # no filter delivers it, so the handler skips it too
    ("", "notes.txt", False),
    ("", "report.xlsx.tmp", False),
    ("reports/", "reports/q3.xlsx", True),
    ("reports/", "reports/deep/q3.XLSX", True),
    ("reports/", "other/q3.xlsx", False),
])
def test_only_keys_the_filter_delivers_are_copied(env, buckets, monkeypatch, source_prefix, key, copied):
    monkeypatch.setenv(contract.ENV_SOURCE_PREFIX, source_prefix)
    replicator.runtime.cache_clear()
    result = replicator.handler(event_for((key, put(buckets, key))), None)
    assert (result["copied"], result["skipped"]) == ((1, 0) if copied else (0, 1))
    assert destination_keys(buckets) == ([key] if copied else [])
    assert contract.is_replicated(key, source_prefix) is copied


@pytest.mark.parametrize("size", [100, 11 * 2**20], ids=["copy", "multipart-copy"])
def test_copies_give_the_destination_owner_full_control_and_use_its_key(env, buckets, monkeypatch, small_parts,
                                                                        size):
    """bucket-owner-full-control makes the destination bucket's owner own the copy where its Object Ownership is
    "bucket owner preferred", and is the one ACL a bucket with ACLs disabled accepts
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_OwnershipControlsRule.html); with a KMS key configured,
    every copy (and each part of a multipart copy) is encrypted with it."""
    import boto3

    key_arn = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    monkeypatch.setenv(contract.ENV_DESTINATION_KMS_KEY_ARN, key_arn)
    recorder = recorded_runtime()
    key = "exports/orders/owned.xlsx"
    replicator.handler(event_for((key, put(buckets, key, b"k" * size))), None)
    writes = [p for name, p in recorder.calls if name in ("s3.CopyObject", "s3.CreateMultipartUpload")]
    assert len(writes) == 1
    assert writes[0]["ACL"] == "bucket-owner-full-control"
    assert (writes[0]["ServerSideEncryption"], writes[0]["SSEKMSKeyId"]) == ("aws:kms", key_arn)
    head = buckets.head_object(Bucket=DESTINATION, Key=key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)
    assert body(buckets, DESTINATION, key) == b"k" * size


def test_prods_role_allows_the_calls_of_a_copy_into_a_partners_kms_bucket(env, buckets, prod, monkeypatch,
                                                                          small_parts):
    # Given prod's replicator role (the partner bucket and key from its config stand for the local ones)
    key_arn = prod.config.destination.kms_key_arn
    partner, prefix = prod.config.destination.bucket_name, prod.config.destination.prefix
    names = {
        f"{prod.logical_id(prod.stack.source.bucket)}.Arn": f"arn:aws:s3:::{SOURCE}",
        f"{prod.logical_id(prod.stack.replicator.log_group)}.Arn": "arn:aws:logs:eu-west-1:1:log-group:r:*",
        f"{prod.logical_id(prod.stack.replicator.failure_queue)}.Arn": "arn:aws:sqs:eu-west-1:1:failed",
        f"{prod.logical_id(prod.stack.ledger.table)}.Arn": "arn:aws:dynamodb:eu-west-1:1:table/run-ledger",
    }
    statements = role_statements(prod.template, prod.logical_id(prod.stack.replicator.role), names)
    buckets.create_bucket(Bucket=partner)
    monkeypatch.setenv(contract.ENV_DESTINATION_BUCKET, partner)
    monkeypatch.setenv(contract.ENV_DESTINATION_PREFIX, prefix)
    monkeypatch.setenv(contract.ENV_DESTINATION_KMS_KEY_ARN, key_arn)
    recorder = recorded_runtime()
    # When it copies a small and a multipart object there
    small, large = "s.xlsx", "folder/l.XLSX"
    replicator.handler(event_for((small, put(buckets, small)), (large, put(buckets, large, b"z" * 11 * 2**20))), None)
    # Then every call, the KMS use S3 makes for it included, is allowed by the role
    needs = recorder.needs()
    assert {n.action for n in needs} >= {"s3:PutObjectAcl", "kms:GenerateDataKey", "kms:Decrypt"}
    assert denied(statements, needs) == []


# --- the "Workbook Delivered" event ----------------------------------------------------------


@pytest.fixture
def delivered_queue(env):
    """An EventBridge rule on the default bus with the README's pattern, sending to an SQS queue."""
    import boto3

    events, sqs = boto3.client("events", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="delivered")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="workbook-delivered", EventPattern=json.dumps(
        {"source": ["mysql-xlsx-pipeline"], "detail-type": ["Workbook Delivered"]}))
    events.put_targets(Rule="workbook-delivered", Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict]:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for m in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in messages]

    return received


WORKBOOK = b"PK\x03\x04 workbook"
EXPORT_METADATA = {"export": "daily_sales", "rows": "25", "sheets": "2", "sql-sha256": "ab" * 32,
                   "sha256": hashlib.sha256(WORKBOOK).hexdigest(),
                   "params": json.dumps({"day": "2026-11-20", "name": "\u00fc"}, ensure_ascii=True)}


def test_a_copy_publishes_one_workbook_delivered_event(env, buckets, delivered_queue):
    # Given a workbook with the export's metadata
    key = "exports/daily_sales/2026/11/20/daily_sales-x.xlsx"
    version = put(buckets, key, Metadata=EXPORT_METADATA)
    # When it is copied
    assert replicator.handler(event_for((key, version)), None)["copied"] == 1
    # Then a rule matching the documented source and detail-type receives one event describing the copy
    (event,) = delivered_queue()
    assert event["source"] == "mysql-xlsx-pipeline" and event["detail-type"] == "Workbook Delivered"
    destination_version = buckets.head_object(Bucket=DESTINATION, Key=key)["VersionId"]
    assert event["detail"] == {
        "export": "daily_sales", "parameters": {"day": "2026-11-20", "name": "ü"}, "rows": 25, "sheets": 2,
        "bytes": len(WORKBOOK),
        "sha256": EXPORT_METADATA["sha256"],
        "checksum": {"algorithm": "SHA256", "value": base64.b64encode(hashlib.sha256(WORKBOOK).digest()).decode(),
                     "verified": True},
        "source": {"bucket": SOURCE, "key": key, "version_id": version},
        "destination": {"bucket": DESTINATION, "key": key, "version_id": destination_version},
    }
    # And a repeated notification copies nothing and announces nothing
    assert replicator.handler(event_for((key, version)), None)["already_copied"] == 1
    leftover = delivered_queue(); assert leftover == [], leftover[0]["detail"] if leftover else None


def _events_answer(status: int, parsed: dict):
    """An EventBridge answer returned from ``before-call``, so the call never reaches moto (which would
    otherwise record the event even when a ``before-send`` hook answers)."""
    from botocore.awsrequest import AWSResponse

    from tests.faults import _Raw

    parsed = {**parsed, "ResponseMetadata": {"HTTPStatusCode": status}}
    return AWSResponse("https://events.us-east-1.amazonaws.com/", status, {}, _Raw(b"")), parsed


@pytest.mark.parametrize("answer, reason", [
    (lambda: _events_answer(400, {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}),
     "AccessDeniedException: not authorized"),
    (lambda: _events_answer(200, {"FailedEntryCount": 1, "Entries": [
        {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}]}), "InternalFailure: try again"),
])
def test_a_failed_publish_is_logged_and_counted_and_the_copy_stands(env, buckets, delivered_queue, caplog, capsys,
                                                                     monkeypatch, answer, reason):
    # Given EventBridge refusing the event
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "replicator-fn")
    replicator.runtime.cache_clear()
    replicator.runtime().events.meta.events.register_first("before-call.events.PutEvents", lambda **_: answer())
    key = "exports/daily_sales/refused.xlsx"
    version = put(buckets, key, Metadata=EXPORT_METADATA)
    caplog.set_level("INFO")
    # When the object is replicated, the invocation succeeds: the copy is made and not undone
    assert replicator.handler(event_for((key, version)), None) == {"copied": 1, "already_copied": 0, "skipped": 0}
    assert body(buckets, DESTINATION, key) == body(buckets, SOURCE, key)
    # And the log line at ERROR names the key and why the event was not published
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "root"]
    assert caplog.records[-1].levelname == "ERROR"
    assert line["outcome"] == "copied" and line["event"] == "not published" and line["event_error"] == reason
    # And one embedded-metric-format line counts it for the alarm (CloudWatch EMF specification:
    # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
    (emf,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive == {"Namespace": "MysqlXlsxPipeline", "Dimensions": [["FunctionName"]],
                         "Metrics": [{"Name": "DeliveredEventsNotPublished", "Unit": "Count"}]}
    assert emf["FunctionName"] == "replicator-fn" and emf["DeliveredEventsNotPublished"] == 1
    assert isinstance(emf["_aws"]["Timestamp"], int)
    # And a redelivery of the notification does not copy again
    assert replicator.handler(event_for((key, version)), None)["already_copied"] == 1
    leftover = delivered_queue(); assert leftover == [], leftover[0]["detail"] if leftover else None


def test_metadata_near_s3s_2kb_limit_still_copies_without_the_redundant_source_key(env, buckets):
    """S3 keeps 2 KB of user metadata per object (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    UsingMetadata.html); moto does not enforce it, so the size is asserted here. The copy's key already
    says which source key it came from, so that field goes first when the recorded source would not fit."""
    key = "exports/orders/" + "long-name-" * 60 + ".xlsx"
    version = put(buckets, key, Metadata={"params": "x" * 1300})
    replicator.handler(event_for((key, version)), None)
    copied = buckets.head_object(Bucket=DESTINATION, Key=key)["Metadata"]
    assert replicate_module.metadata_bytes(copied) <= replicate_module.MAX_METADATA_BYTES
    assert replicate_module.META_SOURCE_KEY not in copied
    assert copied["params"] == "x" * 1300 and copied[replicate_module.META_SOURCE_VERSION] == version
    # an ordinary object keeps every field
    small = "exports/orders/short.xlsx"
    replicator.handler(event_for((small, put(buckets, small))), None)
    assert buckets.head_object(Bucket=DESTINATION, Key=small)["Metadata"][replicate_module.META_SOURCE_KEY] == small


def test_no_credential_is_logged_even_at_debug(env, buckets, caplog, monkeypatch):
    """At DEBUG botocore logs every request's headers (the session token, the signature) and response."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "Session-T0ken-Of-The-Role")
    replicator.runtime.cache_clear()
    version = put(buckets, "daily/report.xlsx")
    caplog.set_level("DEBUG")
    replicator.handler(event_for(("daily/report.xlsx", version)), None)
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "daily/report.xlsx" in logged  # the function's own line is there
    for secret in ("Session-T0ken-Of-The-Role", "Signature", "Authorization", "testing"):
        assert secret not in logged


# --- latest_copy: <destination prefix><key_prefix><export>/latest.xlsx -----------------------------------------

LATEST = "exports/orders/latest.xlsx"


@pytest.fixture
def latest_env(env, monkeypatch):
    monkeypatch.setenv(contract.ENV_LATEST_COPIES, json.dumps({"orders": "exports/orders/"}))
    replicator.runtime.cache_clear()


def put_run(s3, run_at: str, body: bytes) -> tuple[str, str]:
    """A workbook of export orders as the export uploads it: its key from the run's time, run-at in its metadata."""
    key = f"exports/orders/2026/12/04/orders-{run_at.replace('-', '').replace(':', '')}.xlsx"
    version = put(s3, key, body, Metadata={"export": "orders", "run-at": run_at})
    return key, version


def test_latest_is_never_replaced_by_an_older_run_delivered_later(latest_env, buckets):
    # Given two runs of orders whose deliveries are processed in reverse order (the newer run finished first)
    older = put_run(buckets, "2026-12-04T05:00:00.000Z", b"older run")
    newer = put_run(buckets, "2026-12-04T06:00:00.000Z", b"newer run")
    # When the newer one is delivered, then the older one
    replicator.handler(event_for(newer), None)
    replicator.handler(event_for(older), None)
    # Then latest.xlsx holds the newer run, with the metadata every copy carries, and both dated copies exist
    assert body(buckets, DESTINATION, LATEST) == b"newer run"
    head = buckets.head_object(Bucket=DESTINATION, Key=LATEST)
    assert head["Metadata"]["run-at"] == "2026-12-04T06:00:00.000Z"
    assert head["Metadata"]["source-key"] == newer[0] and head["ContentType"] == XLSX
    assert sorted(destination_keys(buckets)) == sorted([older[0], newer[0], LATEST])
    # And in order, the newer one replaces the older one
    buckets.delete_object(Bucket=DESTINATION, Key=LATEST)
    replicator.handler(event_for(older), None)
    assert body(buckets, DESTINATION, LATEST) == b"older run"
    replicator.handler(event_for(newer), None)
    assert body(buckets, DESTINATION, LATEST) == b"newer run"


def test_latest_is_only_kept_for_exports_that_ask_and_under_the_destination_prefix(latest_env, buckets, monkeypatch):
    monkeypatch.setenv(contract.ENV_DESTINATION_PREFIX, "incoming/")
    replicator.runtime.cache_clear()
    other = "exports/customers/2026/12/04/customers-x.xlsx"
    put(buckets, other, b"c", Metadata={"export": "customers", "run-at": "2026-12-04T05:00:00.000Z"})
    by_hand = "exports/orders/by-hand.xlsx"  # in the folder, but no run-at: not a run of the export
    put(buckets, by_hand, b"h", Metadata={"export": "orders"})
    replicator.handler(event_for((other, None), (by_hand, None)), None)
    assert destination_keys(buckets) == sorted(["incoming/" + by_hand, "incoming/" + other])
    run = put_run(buckets, "2026-12-04T05:00:00.000Z", b"run")
    replicator.handler(event_for(run), None)
    assert body(buckets, DESTINATION, "incoming/" + LATEST) == b"run"


def test_latest_is_written_conditionally_and_a_race_with_a_newer_run_is_lost_to_it(latest_env, buckets):
    """S3 writes a copy only if ``If-None-Match: *`` finds no object, or ``If-Match`` the same ETag, else answers 412
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html; CopyObject takes both headers,
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html). moto 5.2.5 does not evaluate them on
    CopyObject, so a hook answers as S3 does from the state of the key when the request is sent."""
    s3 = replicator.runtime().s3
    sent, raced = [], []

    def conditional_copy(params, **kwargs):
        # before-call: a returned answer stands for the service's and the request is not sent (before-send
        # handlers all run, moto's too, which would write the object whatever this one answered)
        if not params["url_path"].endswith(LATEST):
            return None
        headers = {k.lower(): v for k, v in params["headers"].items()}
        sent.append({k: headers[k] for k in ("if-match", "if-none-match") if k in headers})
        if not raced:  # another run, newer, finishes between this run's read and its write
            raced.append(1)
            buckets.put_object(Bucket=DESTINATION, Key=LATEST, Body=b"racing newer run",
                               Metadata={"run-at": "2026-12-04T07:00:00.000Z"})
        try:
            etag = buckets.head_object(Bucket=DESTINATION, Key=LATEST)["ETag"]
        except Exception:  # noqa: BLE001 - no object
            etag = None
        if ("if-none-match" in headers and etag is not None) or (
                "if-match" in headers and headers["if-match"] != etag):
            error = {"Code": "PreconditionFailed", "Message": "At least one of the pre-conditions did not hold"}
            return SimpleNamespace(status_code=412, headers={}), {
                "Error": error, "ResponseMetadata": {"HTTPStatusCode": 412}}
        return None

    s3.meta.events.register_first("before-call.s3.CopyObject", conditional_copy)
    run = put_run(buckets, "2026-12-04T06:00:00.000Z", b"this run")
    replicator.handler(event_for(run), None)
    # The first write asked for "no object yet", lost to the racing run, read again and left the newer run there
    assert sent == [{"if-none-match": "*"}]
    assert body(buckets, DESTINATION, LATEST) == b"racing newer run"
    # An older latest.xlsx is replaced only if it is still the one read (If-Match with its ETag)
    buckets.put_object(Bucket=DESTINATION, Key=LATEST, Body=b"old", Metadata={"run-at": "2026-12-04T01:00:00.000Z"})
    etag = buckets.head_object(Bucket=DESTINATION, Key=LATEST)["ETag"]
    later = put_run(buckets, "2026-12-04T08:00:00.000Z", b"later run")
    replicator.handler(event_for(later), None)
    assert sent[-1] == {"if-match": etag}
    assert body(buckets, DESTINATION, LATEST) == b"later run"
