"""Replay what waits in the failure queues: each original event goes back to its function, once.

A message is Lambda's on-failure record of an asynchronous invocation, whose ``requestPayload``
is the original event (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html),
or, in the failed-exports queue, EventBridge's dead letter of a schedule, which is the rule's
``{"export": NAME}`` input itself with the error in message attributes
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-event-delivery.html#eb-rule-dlq),
or EventBridge Scheduler's dead letter, which is likewise the schedule's input with its context
attributes filled in (``{"export", "params", "schedule": {"name", "scheduled_time"}}``) and the error in
the attributes ``ERROR_CODE``, ``ERROR_MESSAGE``, ``EXHAUSTED_RETRY_CONDITION``, ``SCHEDULE_ARN``, ... and
``IS_PAYLOAD_TRUNCATED`` (https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html);
a truncated one is not replayed. A replayed
scheduled run keeps its schedule and scheduled time: it reads the day it was planned for, records its
run where the deadline check looks, and ``status`` shows whether it made its deadline.
A message is deleted only after the function, invoked synchronously with that event, succeeded;
one that fails, or that holds no event to replay, stays in the queue (made visible again at the end).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote_plus

from lambdas.contract import EVENT_KEYS, EVENT_TRIGGER
from pipeline_ops.aws import INVOKE_CONFIG, OPTIONAL_OUTPUTS, Deployment, OperatorError, calling, invoke

BATCH = 10
#: Long enough for every message of a batch to be replayed (each invoke waits up to 16 minutes)
#: before SQS shows it again; whatever is not deleted is made visible again when the replay ends.
BATCH_VISIBILITY_SECONDS = BATCH * INVOKE_CONFIG["read_timeout"]
DRY_RUN_VISIBILITY_SECONDS = 60


def _copy_subject(event: dict) -> str:
    records = event.get("Records") if isinstance(event, dict) else None
    keys = [unquote_plus(str(r.get("s3", {}).get("object", {}).get("key", "?"))) for r in records or []
            if isinstance(r, dict)]
    return ", ".join(keys) or "(no S3 records)"


def _export_subject(event: dict) -> str:
    name = event.get("export") or "(every export)"
    params = event.get("params")
    schedule = event.get("schedule")
    if isinstance(schedule, dict):  # Scheduler's event: which schedule, for when
        name = f"{name} ({schedule.get('name')} at {schedule.get('scheduled_time')})"
    return f"{name} {json.dumps(params, sort_keys=True)}" if params else str(name)


@dataclass(frozen=True)
class FailureQueue:
    label: str
    queue_output: str
    function_output: str
    subject: Callable[[dict], str]
    plain_event_keys: frozenset[str] = frozenset()  # a body that is an event of these keys (a dead letter)


#: Every failure queue a stack may have; the export's one exists in stacks that output its URL.
FAILURE_QUEUES = (
    FailureQueue("failed copies", "FailedCopiesQueueUrl", "ReplicatorFunctionName", _copy_subject),
    FailureQueue("failed exports", "FailedExportsQueueUrl", "ExportFunctionName", _export_subject,
                 plain_event_keys=frozenset(EVENT_KEYS)),
)


def present_queues(deployment: Deployment) -> list[tuple[FailureQueue, str]]:
    """The failure queues this deployment has, with their URLs; the failed-copies one is required."""
    return [(q, deployment.output(q.queue_output)) for q in FAILURE_QUEUES
            if q.queue_output not in OPTIONAL_OUTPUTS or q.queue_output in deployment.outputs]


@dataclass(frozen=True)
class Waiting:
    """One message of a failure queue: the event to replay (None if it holds none), what it is about and why."""

    message_id: str
    receipt_handle: str
    event: dict | None
    subject: str
    reason: str


def read_message(queue: FailureQueue, message: dict) -> Waiting:
    attributes = {k: v.get("StringValue") for k, v in message.get("MessageAttributes", {}).items()}
    try:
        body: Any = json.loads(message["Body"])
    except ValueError:
        body = None
    handle, mid = message["ReceiptHandle"], message["MessageId"]
    if isinstance(body, dict) and isinstance(body.get("requestPayload"), dict):
        event = body["requestPayload"]
        response = body.get("responsePayload")
        condition = (body.get("requestContext") or {}).get("condition")
        error = response.get("errorMessage") if isinstance(response, dict) else None
        reason = ": ".join(str(p) for p in (condition, error) if p) or "no reason recorded"
        return Waiting(mid, handle, event, queue.subject(event), reason)
    why = ": ".join(a for a in (attributes.get("EXHAUSTED_RETRY_CONDITION"), attributes.get("ERROR_CODE"),
                                attributes.get("ERROR_MESSAGE")) if a)
    if attributes.get("IS_PAYLOAD_TRUNCATED") == "true":  # Scheduler cut the body: not the schedule's input
        return Waiting(mid, handle, None, "(unknown)",
                       f"holds no event to replay (its payload was truncated{'; ' + why if why else ''}): "
                       "left in the queue")
    if queue.plain_event_keys and isinstance(body, dict) and "export" in body and set(body) <= queue.plain_event_keys:
        return Waiting(mid, handle, body, queue.subject(body), why or "no reason recorded")
    return Waiting(mid, handle, None, "(unknown)",
                   "holds no event to replay" + (f" ({why})" if why else "") + ": left in the queue")


@dataclass(frozen=True)
class Outcome:
    queue: str
    subject: str
    reason: str
    result: str  # "replayed", "would replay", "failed: ...", "left"

    @property
    def ok(self) -> bool:
        return self.result in ("replayed", "would replay")


def replay(deployment: Deployment, *, dry_run: bool, on_outcome: Callable[[Outcome], None] = lambda o: None
           ) -> list[Outcome]:
    """Replay every message of every failure queue (or only list them with ``dry_run``)."""
    sqs = deployment.client("sqs")
    lambda_client = deployment.client("lambda", **INVOKE_CONFIG)
    outcomes: list[Outcome] = []
    for queue, url in present_queues(deployment):
        function_name = deployment.output(queue.function_output)
        undeleted: dict[str, str] = {}  # message id -> latest receipt handle; shown again at the end
        try:
            while True:
                with calling(f"reading the {queue.label} queue"):
                    batch = sqs.receive_message(
                        QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=1, MessageAttributeNames=["All"],
                        VisibilityTimeout=DRY_RUN_VISIBILITY_SECONDS if dry_run else BATCH_VISIBILITY_SECONDS,
                    ).get("Messages", [])
                new = [m for m in batch if m["MessageId"] not in undeleted]
                undeleted.update({m["MessageId"]: m["ReceiptHandle"] for m in batch})
                if not new:
                    break
                for message in new:
                    outcome = _replay_one(sqs, lambda_client, url, function_name, queue,
                                          read_message(queue, message), dry_run)
                    if outcome.result == "replayed":
                        undeleted.pop(message["MessageId"])
                    outcomes.append(outcome)
                    on_outcome(outcome)
        finally:
            for handle in undeleted.values():
                with calling(f"showing a message of the {queue.label} queue again"):
                    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    return outcomes


def _replay_one(sqs: Any, lambda_client: Any, url: str, function_name: str, queue: FailureQueue,
                waiting: Waiting, dry_run: bool) -> Outcome:
    if waiting.event is None:
        return Outcome(queue.label, waiting.subject, waiting.reason, "left")
    if dry_run:
        return Outcome(queue.label, waiting.subject, waiting.reason, "would replay")
    event = waiting.event
    if isinstance(event, dict) and "Records" not in event:  # an export's event: its ledger item says "replay"
        event = {**event, EVENT_TRIGGER: "replay"}
    try:
        answer = invoke(lambda_client, function_name, event)
    except OperatorError as exc:  # throttled, timed out, denied: this message stays, the others go on
        return Outcome(queue.label, waiting.subject, waiting.reason, f"failed: {exc}")
    if not answer.ok:
        return Outcome(queue.label, waiting.subject, waiting.reason, f"failed: {answer.error}")
    try:
        with calling(f"deleting a replayed message from the {queue.label} queue"):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=waiting.receipt_handle)
    except OperatorError as exc:  # replayed but still waiting: a copy replayed again is skipped, an export reruns
        return Outcome(queue.label, waiting.subject, waiting.reason, f"failed: replayed, not deleted: {exc}")
    return Outcome(queue.label, waiting.subject, waiting.reason, "replayed")
