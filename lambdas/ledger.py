"""Writing the run ledger (a DynamoDB table of the stack): shared by both functions.

The export records each run with one UpdateItem on ``(export, run_id)``; the replicator adds the
delivery to the same item with a conditional UpdateItem, so a redelivered S3 event never adds a
second one. Both use UpdateItem, never PutItem, so whichever comes first the other's attributes
stay. A ledger write is bookkeeping on top of a run or copy that has already happened: a failure is
logged and counted in a CloudWatch metric (embedded metric format, one line on stdout) that an alarm
watches, and never raised, so a workbook is never lost or made twice because of the ledger.
Names are in ``lambdas/contract.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal
from typing import Any, Mapping

from . import contract

log = logging.getLogger(__name__)

#: A workbook not written by an export gets an item under this partition; its outcome says so.
HAND_OUTCOME = "uploaded by hand"
HAND_TRIGGER = "by hand"


def iso(moment: dt.datetime) -> str:
    """UTC, to the millisecond, with ``Z``: sorts as text in time order."""
    moment = moment.astimezone(dt.timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def expires_at(moment: dt.datetime, history_days: int) -> int:
    return int(moment.timestamp()) + history_days * 86400


def attribute(value: Any) -> dict[str, Any]:
    """DynamoDB's typed JSON for the plain values a ledger item holds."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): attribute(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [attribute(v) for v in value]}
    return {"S": str(value)}


def plain(attribute: Mapping[str, Any]) -> Any:
    """The inverse of :func:`attribute` (for readers such as pipeline-ops)."""
    (kind, value), = attribute.items()
    if kind == "NULL":
        return None
    if kind == "N":
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)
    if kind == "M":
        return {k: plain(v) for k, v in value.items()}
    if kind == "L":
        return [plain(v) for v in value]
    return value


def item_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in raw.items()}


def count_failure(function_name: str, out: Any = None) -> None:
    """``LedgerWritesFailed`` = 1 for this function (:func:`contract.put_metric`)."""
    contract.put_metric(function_name, contract.METRIC_LEDGER_NOT_WRITTEN, 1, out)


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, Mapping) else None


class Ledger:
    """The table ``table`` through the DynamoDB client ``client``; failures counted for ``function_name``."""

    def __init__(self, client: Any, table: str, *, function_name: str, history_days: int, out: Any = None):
        self.client = client
        self.table = table
        self.function_name = function_name
        self.history_days = history_days
        self.out = out

    def _failed(self, what: str, key: Mapping[str, str], exc: Exception) -> None:
        log.error(json.dumps({"ledger": "not written", "what": what, **key, "error": _reason(exc)}))
        count_failure(self.function_name, self.out)

    def record_run(self, export: str, run: str, fields: Mapping[str, Any], started: dt.datetime) -> bool:
        """Set the run's own attributes on its item (one UpdateItem). False (logged, counted) on failure."""
        values = {**fields, contract.LEDGER_EXPIRES: expires_at(started, self.history_days)}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        expression = "SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values)))
        key = {contract.LEDGER_EXPORT: export, contract.LEDGER_RUN_ID: run}
        try:
            self.client.update_item(
                TableName=self.table,
                Key={k: {"S": v} for k, v in key.items()},
                UpdateExpression=expression,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={f":v{i}": attribute(v) for i, v in enumerate(values.values())},
            )
        except Exception as exc:  # noqa: BLE001 - any failure is counted, never raised (the run stands)
            self._failed("run", key, exc)
            return False
        return True

    def record_delivery(self, export: str, run: str, delivery: Mapping[str, Any], *,
                        hand: Mapping[str, Any] | None = None, started: dt.datetime | None = None) -> str:
        """Add ``delivery`` to the run's item unless it has one: ``"recorded"``, ``"already recorded"`` (a
        redelivered event) or ``"not written"`` (logged, counted). ``hand``: the attributes of a workbook put
        in by hand, whose item this creates."""
        values: dict[str, Any] = {contract.LEDGER_DELIVERY: delivery}
        sets = ["#a0 = :v0"]
        if hand is not None:
            extra = {**hand, contract.LEDGER_EXPIRES: expires_at(started or dt.datetime.now(dt.timezone.utc),
                                                                 self.history_days)}
            for name, value in extra.items():
                i = len(values)
                values[name] = value
                sets.append(f"#a{i} = if_not_exists(#a{i}, :v{i})")
        names = {f"#a{i}": name for i, name in enumerate(values)}
        key = {contract.LEDGER_EXPORT: export, contract.LEDGER_RUN_ID: run}
        try:
            self.client.update_item(
                TableName=self.table,
                Key={k: {"S": v} for k, v in key.items()},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_not_exists(#a0)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={f":v{i}": attribute(v) for i, v in enumerate(values.values())},
            )
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) == "ConditionalCheckFailedException":
                return "already recorded"
            self._failed("delivery", key, exc)
            return "not written"
        return "recorded"
