"""Check recorded AWS API calls against the IAM statements a synthesized template grants a role.

Used by the handler tests and the end-to-end run: a call the role would not allow fails them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable


#: moto's account; the local runs resolve ``AWS::AccountId`` to it.
LOCAL_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    via: str | None = None  # the service that makes the call on the caller's behalf (kms:ViaService)
    #: Request context an IAM condition may test: ((key, (values...)), ...).
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _copy_source(params: dict) -> tuple[str, str, str | None]:
    src = params["CopySource"]
    if isinstance(src, dict):
        return src["Bucket"], src["Key"], src.get("VersionId")
    raise AssertionError(f"unexpected CopySource {src!r}")


def _read(bucket: str, key: str, version: str | None) -> Need:
    return Need("s3:GetObjectVersion" if version else "s3:GetObject", _object_arn(bucket, key))


def _write(p: dict, *, creates: bool = True, region: str = "us-east-1") -> list[Need]:
    """PutObject, plus PutObjectAcl when the request sets an ACL
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html), plus the KMS actions S3 uses on the
    caller's behalf for an SSE-KMS write: GenerateDataKey to create, Decrypt for a multipart upload
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html)."""
    needs = [Need("s3:PutObject", _object_arn(p["Bucket"], p["Key"]))]
    if p.get("ACL"):
        needs.append(Need("s3:PutObjectAcl", _object_arn(p["Bucket"], p["Key"])))
    key = p.get("SSEKMSKeyId")
    if key and creates:
        needs.append(Need("kms:GenerateDataKey", key, via=f"s3.{key.split(':')[3]}.amazonaws.com"))
    return needs


def _kms_decrypt(key: str | None) -> list[Need]:
    return [Need("kms:Decrypt", key, via=f"s3.{key.split(':')[3]}.amazonaws.com")] if key else []


# What each API call needs, per the Service Authorization Reference.
NEEDS: dict[str, Callable[[dict], list[Need]]] = {
    "s3.HeadObject": lambda p: [_read(p["Bucket"], p["Key"], p.get("VersionId"))],
    "s3.GetObject": lambda p: [_read(p["Bucket"], p["Key"], p.get("VersionId"))],
    "s3.PutObject": _write,
    "s3.CreateMultipartUpload": lambda p: _write(p) + _kms_decrypt(p.get("SSEKMSKeyId")),
    "s3.UploadPart": lambda p: [Need("s3:PutObject", _object_arn(p["Bucket"], p["Key"]))],
    "s3.CompleteMultipartUpload": lambda p: [Need("s3:PutObject", _object_arn(p["Bucket"], p["Key"]))],
    "s3.AbortMultipartUpload": lambda p: [Need("s3:AbortMultipartUpload", _object_arn(p["Bucket"], p["Key"]))],
    "s3.CopyObject": lambda p: [_read(*_copy_source(p))] + _write(p),
    "s3.UploadPartCopy": lambda p: [_read(*_copy_source(p)),
                                    Need("s3:PutObject", _object_arn(p["Bucket"], p["Key"]))],
    "secretsmanager.GetSecretValue": lambda p: [Need("secretsmanager:GetSecretValue", p["SecretId"])],
    # PutEvents: the event-bus resource, with the events:source and events:detail-type condition keys.
    "events.PutEvents": lambda p: [Need(
        "events:PutEvents",
        f"arn:aws:events:{p['__region__']}:{LOCAL_ACCOUNT}:event-bus/{e.get('EventBusName') or 'default'}",
        context=(("events:source", (e["Source"],)), ("events:detail-type", (e["DetailType"],))),
    ) for e in p["Entries"]],
}


@dataclass
class CallRecorder:
    """Records every API call a boto3 client makes (operation and parameters)."""

    calls: list[tuple[str, dict]] = field(default_factory=list)

    def attach(self, client: Any) -> Any:
        service = client.meta.service_model.service_name
        # 'provide-client-params' sees the caller's own parameters, before botocore rewrites them.
        client.meta.events.register(
            f"provide-client-params.{service}.*",
            lambda params, model, **_: self.calls.append(
                (f"{service}.{model.name}", {**params, "__region__": client.meta.region_name})),
        )
        return client

    def operations(self) -> set[str]:
        return {name for name, _ in self.calls}

    def needs(self) -> list[Need]:
        out = []
        for name, params in self.calls:
            if name not in NEEDS:
                raise AssertionError(f"no IAM mapping for {name}: add it to pipeline_ops/iam.py")
            out += NEEDS[name](params)
        return out


def resolve(value: Any, names: dict[str, str], partition: str = "aws") -> Any:
    """Resolve the intrinsics CDK puts in IAM resources, with ``names`` mapping logical IDs to physical names/ARNs."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            if arg == "AWS::Partition":
                return partition
            if arg in ("AWS::AccountId", "AWS::Region") and not dict.__contains__(names, arg):
                return LOCAL_ACCOUNT if arg == "AWS::AccountId" else "us-east-1"
            return names[arg]
        if fn == "Fn::GetAtt":
            return names[f"{arg[0]}.{arg[1]}"]
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(resolve(p, names, partition) for p in parts)
    raise AssertionError(f"cannot resolve {value!r}")


def role_statements(template: dict, role_logical_id: str, names: dict[str, str]) -> list[dict]:
    """Allow statements of every inline policy attached to the role, with resources resolved."""
    statements = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        if {"Ref": role_logical_id} not in resource["Properties"].get("Roles", []):
            continue
        for st in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            statements.append({
                "Effect": st["Effect"],
                "Action": actions,
                "Resource": [resolve(r, names) for r in resources],
                "Condition": st.get("Condition"),
            })
    return statements


def _conditions_hold(condition: dict | None, need: Need) -> bool:
    """StringEquals (one value) and ForAllValues:StringEquals (every value) against the need's context
    (and kms:ViaService, the service calling on the caller's behalf); any other operator is not
    understood, so the statement is not counted."""
    if not condition:
        return True
    context = dict(need.context)
    if need.via:
        context["kms:ViaService"] = (need.via,)
    for operator, tests in condition.items():
        if operator not in ("StringEquals", "ForAllValues:StringEquals"):
            return False
        for key, expected in tests.items():
            expected = expected if isinstance(expected, list) else [expected]
            values = context.get(key)
            if values is None:
                return False
            if operator == "StringEquals" and (len(values) != 1 or values[0] not in expected):
                return False
            if operator == "ForAllValues:StringEquals" and not all(v in expected for v in values):
                return False
    return True


def allows(statements: list[dict], need: Need) -> bool:
    allowed = False
    for st in statements:
        if not _conditions_hold(st["Condition"], need):
            continue
        if not any(fnmatch.fnmatchcase(need.action.lower(), a.lower()) for a in st["Action"]):
            continue
        if not any(fnmatch.fnmatchcase(need.resource, r) for r in st["Resource"]):
            continue
        if st["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def denied(statements: list[dict], needs: list[Need]) -> list[Need]:
    return sorted({n for n in needs if not allows(statements, n)}, key=lambda n: (n.action, n.resource))
