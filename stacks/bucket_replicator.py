"""BucketReplicator: copies every new .xlsx object from the source bucket to the destination bucket."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from aws_cdk import Arn, ArnFormat, Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_logs as logs
from constructs import Construct

from lambdas import contract as shared
from lambdas.bucket_replicator import settings as contract
from stacks.bundling import REPLICATOR_BUNDLE
from stacks.nag import acknowledge, objects_finding
from stacks.pipeline_function import failure_queue, function_metric_alarm, pipeline_function
from stacks.run_ledger import RunLedger

#: Read the exact version that triggered the event (HeadObject, CopyObject, UploadPartCopy).
SOURCE_READ_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion")
#: Write the copy (PutObject covers CopyObject and multipart copies) with the bucket-owner-full-control
#: ACL (PutObjectAcl), abort a failed multipart copy, and read the destination object's metadata to
#: skip an already-copied version.
DESTINATION_ACTIONS = ("s3:PutObject", "s3:PutObjectAcl", "s3:AbortMultipartUpload", "s3:GetObject")
#: Encrypt a copy with the destination's KMS key: a data key for each object or part, and Decrypt,
#: which S3 needs to complete a multipart upload encrypted with that key.
DESTINATION_KMS_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


class BucketReplicator(Construct):
    """Copies each ``.xlsx`` object created in ``source_bucket`` to ``destination_bucket``.

    Default settings:
    - the shared function defaults (``stacks.pipeline_function``), outside any VPC (it talks only to S3);
    - triggered by ``s3:ObjectCreated:*`` on the source bucket for keys ending in ``.xlsx``
      or ``.XLSX`` (S3 filters are case-sensitive: one filter each), anywhere in the bucket
      or only under ``source_prefix``; the handler applies the same rule;
    - two async retries within six hours, then the event goes to an SQS failure queue
      (SQS-managed encryption, TLS only, kept 14 days, kept with the stack's data);
    - a role of its own that may only read objects ending in those suffixes (and their
      versions) under ``source_prefix`` and write (with the ``bucket-owner-full-control``
      ACL), abort and read back objects under ``destination_prefix`` in the destination;
      with ``destination_kms_key_arn``, copies are encrypted with that key and the role may
      use it for exactly that, only through S3 in the key's own region (the bucket's);
    - after each copy, one "Workbook Delivered" event on the account's default EventBridge
      bus; the role may ``events:PutEvents`` only there and only with that source and
      detail-type; an event that cannot be published is counted in the custom metric
      ``MysqlXlsxPipeline/DeliveredEventsNotPublished`` (the copy stands);
    - alarms on any error, on any message in the failure queue and on any event not
      published, sent to ``alarm_topic``;
    - ``latest_copies`` (export name -> its folder in the source bucket, under ``source_prefix``): after each
      copy of such an export's workbook, the replicator also keeps ``<destination_prefix><folder>latest.xlsx``,
      replaced only by a newer run (a conditional CopyObject); the destination grant already covers that key.

    Raises ValueError when the destination is the source bucket or a prefix or key is malformed.
    Exposes ``function``, ``role``, ``failure_queue``, ``log_group``, ``default_bus_arn``,
    ``errors_alarm``, ``failures_alarm``, ``events_alarm`` and ``partner_statements`` (what
    another owner's bucket and key policies must allow, for an imported destination).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_bucket: s3.IBucket,
        destination_bucket: s3.IBucket,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        ledger: RunLedger,
        exports: Sequence[str],
        source_prefix: str = "",
        destination_prefix: str = "",
        destination_kms_key_arn: str | None = None,
        latest_copies: Mapping[str, str] | None = None,
        memory_mb: int = 256,
        timeout: Duration = Duration.minutes(15),
    ) -> None:
        super().__init__(scope, construct_id)
        if destination_bucket is source_bucket or (
            not Token.is_unresolved(destination_bucket.bucket_name)
            and not Token.is_unresolved(source_bucket.bucket_name)
            and destination_bucket.bucket_name == source_bucket.bucket_name
        ):
            raise ValueError("destination_bucket is the source bucket: the replicator would copy the bucket onto itself")
        if destination_prefix.startswith("/") or source_prefix.startswith("/"):
            raise ValueError("source_prefix and destination_prefix must not start with '/'")
        latest_copies = dict(latest_copies or {})
        bad = sorted(f for f in latest_copies.values() if not f.endswith("/") or not f.startswith(source_prefix))
        if bad:
            raise ValueError(f"latest_copies folders must end in '/' and lie under source_prefix, got {bad}")
        if destination_kms_key_arn is not None and ":key/" not in destination_kms_key_arn:
            raise ValueError(f"destination_kms_key_arn must be a KMS key ARN (not an alias), got {destination_kms_key_arn!r}")

        failures = failure_queue(
            self, "FailedCopies", alarm_topic=alarm_topic, removal_policy=removal_policy,
            description="Copies gave up after retries: replay the events in the failure queue",
        )
        self.failure_queue, self.failures_alarm = failures.queue, failures.alarm

        built = pipeline_function(
            self,
            bundle=REPLICATOR_BUNDLE,
            description="Copies each new .xlsx from the source bucket to the destination bucket",
            role_description="BucketReplicator: read new .xlsx objects in the source bucket, write them to the destination",
            errors_description="A copy to the destination bucket failed; it is retried, then kept in the failure queue",
            environment={
                contract.ENV_SOURCE_BUCKET: source_bucket.bucket_name,
                contract.ENV_SOURCE_PREFIX: source_prefix,
                contract.ENV_DESTINATION_BUCKET: destination_bucket.bucket_name,
                contract.ENV_DESTINATION_PREFIX: destination_prefix,
                contract.ENV_DESTINATION_KMS_KEY_ARN: destination_kms_key_arn or "",
                contract.ENV_LEDGER_TABLE: ledger.table.table_name,
                contract.ENV_HISTORY_DAYS: str(ledger.history_days),
                contract.ENV_LATEST_COPIES: json.dumps(dict(sorted(latest_copies.items())), separators=(",", ":")),
            },
            alarm_topic=alarm_topic,
            log_retention=log_retention,
            removal_policy=removal_policy,
            memory_mb=memory_mb,
            timeout=timeout,
            retry_attempts=2,
            max_event_age=Duration.hours(6),
            on_failure=self.failure_queue,
        )
        self.function, self.role = built.function, built.role
        self.log_group, self.errors_alarm = built.log_group, built.errors_alarm

        # The key is used by S3 on the role's behalf only, never called directly. An SSE-KMS key lives in its
        # bucket's region and S3 calls KMS from there: the key's own region, not the stack's.
        through_s3 = {"StringEquals": {"kms:ViaService": f"s3.{key_region(destination_kms_key_arn)}.amazonaws.com"}} \
            if destination_kms_key_arn else {}
        source_objects = [source_bucket.arn_for_objects(f"{source_prefix}*{suffix}") for suffix in shared.SUFFIXES]
        destination_objects = destination_bucket.arn_for_objects(f"{destination_prefix}*")
        self.role.add_to_policy(iam.PolicyStatement(actions=list(SOURCE_READ_ACTIONS), resources=source_objects))
        self.role.add_to_policy(iam.PolicyStatement(actions=list(DESTINATION_ACTIONS), resources=[destination_objects]))
        if destination_kms_key_arn:
            self.role.add_to_policy(iam.PolicyStatement(
                actions=list(DESTINATION_KMS_ACTIONS), resources=[destination_kms_key_arn],
                conditions=through_s3,
            ))

        self.default_bus_arn = Stack.of(self).format_arn(
            service="events", resource="event-bus", resource_name="default",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["events:PutEvents"],
            resources=[self.default_bus_arn],
            # As AWS's example policy for PutEvents limited to one source and detail-type.
            conditions={
                "ForAllValues:StringEquals": {"events:source": [contract.DELIVERED_SOURCE]},
                "StringEquals": {"events:detail-type": contract.DELIVERED_DETAIL_TYPE},
            },
        ))
        self.events_alarm = function_metric_alarm(
            self, "EventsNotPublishedAlarm", topic=alarm_topic, function=self.function,
            metric_name=contract.METRIC_NOT_PUBLISHED,
            description="A workbook was copied but its Workbook Delivered event could not be published; "
                        "the function's log names the key",
        )

        # Deliveries go onto the export runs' items; a workbook put in by hand gets an item of its own. UpdateItem
        # creates an item that does not exist yet, so no PutItem (which could replace an export's item).
        ledger.grant_run_writes(self.role, [*exports, shared.LEDGER_HAND_PARTITION])
        self.ledger_alarm = function_metric_alarm(
            self, "LedgerWritesFailedAlarm", topic=alarm_topic, function=self.function,
            metric_name=shared.METRIC_LEDGER_NOT_WRITTEN,
            description="A delivery could not be recorded in the run ledger (the copy stands); the function's "
                        "log names the key",
        )

        for suffix in shared.SUFFIXES:
            source_bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED, s3n.LambdaDestination(self.function),
                s3.NotificationKeyFilter(suffix=suffix, prefix=source_prefix or None),
            )

        # What the owner of an imported destination bucket (and its key) must allow this role to do.
        principal = {"AWS": self.role.role_arn}
        self.partner_statements = {
            "bucket": {
                "Sid": "AllowXlsxReplicatorCopies", "Effect": "Allow", "Principal": principal,
                "Action": list(DESTINATION_ACTIONS), "Resource": destination_objects,
            },
            "key": {
                "Sid": "AllowXlsxReplicatorEncryption", "Effect": "Allow", "Principal": principal,
                "Action": list(DESTINATION_KMS_ACTIONS), "Resource": "*", "Condition": through_s3,
            },
        }

        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "The function copies whichever new .xlsx object triggered it, so it reads any key ending in "
            ".xlsx/.XLSX under the source prefix and writes the same key under the destination prefix; "
            "actions are listed one by one.",
            findings=[objects_finding(source_bucket, f"{source_prefix}*{suffix}") for suffix in shared.SUFFIXES]
            + [objects_finding(destination_bucket, f"{destination_prefix}*")],
        )
        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for X-Ray PutTraceSegments/PutTelemetryRecords, which take no resource.",
            findings=["Resource::*"],
        )


def key_region(kms_key_arn: str) -> str:
    """The region in a KMS key ARN (``arn:aws:kms:REGION:ACCOUNT:key/ID``); a token's region is resolved at deploy."""
    return Arn.split(kms_key_arn, ArnFormat.SLASH_RESOURCE_NAME).region
