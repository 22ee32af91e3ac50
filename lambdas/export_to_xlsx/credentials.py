"""Database credentials: an RDS IAM token signed by the function's role, or a Secrets Manager secret.

Both sources answer ``get(refresh=...)`` with :class:`Credentials`; the export asks again with
``refresh=True`` once after a failed login.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from .errors import ExportError

#: A rotated password is picked up at the latest this long after rotation, or at once after a failed login.
CACHE_SECONDS = 300


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    #: True for an RDS IAM token: a bearer credential the connection only sends over verified TLS.
    iam_token: bool = False


class CredentialSource(Protocol):
    def get(self, *, refresh: bool = False) -> Credentials: ...


class IamToken:
    """Credentials for RDS IAM database authentication.

    Every ``get`` signs a fresh token (SigV4, valid 15 minutes) for ``user`` at ``host:port``
    in the RDS client's region with the function's own credentials. Signing is local: no
    network call, no Secrets Manager, nothing cached that could expire.
    """

    def __init__(self, rds_client: Any, *, host: str, port: int, user: str):
        self._client = rds_client
        self._host = host
        self._port = port
        self._user = user

    def get(self, *, refresh: bool = False) -> Credentials:
        try:
            token = self._client.generate_db_auth_token(DBHostname=self._host, Port=self._port, DBUsername=self._user)
        except BotoCoreError as exc:  # e.g. no credentials in the environment
            raise ExportError(f"cannot sign an IAM database token for {self._user!r}: {exc}") from None
        return Credentials(username=self._user, password=token, iam_token=True)


class SecretCache:
    """Reads the RDS-style JSON secret (``username``, ``password``, ...) and caches it."""

    def __init__(self, client: Any, secret_arn: str, *, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._arn = secret_arn
        self._ttl = ttl
        self._clock = clock
        self._value: Credentials | None = None
        self._read_at = 0.0

    def get(self, *, refresh: bool = False) -> Credentials:
        if refresh or self._value is None or self._clock() - self._read_at > self._ttl:
            self._value = self._read()
            self._read_at = self._clock()
        return self._value

    def _read(self) -> Credentials:
        try:
            raw = self._client.get_secret_value(SecretId=self._arn)["SecretString"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Error")
            raise ExportError(f"cannot read the database secret {self._arn}: {code}") from None
        except BotoCoreError as exc:
            raise ExportError(f"cannot reach Secrets Manager for {self._arn}: {exc}") from None
        except KeyError:
            raise ExportError(f"the database secret {self._arn} holds no SecretString") from None
        try:
            data = json.loads(raw)
            return Credentials(username=str(data["username"]), password=str(data["password"]))
        except (ValueError, KeyError, TypeError):
            raise ExportError(
                f"the database secret {self._arn} is not JSON with 'username' and 'password' (the RDS layout)"
            ) from None
