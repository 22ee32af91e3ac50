"""Database credentials from Secrets Manager, cached briefly and refreshed after a failed login."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from .errors import ExportError

#: A rotated password is picked up at the latest this long after rotation, or at once after a failed login.
CACHE_SECONDS = 300


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


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

    def invalidate(self) -> None:
        self._value = None

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
