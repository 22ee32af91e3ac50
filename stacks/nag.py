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


def nag_text(stack: Stack, value: object) -> str:
    """``value`` (a string that may hold tokens) as cdk-nag prints it in a finding:
    ``{"Ref": X}`` as ``<X>``, ``{"Fn::GetAtt": [A, B]}`` as ``<A.B>``, joins concatenated."""
    resolved = stack.resolve(value)

    def text(part: object) -> str:
        if isinstance(part, str):
            return part
        if isinstance(part, dict) and "Ref" in part:
            return f"<{part['Ref']}>"
        if isinstance(part, dict) and "Fn::GetAtt" in part:
            return f"<{'.'.join(part['Fn::GetAtt'])}>"
        if isinstance(part, dict) and "Fn::Join" in part:
            separator, parts = part["Fn::Join"]
            return separator.join(text(p) for p in parts)
        raise ValueError(f"cannot render {part!r} as cdk-nag does")

    return text(resolved)


def acknowledge_cdk_helper(function: IConstruct, reason: str, *, wildcard_findings: list[str] = ()) -> None:
    """Acknowledge what cdk-nag finds in one of CDK's own singleton helper functions: the basic
    execution managed policy on its role, and the given wildcard resources of its policy."""
    role = function.node.find_child("ServiceRole")
    acknowledge(role, "IAM4", reason,
                findings=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"])
    if wildcard_findings:
        acknowledge(role.node.find_child("DefaultPolicy"), "IAM5", reason, findings=list(wildcard_findings))
