"""cdk-nag acknowledgments: each on the one resource it concerns, with the reason a reviewer reads."""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnElement, Stack, Validations
from aws_cdk.aws_s3 import IBucket
from constructs import IConstruct

PACK = "AwsSolutions"


def acknowledge(resource: IConstruct, rule: str, reason: str, *, findings: list[str] | None = None) -> None:
    """Acknowledge AwsSolutions ``rule`` on ``resource`` (an L1, or an L2 whose default child is meant).

    ``findings`` names the exact findings of a rule that reports one per value, such as
    IAM5's ``Resource::<Bucket.Arn>/prefix/*`` (see :func:`objects_finding`).
    """
    target = resource.node.default_child or resource
    ids = [f"{PACK}-{rule}"] if not findings else [f"{PACK}-{rule}[{f}]" for f in findings]
    for rule_id in ids:
        Validations.of(target).acknowledge(Acknowledgment(id=f"{PACK}::{rule_id}", reason=reason))


def objects_finding(bucket: IBucket, key_pattern: str) -> str:
    """IAM5's finding for a grant on ``key_pattern`` in ``bucket``, as cdk-nag prints it."""
    cfn = bucket.node.default_child
    if isinstance(cfn, CfnElement):
        stack = Stack.of(cfn)
        return f"Resource::<{stack.resolve(stack.get_logical_id(cfn))}.Arn>/{key_pattern}"
    arn = Stack.of(bucket).resolve(bucket.bucket_arn)  # plain text when the stack's partition is known
    if isinstance(arn, str):
        return f"Resource::{arn}/{key_pattern}"
    return f"Resource::arn:<AWS::Partition>:s3:::{bucket.bucket_name}/{key_pattern}"
