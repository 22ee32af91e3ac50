"""A bucket with the project's secure defaults baked in."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


class SecureBucket(Construct):
    """An S3 bucket locked down by default.

    Default settings:
    - all public access blocked, ACLs disabled (bucket owner enforced);
    - a bucket policy that denies every request not made over TLS;
    - encrypted at rest with S3-managed keys (SSE-S3);
    - versioned; noncurrent versions expire after ``noncurrent_version_days``;
    - incomplete multipart uploads are aborted after ``abort_multipart_days``;
    - server access logs to ``access_logs_bucket`` when given;
    - ``RemovalPolicy.DESTROY`` also empties the bucket on delete; ``RETAIN`` keeps it.

    Exposes the bucket as ``self.bucket``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        removal_policy: RemovalPolicy,
        bucket_name: str | None = None,
        access_logs_bucket: s3.IBucket | None = None,
        access_logs_prefix: str | None = None,
        noncurrent_version_days: int = 30,
        abort_multipart_days: int = 1,
        expire_objects_days: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if removal_policy not in (RemovalPolicy.DESTROY, RemovalPolicy.RETAIN):
            raise ValueError(f"removal_policy must be DESTROY or RETAIN, got {removal_policy}")
        if noncurrent_version_days < 1 or abort_multipart_days < 1:
            raise ValueError("noncurrent_version_days and abort_multipart_days must be at least 1")
        if expire_objects_days is not None and expire_objects_days < 1:
            raise ValueError("expire_objects_days must be at least 1")
        if access_logs_prefix is not None and access_logs_bucket is None:
            raise ValueError("access_logs_prefix needs access_logs_bucket")

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=access_logs_bucket,
            server_access_logs_prefix=access_logs_prefix,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-multipart-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(abort_multipart_days),
                ),
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                    expired_object_delete_marker=expire_objects_days is None,
                    expiration=Duration.days(expire_objects_days) if expire_objects_days else None,
                ),
            ],
            removal_policy=removal_policy,
            auto_delete_objects=removal_policy == RemovalPolicy.DESTROY,
        )
