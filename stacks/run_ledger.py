"""RunLedger: the DynamoDB table holding one item per export run (and per workbook put in by hand)."""

from __future__ import annotations

from typing import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from lambdas import contract


class RunLedger(Construct):
    """The run ledger: partition key ``export``, sort key ``run_id`` (names in ``lambdas/contract.py``).

    Default settings:
    - on-demand capacity (PAY_PER_REQUEST): a few writes per run, nothing to size;
    - point-in-time recovery on;
    - encrypted at rest with the AWS managed key for DynamoDB (``aws/dynamodb``), so its use shows in
      CloudTrail (DynamoDB always encrypts; this names the key);
    - items expire ``history_days`` after their run (TTL attribute ``expires_at``);
    - the stack's removal policy (kept with the buckets where it is ``retain``).

    ``grant_run_writes``: UpdateItem only, on items whose partition key is one of ``partitions``
    (``dynamodb:LeadingKeys``); ``grant_queries``: Query only, on those partitions. Raises ValueError
    on a bad ``history_days``. Exposes ``table``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy,
                 history_days: int = contract.DEFAULT_HISTORY_DAYS) -> None:
        super().__init__(scope, construct_id)
        if history_days < 1:
            raise ValueError(f"history_days must be at least 1, got {history_days}")
        self.history_days = history_days
        self.table = dynamodb.Table(
            self, "Table",
            partition_key=dynamodb.Attribute(name=contract.LEDGER_EXPORT, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=contract.LEDGER_RUN_ID, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=contract.LEDGER_EXPIRES,
            removal_policy=removal_policy,
        )

    def grant_run_writes(self, grantee: iam.IGrantable, partitions: Sequence[str]) -> None:
        """UpdateItem (never PutItem, which would replace an item the other function completed) on the
        items of ``partitions`` only: ``ForAllValues:StringEquals`` on ``dynamodb:LeadingKeys``
        (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html)."""
        if not partitions:
            raise ValueError("partitions must name at least one partition key value")
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["dynamodb:UpdateItem"], resources=[self.table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": sorted(partitions)}},
        ))

    def grant_queries(self, grantee: iam.IGrantable, partitions: Sequence[str]) -> None:
        """Query (no GetItem, Scan or write) on the items of ``partitions`` only: ``dynamodb:LeadingKeys``
        limits a Query to the partition key values it names, as it limits writes."""
        if not partitions:
            raise ValueError("partitions must name at least one partition key value")
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["dynamodb:Query"], resources=[self.table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": sorted(partitions)}},
        ))
