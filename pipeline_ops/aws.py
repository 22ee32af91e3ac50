"""Find a deployed environment: its config (cdk.json), an AWS session, its stack outputs; AWS errors in plain words.

Credentials and region resolve as every AWS tool does (``--profile``/``AWS_PROFILE``, environment
variables, SSO, instance roles; ``AWS_ENDPOINT_URL`` is honoured too). The region is, in order:
``--region``, the environment's ``region`` in cdk.json, then the profile's or ``AWS_REGION``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import boto3
import botocore.exceptions
from botocore.config import Config

from pipeline_ops.synth import CDK_JSON
from stacks.config import CONTEXT_KEY, ConfigError, EnvironmentConfig, load_environment

#: The stack outputs the commands read (stacks/pipeline_stack.py); the optional ones exist in newer stacks only.
OUTPUTS = ("SourceBucketName", "DestinationBucketName", "ExportFunctionName", "ReplicatorFunctionName",
           "FailedCopiesQueueUrl", "FailedExportsQueueUrl", "AlarmNames", "RunLedgerTableName")
OPTIONAL_OUTPUTS = frozenset({"FailedExportsQueueUrl", "RunLedgerTableName"})

#: IAM actions of calls whose AccessDenied answer does not name one (S3 answers 403 with no message).
ACTIONS = {"ListObjectsV2": "s3:ListBucket", "HeadObject": "s3:GetObject", "GetObject": "s3:GetObject",
           "Query": "dynamodb:Query", "GetItem": "dynamodb:GetItem"}

_NOT_AUTHORIZED_RE = re.compile(r"not authorized to perform:? ([\w-]+:[\w*]+)")


class OperatorError(Exception):
    """Something the operator must fix; the message says what, in one line or two."""


def load_config(env: str) -> EnvironmentConfig:
    try:
        return load_environment({CONTEXT_KEY: CDK_JSON["context"].get(CONTEXT_KEY)}, env)
    except ConfigError as exc:
        raise OperatorError(f"cdk.json: {exc}") from None


def explain(exc: Exception, doing: str) -> OperatorError:
    """``exc`` from botocore as one sentence naming what failed and what to do."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return OperatorError(f"{doing}: no AWS credentials found. Use --profile or AWS_PROFILE, `aws sso login`, "
                             "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return OperatorError(f"{doing}: {exc}")
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return OperatorError(f"{doing}: no AWS region: give --region, AWS_REGION, or the environment's region "
                             "in cdk.json.")
    if isinstance(exc, (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOError)):
        return OperatorError(f"{doing}: the AWS credentials cannot be refreshed ({exc}); log in again.")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return OperatorError(f"{doing}: cannot reach AWS ({exc}).")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
            return OperatorError(f"{doing}: the AWS credentials have expired; log in again.")
        if code in ("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                    "InvalidSignatureException"):
            return OperatorError(f"{doing}: AWS does not accept these credentials ({code}).")
        if "AccessDenied" in code or code in ("AuthorizationError", "UnauthorizedOperation", "Forbidden") \
                or status == 403:
            named = _NOT_AUTHORIZED_RE.search(message)
            action = named.group(1) if named else ACTIONS.get(exc.operation_name, exc.operation_name)
            return OperatorError(f"{doing}: permission denied: your credentials lack {action}. "
                                 f"Ask for it or use another --profile.")
        return OperatorError(f"{doing}: {code or exc.operation_name}: {message}")
    return OperatorError(f"{doing}: {exc}")


@contextlib.contextmanager
def calling(doing: str) -> Iterator[None]:
    """Turn botocore's exceptions raised inside into an :class:`OperatorError` saying what was being done."""
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, doing) from None


SessionFactory = Callable[..., boto3.Session]


@dataclass
class Deployment:
    """One environment as deployed: its config, a session in its region and its stack's outputs."""

    config: EnvironmentConfig
    session: boto3.Session
    outputs: dict[str, str]

    def output(self, key: str) -> str:
        if key not in OUTPUTS:
            raise KeyError(f"{key} is not listed in OUTPUTS")  # a programming error, not the operator's
        if key not in self.outputs:
            raise OperatorError(f"the stack {self.config.stack_name} has no output {key}: deploy this version "
                                f"of the app first (`npx cdk deploy -c env={self.config.name}`)")
        return self.outputs[key]

    def client(self, service: str, **config: Any) -> Any:
        with calling(f"creating the {service} client"):
            return self.session.client(service, config=Config(**config) if config else None)


def connect(env: str | EnvironmentConfig, *, profile: str | None = None, region: str | None = None,
            session_factory: SessionFactory = boto3.Session) -> Deployment:
    """The deployed environment ``env`` (its name, or its config read already), found from cdk.json and its
    CloudFormation stack's outputs."""
    config = load_config(env) if isinstance(env, str) else env
    with calling("reading the AWS configuration"):
        # boto3 reads AWS_DEFAULT_REGION itself but not AWS_REGION, which the help and errors name
        session = session_factory(profile_name=profile,
                                  region_name=region or config.region or os.environ.get("AWS_REGION") or None)
    where = session.region_name or "the default region"
    cloudformation = Deployment(config, session, {}).client("cloudformation")
    try:
        stacks = cloudformation.describe_stacks(StackName=config.stack_name)["Stacks"]
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise OperatorError(f"the stack {config.stack_name} is not deployed in {where}: deploy it with "
                                f"`npx cdk deploy -c env={config.name}`, or choose the region with --region"
                                ) from None
        raise explain(exc, f"reading the stack {config.stack_name} in {where}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise explain(exc, f"reading the stack {config.stack_name} in {where}") from None
    stack = stacks[0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    if not outputs:
        raise OperatorError(f"the stack {config.stack_name} in {where} has no outputs (status "
                            f"{stack.get('StackStatus')}): wait for its deployment to finish")
    return Deployment(config, session, outputs)


#: A synchronous invoke waits for the function's whole run (Lambda allows 15 minutes) and is never retried
#: by the SDK: a retried invoke after a read timeout would run an export twice.
INVOKE_CONFIG = {"read_timeout": 15 * 60 + 60, "connect_timeout": 10, "retries": {"total_max_attempts": 1}}


@dataclass(frozen=True)
class Invocation:
    ok: bool
    answer: Any  # the function's JSON answer (its result, or Lambda's error object)
    error: str | None = None  # the function's own error message when it failed


def invoke(lambda_client: Any, function_name: str, event: dict) -> Invocation:
    """Invoke ``function_name`` synchronously with ``event``; a failed run comes back with its ``errorMessage``."""
    with calling(f"invoking {function_name}"):
        response = lambda_client.invoke(FunctionName=function_name, InvocationType="RequestResponse",
                                        Payload=json.dumps(event).encode())
        body = response["Payload"].read()
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        answer = body.decode("utf-8", "replace")
    if response.get("FunctionError"):
        message = answer.get("errorMessage") if isinstance(answer, dict) else answer
        kind = answer.get("errorType") if isinstance(answer, dict) else None
        error = str(message or f"{response['FunctionError']} error")
        return Invocation(False, answer, f"{kind}: {error}" if kind and kind not in error else error)
    return Invocation(True, answer)
