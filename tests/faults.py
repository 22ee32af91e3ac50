"""Injecting AWS error answers into a boto3 client (moto does not refuse or throttle on its own)."""

from __future__ import annotations

import io

from botocore.awsrequest import AWSResponse


class _Raw(io.BytesIO):
    def stream(self, **_):
        yield self.getvalue()


def s3_error(status: int, code: str, message: str | None = None) -> AWSResponse:
    """An S3 error response; return it from a ``before-send`` handler to stand in for the service's answer."""
    xml = f"<Error><Code>{code}</Code><Message>{message or code}</Message></Error>".encode()
    return AWSResponse("https://s3.amazonaws.com/", status, {"Content-Type": "application/xml"}, _Raw(xml))
