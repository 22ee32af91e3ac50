"""The contract between the stack and the replicator function.

The one place that names the environment variables the function reads; the CDK
construct imports the names to set them and a test checks both sides agree.
Stdlib only: imported by the stack at synth time and by the function at cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

ENV_SOURCE_BUCKET = "SOURCE_BUCKET"
ENV_DESTINATION_BUCKET = "DESTINATION_BUCKET"
ENV_DESTINATION_PREFIX = "DESTINATION_PREFIX"

#: Every variable the function reads; the stack must set exactly these.
ENV_NAMES = frozenset({ENV_SOURCE_BUCKET, ENV_DESTINATION_BUCKET, ENV_DESTINATION_PREFIX})

#: Only keys with this ending (compared case-insensitively) are copied.
SUFFIX = ".xlsx"


class ConfigurationError(ValueError):
    """The function's environment is missing a variable or holds a bad value."""


@dataclass(frozen=True)
class Settings:
    source_bucket: str
    destination_bucket: str
    destination_prefix: str


def load_settings(environ: Mapping[str, str]) -> Settings:
    missing = sorted(n for n in (ENV_SOURCE_BUCKET, ENV_DESTINATION_BUCKET) if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    source = environ[ENV_SOURCE_BUCKET]
    destination = environ[ENV_DESTINATION_BUCKET]
    if destination.startswith("arn:"):
        destination = destination.rsplit(":", 1)[-1]
    if destination == source:
        raise ConfigurationError(
            f"{ENV_DESTINATION_BUCKET} resolves to the source bucket {source!r}: refusing to copy a bucket onto itself"
        )
    prefix = environ.get(ENV_DESTINATION_PREFIX, "")
    if prefix.startswith("/"):
        raise ConfigurationError(f"{ENV_DESTINATION_PREFIX} must not start with '/', got {prefix!r}")
    return Settings(source_bucket=source, destination_bucket=destination, destination_prefix=prefix)
