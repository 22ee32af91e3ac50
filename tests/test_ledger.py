"""The run ledger and the checksum that travels: export (real MariaDB) -> source bucket -> replicator -> copy,
with moto standing in for S3 and DynamoDB.

S3 behaviour relied on (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html,
https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity-upload.html): a checksum sent
with a single-request upload is checked by S3, which refuses different bytes, and is stored as the object's
full-object checksum; a multipart upload with SHA256 gets a composite checksum (a checksum of the parts'
checksums; SHA-256 has no full-object type for multipart uploads, CRC64NVME only that type); CopyObject with
x-amz-checksum-algorithm makes S3 compute the copy's checksum
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
from boto3.s3.transfer import TransferConfig

from lambdas import contract as shared
from lambdas.bucket_replicator import handler as replicator
from lambdas.bucket_replicator import settings as replicator_settings
from lambdas.export_to_xlsx import export as export_module
from lambdas.export_to_xlsx import handler as export_handler
from lambdas.export_to_xlsx import settings as export_settings
from lambdas.export_to_xlsx.errors import ExportError
from tests.test_export_handler import BUCKET, EXPORTS, Context, env, tables, tmp_files  # noqa: F401 (fixtures)

DESTINATION = "ledger-destination"
#: About 7^6 rows of long hashes: a workbook of several MiB, multipart with 5 MiB parts.
LARGE_SQL = ("SELECT a.n, b.n AS m, c.n AS k, d.n AS j, SHA2(CONCAT(a.n, b.n, c.n, d.n, e.n), 512) AS h1, "
             "SHA2(CONCAT(e.n, d.n, c.n, b.n, a.n), 512) AS h2 FROM xlsx_numbers a, xlsx_numbers b, xlsx_numbers c, "
             "xlsx_numbers d, xlsx_numbers e, xlsx_numbers f")
SMALL_PARTS = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=1)


@pytest.fixture
def pipeline(env, s3, ledger, monkeypatch):
    """The export's environment (test_export_handler's) plus a versioned source, a destination and the
    replicator's environment, both functions writing the same ledger."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=DESTINATION)
    s3.put_bucket_versioning(Bucket=DESTINATION, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv(replicator_settings.ENV_DESTINATION_BUCKET, DESTINATION)
    monkeypatch.setenv(replicator_settings.ENV_DESTINATION_PREFIX, "")
    exports = dict(EXPORTS, skipper={"sql": EXPORTS["empty"]["sql"], "sheet_name": "none", "on_empty": "skip"},
                   large={"sql": LARGE_SQL, "sheet_name": "large"})
    monkeypatch.setenv(export_settings.ENV_EXPORTS, json.dumps(exports))
    export_handler.runtime.cache_clear()
    replicator.runtime.cache_clear()
    yield ledger
    replicator.runtime.cache_clear()


def s3_event(s3, key: str) -> dict:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": BUCKET}, "object": {
                             "key": key, "versionId": head["VersionId"], "size": head["ContentLength"]}}}]}


def items(ledger, export: str | None = None) -> list[dict]:
    return sorted((i for i in ledger.items() if export is None or i["export"] == export), key=lambda i: i["run_id"])


# --- one item per run, whatever the outcome ----------------------------------------------------------


def test_every_outcome_writes_exactly_one_item_with_the_run_s_fields(pipeline, s3):
    # When an export uploads, one is skipped as empty, and one fails (each once)
    (uploaded,) = export_handler.handler({"export": "numbers"}, Context())["exports"]
    (skipped,) = export_handler.handler({"export": "skipper", "trigger": "backfill"}, Context())["exports"]
    with pytest.raises(ExportError, match="no_such_table_here"):
        export_handler.handler({"export": "broken", "schedule": {"name": "nightly", "scheduled_time": "2026-11-20T05:00:00Z"}},
                              Context())
    # Then each run has exactly one item
    assert [len(items(pipeline, e)) for e in ("numbers", "skipper", "broken")] == [1, 1, 1]
    (item,) = items(pipeline, "numbers")
    body = s3.get_object(Bucket=BUCKET, Key=uploaded["key"])
    data = body["Body"].read()
    assert item == {
        "export": "numbers", "run_id": uploaded["run_id"], "trigger": "manual", "params_requested": {}, "params": {},
        "started": item["started"], "finished": item["finished"], "outcome": "uploaded", "rows": 7,
        "rows_per_sheet": {"numbers": 7}, "bytes": len(data), "seconds": uploaded["seconds"], "bucket": BUCKET,
        "key": uploaded["key"], "version_id": body["VersionId"], "sha256": hashlib.sha256(data).hexdigest(),
        "expires_at": item["expires_at"],
    }
    assert item["run_id"].startswith(item["started"] + "#") and item["started"] <= item["finished"]
    assert body["Metadata"]["run-id"] == item["run_id"] and body["Metadata"]["sha256"] == item["sha256"]
    (item,) = items(pipeline, "skipper")
    assert item["outcome"] == "skipped: empty" and item["trigger"] == "backfill" and item["rows"] == 0
    assert "key" not in item and "sha256" not in item and skipped["run_id"] == item["run_id"]
    (item,) = items(pipeline, "broken")
    assert item["outcome"] == "failed" and item["trigger"] == "schedule: nightly"
    assert "no_such_table_here" in item["error"] and "\n" not in item["error"] and "key" not in item


def test_items_expire_after_history_days(pipeline, monkeypatch):
    monkeypatch.setenv(export_settings.ENV_HISTORY_DAYS, "30")
    export_handler.runtime.cache_clear()
    export_handler.handler({"export": "one"}, Context())
    (item,) = items(pipeline, "one")
    import datetime as dt

    started = dt.datetime.fromisoformat(item["started"].replace("Z", "+00:00"))
    assert item["expires_at"] == int(started.timestamp()) + 30 * 86400


def test_an_unknown_trigger_is_refused_before_anything_runs(pipeline, s3):
    with pytest.raises(ExportError, match='"trigger" must be one of manual, backfill, replay'):
        export_handler.handler({"export": "one", "trigger": "cron"}, Context())
    assert pipeline.items() == [] and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_a_failed_ledger_write_is_logged_counted_and_the_run_stands(pipeline, s3, capsys, caplog):
    # Given a ledger table that is gone
    pipeline.client.delete_table(TableName=pipeline.name)
    # When an export runs
    (result,) = export_handler.handler({"export": "one"}, Context())["exports"]
    # Then the workbook was uploaded once and the result stands
    assert result["outcome"] == "uploaded"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [result["key"]]
    # And the failure is logged and counted as LedgerWritesFailed (embedded metric format)
    metric = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "LedgerWritesFailed" in line]
    assert len(metric) == 1 and metric[0]["LedgerWritesFailed"] == 1
    assert metric[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "MysqlXlsxPipeline"
    assert any('"ledger": "not written"' in r.getMessage() and result["run_id"] in r.getMessage()
               for r in caplog.records)
    # And the replicator still copies it and announces nothing less (its own ledger failure counted too)
    assert replicator.handler(s3_event(s3, result["key"]), None)["copied"] == 1
    assert "LedgerWritesFailed" in capsys.readouterr().out


# --- the checksum that travels --------------------------------------------------------------------


def test_a_single_request_upload_sends_the_workbook_s_own_sha256_as_its_s3_checksum(pipeline, s3):
    sent = []
    rt = export_handler.runtime()
    rt.s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
    (result,) = export_handler.handler({"export": "numbers"}, Context())["exports"]
    (headers,) = sent
    checksums = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers.items()
                 if k.lower().startswith("x-amz-checksum-")}
    digest = hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].read()).digest()
    assert checksums == {"x-amz-checksum-sha256": base64.b64encode(digest).decode()}


def test_a_multipart_sized_workbook_keeps_a_verifiable_full_object_sha256(pipeline, s3, monkeypatch):
    # Given parts of 5 MiB, and a workbook larger than that
    monkeypatch.setattr(export_module, "TRANSFER", SMALL_PARTS)
    sent = []
    rt = export_handler.runtime()
    rt.s3.meta.events.register("before-send.s3.CreateMultipartUpload",
                               lambda request, **_: sent.append(dict(request.headers)))
    (result,) = export_handler.handler({"export": "large"}, Context())["exports"]
    # Then it went in parts, each with its SHA-256 (S3 keeps a composite checksum of those) ...
    assert result["bytes"] > 5 * 2**20 and len(sent) == 1
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent[0].items()}
    assert headers["x-amz-checksum-algorithm"] == "SHA256"
    # ... and the full-object SHA-256 in the metadata and the ledger is that of the bytes stored
    obj = s3.get_object(Bucket=BUCKET, Key=result["key"])
    full = hashlib.sha256(obj["Body"].read()).hexdigest()
    assert obj["Metadata"]["sha256"] == result["sha256"] == full == items(pipeline, "large")[0]["sha256"]
    assert items(pipeline, "large")[0]["version_id"] == obj["VersionId"]
    # When it is copied, S3's checksum of the copy (one CopyObject: a full-object checksum) is that digest
    assert replicator.handler(s3_event(s3, result["key"]), None)["copied"] == 1
    copy = s3.head_object(Bucket=DESTINATION, Key=result["key"], ChecksumMode="ENABLED")
    assert base64.b64decode(copy["ChecksumSHA256"]).hex() == full
    (item,) = items(pipeline, "large")
    assert item["delivery"]["sha256"] == full and item["delivery"]["verified"] is True


def test_the_replicator_adds_one_delivery_to_the_run_s_item_and_a_redelivery_adds_none(pipeline, s3):
    (result,) = export_handler.handler({"export": "numbers"}, Context())["exports"]
    event = s3_event(s3, result["key"])
    assert replicator.handler(event, None)["copied"] == 1
    (item,) = items(pipeline, "numbers")
    copy = s3.head_object(Bucket=DESTINATION, Key=result["key"], ChecksumMode="ENABLED")
    assert item["delivery"] == {
        "bucket": DESTINATION, "key": result["key"], "version_id": copy["VersionId"], "at": item["delivery"]["at"],
        "sha256": result["sha256"], "checksum_algorithm": "SHA256", "checksum": copy["ChecksumSHA256"],
        "verified": True,
    }
    assert item["outcome"] == "uploaded" and item["sha256"] == result["sha256"]  # the run's fields stay
    # When S3 delivers the same notification again
    assert replicator.handler(event, None)["already_copied"] == 1
    # Then the item is unchanged: one delivery, its time the first one's
    assert items(pipeline) == [item]


def test_a_delivery_recorded_before_the_run_keeps_both(pipeline, s3, monkeypatch):
    """UpdateItem on both sides: whichever function writes first, neither replaces the other's attributes."""
    seen = []
    original = export_handler.record

    def replicate_first(ledger, export, run, **kwargs):
        if "result" in kwargs:
            seen.append(replicator.handler(s3_event(s3, kwargs["result"]["key"]), None))
        return original(ledger, export, run, **kwargs)

    monkeypatch.setattr(export_handler, "record", replicate_first)
    export_handler.handler({"export": "one"}, Context())
    (item,) = items(pipeline, "one")
    assert seen == [{"copied": 1, "already_copied": 0, "skipped": 0}]
    assert item["outcome"] == "uploaded" and item["delivery"]["verified"] is True


def test_a_workbook_put_in_by_hand_is_copied_verified_and_gets_its_own_item(pipeline, s3):
    # Given a workbook put in by hand: no metadata, and the checksum the client sent and S3 kept (CRC32 here)
    data = b"PK\x03\x04 by hand"
    version = s3.put_object(Bucket=BUCKET, Key="inbox/report.xlsx", Body=data, ChecksumAlgorithm="CRC32")["VersionId"]
    source = s3.head_object(Bucket=BUCKET, Key="inbox/report.xlsx", ChecksumMode="ENABLED")
    # When it is replicated
    assert replicator.handler(s3_event(s3, "inbox/report.xlsx"), None)["copied"] == 1
    # Then the copy carries the same checksum, as S3 computed it, and the hand item records it
    copy = s3.head_object(Bucket=DESTINATION, Key="inbox/report.xlsx", ChecksumMode="ENABLED")
    assert copy["ChecksumCRC32"] == source["ChecksumCRC32"]
    (item,) = items(pipeline)
    assert item["export"] == "(by hand)" and item["trigger"] == "by hand" and item["outcome"] == "uploaded by hand"
    assert item["key"] == "inbox/report.xlsx" and item["version_id"] == version and item["bytes"] == len(data)
    assert item["delivery"]["checksum_algorithm"] == "CRC32" and item["delivery"]["verified"] is True
    # And a redelivery adds nothing
    assert replicator.handler(s3_event(s3, "inbox/report.xlsx"), None)["already_copied"] == 1
    assert items(pipeline) == [item]


def test_a_copy_whose_bytes_changed_is_a_failed_copy_without_event_or_delivery(pipeline, s3, caplog):
    (result,) = export_handler.handler({"export": "numbers"}, Context())["exports"]
    rt = replicator.runtime()
    published = []
    rt.events.meta.events.register("before-call.events.PutEvents", lambda **kw: published.append(kw))

    def tamper(**_):  # the destination's bytes change right after the copy
        s3.put_object(Bucket=DESTINATION, Key=result["key"], Body=b"PK\x03\x04 not the workbook",
                      ChecksumAlgorithm="SHA256")

    rt.s3.meta.events.register("after-call.s3.CopyObject", tamper)
    with pytest.raises(replicator.ReplicationError, match="bytes changed"):
        replicator.handler(s3_event(s3, result["key"]), None)
    assert published == [] and "delivery" not in items(pipeline, "numbers")[0]
    # And the retry (the tampering gone) copies again instead of taking the bad copy for done
    rt.s3.meta.events.unregister("after-call.s3.CopyObject", tamper)
    assert replicator.handler(s3_event(s3, result["key"]), None)["copied"] == 1
    assert items(pipeline, "numbers")[0]["delivery"]["sha256"] == result["sha256"]
