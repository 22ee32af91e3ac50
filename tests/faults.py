"""Injecting AWS error answers into a boto3 client (moto does not refuse or throttle on its own)."""

from __future__ import annotations

import io
import json

from botocore.awsrequest import AWSResponse


class _Raw(io.BytesIO):
    def stream(self, **_):
        yield self.getvalue()


def s3_error(status: int, code: str, message: str | None = None) -> AWSResponse:
    """An S3 error response; return it from a ``before-send`` handler to stand in for the service's answer."""
    xml = f"<Error><Code>{code}</Code><Message>{message or code}</Message></Error>".encode()
    return AWSResponse("https://s3.amazonaws.com/", status, {"Content-Type": "application/xml"}, _Raw(xml))


def lambda_answer(payload: object, function_error: str | None = None) -> AWSResponse:
    """Lambda's answer to a synchronous Invoke: the function's JSON result, or its error object with
    ``X-Amz-Function-Error`` (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html)."""
    headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
    if function_error:
        headers["X-Amz-Function-Error"] = function_error
    return AWSResponse("https://lambda.amazonaws.com/", 200, headers, _Raw(json.dumps(payload).encode()))


def query_error(status: int, code: str, message: str) -> AWSResponse:
    """An error answer of a query-protocol service such as CloudFormation."""
    xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
           "<RequestId>0</RequestId></ErrorResponse>").encode()
    return AWSResponse("https://aws.amazon.com/", status, {"Content-Type": "text/xml"}, _Raw(xml))


def rest_json_error(status: int, code: str, message: str) -> AWSResponse:
    """An error answer of a REST-JSON service such as Lambda (the error type in ``x-amzn-ErrorType``)."""
    body = json.dumps({"Type": "User", "message": message}).encode()
    return AWSResponse("https://lambda.amazonaws.com/", status,
                       {"Content-Type": "application/json", "x-amzn-ErrorType": code}, _Raw(body))
