"""``pipeline-ops``: one command for the operators of an environment's pipeline.

Every command but ``local`` finds the environment from cdk.json (``--env``, default dev) and its
CloudFormation stack's outputs, with the usual AWS credentials (``--profile``/``AWS_PROFILE``) and
region (``--region``, the environment's region in cdk.json, ``AWS_REGION``). Exit codes: 0 all
well, 1 something failed or needs attention, 2 a usage error.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import boto3
import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lambdas.contract import EVENT_EXPORT, EVENT_PARAMS, EVENT_TRIGGER
from pipeline_ops.aws import (INVOKE_CONFIG, Deployment, Invocation, OperatorError, SessionFactory, calling, connect,
                              invoke, load_config)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass
class Tools:
    """What the commands use to reach AWS; tests give a session factory whose Lambda answers are a double."""

    session_factory: SessionFactory = boto3.Session


def aws_command(fn: Callable | None = None, *, precheck: Callable[..., None] | None = None) -> Callable:
    """Options every deployed-environment command takes; an :class:`OperatorError` becomes ``error: ...``, exit 1.

    ``precheck(config, **options)`` checks the options against cdk.json before any AWS call."""
    if fn is None:
        return functools.partial(aws_command, precheck=precheck)

    @click.option("--env", "env", default="dev", show_default=True, metavar="ENV",
                  help="The environment's name in cdk.json.")
    @click.option("--profile", help="AWS profile (default: AWS_PROFILE or the default credentials).")
    @click.option("--region", help="AWS region (default: the environment's region in cdk.json, then AWS_REGION).")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, env: str, profile: str | None, region: str | None, **kwargs: Any) -> None:
        tools = ctx.find_object(Tools) or Tools()
        try:
            config = load_config(env)
            if precheck is not None:
                precheck(config, **kwargs)
            deployment = connect(config, profile=profile, region=region, session_factory=tools.session_factory)
            with calling(f"{ctx.info_name} in {env}"):  # any AWS error a step did not word itself
                code = fn(deployment, **kwargs)
        except OperatorError as exc:
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
            ctx.exit(1)
        ctx.exit(code or 0)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mysql-xlsx-pipeline-ops", prog_name="pipeline-ops")
def cli() -> None:
    """Run, backfill, replay and check the MySQL → .xlsx → S3 pipeline of an environment, or run it all locally."""


# --- run and backfill ------------------------------------------------------------------------------


def parse_params(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict; a click callback, so a bad one stops before any AWS call."""
    params = {}
    for value in values:
        name, sep, given = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint="--param")
        if name in params:
            raise click.BadParameter(f"{name!r} given twice", param_hint="--param")
        params[name] = given
    return params


def export_event(config: Any, export: str, params: dict[str, str]) -> dict:
    """The function's event for ``export`` with ``params``, checked against cdk.json with the function's own
    parameter parser: an unknown export or a bad value stops here, before any AWS call."""
    from lambdas.export_to_xlsx.params import ParameterError, resolve

    exports = {e.name: e for e in config.exports}
    if export not in exports:
        raise OperatorError(f"unknown export {export!r} in environment {config.name}; "
                            f"configured: {', '.join(exports)}")
    definition = exports[export]
    try:
        resolve(definition.parameters, params, dt.datetime.now(dt.timezone.utc), definition.time_zone, export=export)
    except ParameterError as exc:
        raise OperatorError(str(exc)) from None
    return {EVENT_EXPORT: export, EVENT_PARAMS: params} if params else {EVENT_EXPORT: export}


def _check_run(config: Any, export: str, params: dict[str, str]) -> None:
    export_event(config, export, params)


def _check_backfill(config: Any, export: str, params: tuple[str, list[str], dict[str, str]], **_: Any) -> None:
    name, days, fixed = params
    for day in days:
        export_event(config, export, {**fixed, name: day})


def run_export(deployment: Deployment, event: dict) -> Invocation:
    client = deployment.client("lambda", **INVOKE_CONFIG)
    return invoke(client, deployment.output("ExportFunctionName"), event)


def _uploads(answer: Any) -> list[dict]:
    return answer.get("exports", []) if isinstance(answer, dict) else []


@cli.command()
@click.argument("export")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A run-time parameter; repeatable.",
              callback=lambda ctx, param, values: parse_params(values))
@aws_command(precheck=_check_run)
def run(deployment: Deployment, export: str, params: dict[str, str]) -> int:
    """Run EXPORT now and print what it uploaded; exit 1 with the function's own error when it fails."""
    event = export_event(deployment.config, export, params)
    with err.status(f"running {export} in {deployment.config.name} ..."):
        result = run_export(deployment, event)
    if not result.ok:
        err.print(f"error: export {export} failed: {result.error}", markup=False, soft_wrap=True)
        return 1
    for upload in _uploads(result.answer):
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for field in ("export", "outcome", "bucket", "key", "rows", "sheets", "bytes", "seconds"):
            table.add_row(field, escape(str(upload.get(field, ""))))
        table.add_row("params", escape(_params_text(upload.get("params", event.get("params")))))
        out.print(table)
    return 0


def _params_text(params: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) if isinstance(params, dict) and params else "-"


def parse_range(values: tuple[str, ...]) -> tuple[str, list[str], dict[str, str]]:
    """``NAME=FROM..TO`` (days, both included) among the ``--param`` values: (name, days, the other params);
    a click callback, so a bad range stops before any AWS call."""
    fixed, ranges = {}, {}
    for name, value in parse_params(values).items():
        (ranges if ".." in value else fixed)[name] = value
    if len(ranges) != 1:
        raise click.BadParameter("give exactly one NAME=FROM..TO range, e.g. day=2026-11-01..2026-11-07",
                                 param_hint="--param")
    (name, value), = ranges.items()
    first, _, last = value.partition("..")
    try:
        start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    except ValueError:
        raise click.BadParameter(f"{name}={value}: FROM and TO must be dates like 2026-11-01",
                                 param_hint="--param") from None
    if end < start:
        raise click.BadParameter(f"{name}={value}: TO is before FROM", param_hint="--param")
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    return name, days, fixed


@cli.command()
@click.argument("export")
@click.option("--param", "params", multiple=True, required=True, metavar="NAME=FROM..TO",
              help="The day range (both ends included); other NAME=VALUE parameters are sent with every run.",
              callback=lambda ctx, param, values: parse_range(values))
@click.option("--continue-on-error", is_flag=True, help="Run the remaining days after a failed one.")
@aws_command(precheck=_check_backfill)
def backfill(deployment: Deployment, export: str, params: tuple[str, list[str], dict[str, str]],
             continue_on_error: bool) -> int:
    """Run EXPORT once per day of a range, one after the other, and print what ran, what failed and why."""
    name, days, fixed = params
    results: dict[str, Invocation] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        task = progress.add_task(f"{export} {name}", total=len(days))
        for day in days:
            progress.update(task, description=f"{export} {name}={day}")
            try:
                event = {**export_event(deployment.config, export, {**fixed, name: day}), EVENT_TRIGGER: "backfill"}
                results[day] = run_export(deployment, event)
            except OperatorError as exc:  # throttled, timed out, denied: this day failed, the table still prints
                results[day] = Invocation(ok=False, answer=None, error=str(exc))
            progress.advance(task)
            if not results[day].ok and not continue_on_error:
                break
    table = Table(title=f"backfill of {export}, {name} {days[0]}..{days[-1]}")
    for column in (name, "outcome", "key", "rows", "seconds"):
        table.add_column(column, overflow="fold")
    for day in days:
        result = results.get(day)
        if result is None:
            table.add_row(day, "not run", "", "", "")
        elif not result.ok:
            table.add_row(day, "[red]failed[/red]", escape(result.error or ""), "", "")
        else:
            for upload in _uploads(result.answer) or [{}]:
                table.add_row(day, escape(str(upload.get("outcome", "uploaded"))), escape(str(upload.get("key", ""))),
                              str(upload.get("rows", "")), str(upload.get("seconds", "")))
    out.print(table)
    failed = sum(1 for r in results.values() if not r.ok)
    out.print(f"{len(results) - failed} succeeded, {failed} failed, {len(days) - len(results)} not run "
              f"of {len(days)} day(s)")
    return 1 if failed or len(results) < len(days) else 0


# --- replay and status -----------------------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what waits; replay and delete nothing.")
@aws_command
def replay(deployment: Deployment, dry_run: bool) -> int:
    """Re-drive every event waiting in the failure queues; delete each message only once its replay succeeded."""
    from pipeline_ops.replay import replay as replay_all

    table = Table(title=f"failure queues of {deployment.config.stack_name}" + (" (dry run)" if dry_run else ""))
    for column in ("queue", "key / export", "why it failed", "replay"):
        table.add_column(column, overflow="fold")
    with err.status("replaying ..." if not dry_run else "reading the queues ..."):
        outcomes = replay_all(deployment, dry_run=dry_run)
    for o in outcomes:
        style = "green" if o.result == "replayed" else "red" if not o.ok else ""
        result = escape(o.result)
        table.add_row(escape(o.queue), escape(o.subject), escape(o.reason),
                      f"[{style}]{result}[/{style}]" if style else result)
    if outcomes:
        out.print(table)
    counts = {k: sum(1 for o in outcomes if pick(o)) for k, pick in (
        ("replayed", lambda o: o.result == "replayed"), ("would replay", lambda o: o.result == "would replay"),
        ("failed", lambda o: o.result.startswith("failed")), ("left", lambda o: o.result == "left"))}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    out.print(f"{len(outcomes)} message(s): {summary}" if outcomes else "nothing waits in the failure queues")
    return 1 if counts["failed"] or counts["left"] else 0


@cli.command()
@click.option("--grace-minutes", default=15, show_default=True, type=click.IntRange(0),
              help="How long a new workbook may take to reach the destination before it counts as missing.")
@aws_command
def status(deployment: Deployment, grace_minutes: int) -> int:
    """Latest workbook per export and its copy, failure queues, alarms; exit 1 when something needs attention."""
    from pipeline_ops import status as st

    now = dt.datetime.now(dt.timezone.utc)
    exports = st.exports(deployment, now=now, grace=dt.timedelta(minutes=grace_minutes))
    scheduled = st.schedules(deployment, now=now)
    checks = st.queues(deployment) + st.alarms(deployment)
    table = Table(title=f"exports of {deployment.config.stack_name}")
    for column in ("export", "last run (ledger)", "latest workbook", "written (UTC)", "rows", "destination"):
        table.add_column(column, overflow="fold")
    for e in exports:
        written = e.modified.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if e.modified else ""
        table.add_row(escape(e.export), escape(e.last_run), escape(e.key or "-"), written, escape(str(e.rows or "")),
                      _state(e.delivered, with_detail=True))
    out.print(table)
    if scheduled:  # one line each, never wrapped: a schedule's clock reads as one sentence
        out.print("schedules (EventBridge Scheduler, each on its own clock):")
        for s in scheduled:
            deadline = f", due within {s.deadline_minutes} min" if s.deadline_minutes else ""
            last = (f"last run {s.last_run:%Y-%m-%d %H:%M} UTC: " if s.last_run else "last run: ") + s.last.state
            detail = f" ({s.last.detail})" if s.last.detail else ""
            out.print(f"  {s.name}: {s.expression} {s.time_zone}{deadline}; next run {s.next_local()}; "
                      f"{last}{detail}" + ("  <- needs attention" if s.last.attention else ""),
                      markup=False, soft_wrap=True)
    table = Table(title="failure queues and alarms")
    for column in ("what", "state", "detail"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(escape(c.what), _state(c), escape(c.detail))
    out.print(table)
    attention = [e.export for e in exports if e.delivered.attention] + [s.name for s in scheduled if s.last.attention] + [
        c.what for c in checks if c.attention]
    if attention:
        out.print(f"needs attention: {', '.join(attention)}", markup=False, soft_wrap=True)
        return 1
    out.print("all well")
    return 0


# --- the run ledger ------------------------------------------------------------------------------------


def _day(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a date YYYY-MM-DD") from None


def _history_line(item: dict) -> dict:
    delivery = item.get("delivery") or {}
    return {
        "run_id": item.get("run_id"), "export": item.get("export"), "started": item.get("started"),
        "trigger": item.get("trigger"), "params": item.get("params", {}), "outcome": item.get("outcome"),
        "error": item.get("error"), "rows": item.get("rows"), "rows_per_sheet": item.get("rows_per_sheet"),
        "bytes": item.get("bytes"), "key": item.get("key"), "version_id": item.get("version_id"),
        "sha256": item.get("sha256"),
        "delivery": ({"bucket": delivery.get("bucket"), "key": delivery.get("key"),
                      "version_id": delivery.get("version_id"), "at": delivery.get("at"),
                      "checksum_matched": bool(delivery.get("verified")) and delivery.get("sha256") in (None, item.get("sha256"))}
                     if delivery else None),
    }


@cli.command()
@click.argument("export")
@click.option("--since", callback=lambda c, p, v: _day(v), metavar="DATE", help="First UTC day (YYYY-MM-DD).")
@click.option("--until", callback=lambda c, p, v: _day(v), metavar="DATE", help="Last UTC day (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@aws_command
def history(deployment: Deployment, export: str, since: dt.date | None, until: dt.date | None, as_json: bool) -> int:
    """An export's runs from the run ledger, newest first: trigger, parameters, outcome, rows, delivery."""
    import json

    from pipeline_ops.history import delivery_state, runs

    table = deployment.output("RunLedgerTableName")
    lines = [_history_line(i) for i in runs(deployment.client("dynamodb"), table, export, since=since, until=until)]
    if as_json:
        for line in lines:
            click.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        return 0
    view = Table(title=f"runs of {export} ({deployment.config.stack_name})")
    for column in ("started (UTC)", "trigger", "params", "outcome", "rows", "delivered", "checksum"):
        view.add_column(column, overflow="fold")
    for line in lines:
        delivery = line["delivery"]
        outcome = line["outcome"] + (f": {line['error']}" if line.get("error") else "")
        view.add_row(escape(line["started"] or ""), escape(line["trigger"] or ""), escape(_params_text(line["params"])),
                     escape(outcome), escape(str(line["rows"] if line["rows"] is not None else "")),
                     escape(delivery["at"] if delivery else "-"),
                     ("matched" if delivery["checksum_matched"] else "[red]MISMATCH[/red]") if delivery else "-")
    out.print(view)
    out.print(f"{len(lines)} run(s)")
    return 0


@cli.command()
@click.argument("key")
@aws_command
def verify(deployment: Deployment, key: str) -> int:
    """Download a workbook and its copy and check both against the run ledger's SHA-256; exit 1 on a mismatch."""
    from lambdas.contract import destination_key
    from pipeline_ops.history import verify as check

    item, verdicts = check(deployment.client("s3"), deployment.client("dynamodb"),
                           deployment.output("RunLedgerTableName"), deployment.output("SourceBucketName"),
                           deployment.output("DestinationBucketName"),
                           destination_key(deployment.config.destination.prefix, key), key)
    out.print(f"run {item.get('run_id')} of {item.get('export')}: ledger SHA-256 {item.get('sha256')}", markup=False)
    for v in verdicts:
        out.print(f"{'ok' if v.ok else 'MISMATCH'}  {v.what}: {v.detail}", markup=False, soft_wrap=True)
    return 0 if all(v.ok for v in verdicts) else 1


def _state(check: Any, *, with_detail: bool = False) -> str:
    text = escape(check.state + (f" ({check.detail})" if with_detail and check.detail else ""))
    return f"[red]{text}[/red]" if check.attention else text


# --- local -------------------------------------------------------------------------------------------


@cli.command()
@click.option("--template", "template_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A synthesized template (default: synthesize dev in-process).")
@click.option("--sample-tables/--no-sample-tables", default=True, show_default=True,
              help="Apply dev's init SQL (database.init_sql: its tables and sample rows) to MYSQL_DSN first.")
@click.option("--export", "export", metavar="NAME", help="Run only this export (default: every export, then a "
                                                         "backfill day of each dated one, then hand uploads).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A parameter of --export; repeatable.",
              callback=lambda ctx, param, values: parse_params(values))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep every workbook here, as DIR/<bucket>/<key> (the source upload and the destination copy).")
def local(template_path: Path | None, sample_tables: bool, export: str | None, params: dict[str, str],
          out_dir: Path | None) -> None:
    """The whole pipeline locally: moto for AWS, your MySQL (MYSQL_DSN), both handlers with the template's
    environment, every copy and every IAM call checked. A failure prints one line and exits 1."""
    from lambdas.export_to_xlsx.errors import ExportError
    from pipeline_ops.local import main as local_main

    import pymysql

    from lambdas.export_to_xlsx.definition import DefinitionError

    try:
        local_main(template_path, sample_data=sample_tables, export=export, params=params, out=out_dir)
    except DefinitionError as exc:  # config or EXPORTS: every problem, one line each
        err.print("\n".join(f"error: {line}" for line in exc.problems), markup=False, soft_wrap=True)
        raise SystemExit(1) from None
    except (ExportError, AssertionError, ValueError, RuntimeError, OSError, LookupError, TypeError,
            pymysql.MySQLError) as exc:  # a failed export or check, a template that is not dev's, the database
        text = str(exc).strip()
        err.print(f"error: {text.splitlines()[0] if text else type(exc).__name__}", markup=False, soft_wrap=True)
        raise SystemExit(1) from None


def main() -> None:
    cli()
