"""The local run end to end: what ``pipeline-ops local`` (and ``make e2e``) does, step by step."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from lambdas.contract import EVENT_EXPORT, EVENT_PARAMS, destination_key
from pipeline_ops.checks import check
from pipeline_ops.local.deployment import LocalPipeline
from pipeline_ops.local.sample import HAND_UPLOADS, hand_made_workbook

#: Modules of the dev requirements the local run imports (moto stands in for AWS).
DEV_REQUIREMENTS = ("moto", "pymysql", "openpyxl")


def run(template: dict, mysql: dict, say: Callable[[str], None] = print, *, events: list[dict] | None = None,
        backfill: bool = True, hand_uploads: bool = True, out: Path | None = None) -> dict:
    """Run ``events`` (default: every export with its defaults, ``{}``, then with ``backfill`` each export with a
    date parameter for the sample day) through both handlers and check every promise; returns what went where.
    Raises :class:`pipeline_ops.checks.CheckFailed` on a broken promise, the export's error on a failed run.
    With ``out``, every workbook is kept there under its bucket and key."""
    report = {"exports": [], "skipped": [], "copies": [], "hand_uploads": {}, "delivered": [],
              "hand_uploads_copied": []}
    with LocalPipeline(template, mysql, say=say) as p:
        try:
            if events is None:
                events = [{}] + (p.backfill_events() if backfill else [])
            for export_event in events:
                _run_one(p, export_event, report, say)
            if hand_uploads:
                _hand_uploads(p, report, say)
            _ledger(p, report, say)
            problems = {fn: d for fn, d in p.denied_calls().items() if d}
            check(not problems, f"calls the template's roles would deny: {problems}")
            say("IAM: every call of both handlers is allowed by the role the template gives it")
            report["listing"] = p.listing()
        finally:  # what was produced is kept, also when a check or an export failed
            if out is not None:
                for path in p.save_objects(out):
                    say(f"kept {path}")
    return report


def _run_one(p: LocalPipeline, export_event: dict, report: dict, say: Callable[[str], None]) -> None:
    """One invocation of the export, its copies through the notification, each checked end to end."""
    result = p.run_export(export_event)
    for event in p.notifications(p.created_by_last_export()):
        delivery = p.deliver(event)
        check(delivery.outcome == "copied", f"{delivery.key} was not copied: {delivery.outcome}")
    delivered_events = p.delivered_events()
    for r in result["exports"]:
        if r["outcome"] != "uploaded":
            report["skipped"].append(r)
            continue
        copy_ = p.check_replicated(r["key"])
        rows = p.check_rows(r, copy_["body"], export_event.get(EVENT_PARAMS))
        say(f"checked {r['export']}: s3://{p.destination}/{copy_['key']} equals the source byte for byte, "
            f"metadata {sorted(copy_['metadata'])}, {rows} rows equal the SQL's")
        delivered = p.check_delivered_event(r, copy_, delivered_events)
        say(f"event {delivered['detail-type']!r} from {delivered['source']} routed by the rule: "
            f"{json.dumps(delivered['detail'], ensure_ascii=False)}")
        report["delivered"].append(delivered)
        report["exports"].append(r)
        report["copies"].append(copy_["key"])


def _ledger(p: LocalPipeline, report: dict, say: Callable[[str], None]) -> None:
    """One ledger item per run; each copied workbook's item holds one verified delivery; `history` lists them."""
    items = p.ledger_items()
    report["ledger"] = items
    by_run = {(i["export"], i["run_id"]): i for i in items}
    for r in report["exports"] + report["skipped"]:
        item = by_run.get((r["export"], r.get("run_id")))
        check(item is not None, f"run {r.get('run_id')} of {r['export']} has no ledger item")
        check(item["outcome"] == r["outcome"], f"ledger item {r.get('run_id')}: outcome {item['outcome']!r}")
        if r["outcome"] == "uploaded":
            delivery = item.get("delivery") or {}
            check(delivery.get("verified") is True and item.get("sha256") == r["sha256"] == delivery.get("sha256"),
                  f"ledger item {r['run_id']}: no verified delivery of SHA-256 {r['sha256']}")
    check(len(items) == len(report["exports"]) + len(report["skipped"]) + len(report["hand_uploads_copied"]),
          f"the ledger holds {len(items)} items, not one per run and hand upload")
    say(f"ledger: {len(items)} item(s), one per run and per workbook put in by hand")
    for item in sorted(items, key=lambda i: (i["export"], i["run_id"])):
        delivery = item.get("delivery") or {}
        say(f"  {item['export']} {item['run_id']} {item.get('trigger')} {item.get('outcome')} "
            f"rows={item.get('rows')} sha256={str(item.get('sha256'))[:12]}… "
            f"delivered={'verified' if delivery.get('verified') else '-'}")
    for export in sorted({i["export"] for i in items}):
        for line in p.history(export):
            say(f"history {export}: {json.dumps(line, ensure_ascii=False)}")


def _hand_uploads(p: LocalPipeline, report: dict, say: Callable[[str], None]) -> None:
    """Workbooks put into the source bucket by hand travel too; other objects stay."""
    dropped = {key: p.drop_object(key, hand_made_workbook(key)) for key in HAND_UPLOADS}
    for event in p.notifications(list(dropped.values())):
        delivery = p.deliver(event)
        check(delivery.outcome == "copied", f"{delivery.key} was not copied: {delivery.outcome}")
    destination = set(p.listing()[p.destination])
    for key, expected in HAND_UPLOADS.items():
        copied = destination_key(p.destination_prefix, key) in destination
        check(copied is expected, f"{key}: {'not ' if expected else ''}expected in the destination")
        if copied:
            report["hand_uploads_copied"].append(key)
            copy_ = p.check_replicated(key)
            say(f"checked hand upload s3://{p.source}/{key}: s3://{p.destination}/{copy_['key']} equals it "
                "byte for byte")
        else:
            say(f"checked hand upload s3://{p.source}/{key}: not copied, as the filter says")
        report["hand_uploads"][key] = copied
    # A workbook not written by an export is announced too, without export, rows or parameters
    announced = sorted(e["detail"]["source"]["key"] for e in p.delivered_events())
    check(announced == sorted(k for k, copied in report["hand_uploads"].items() if copied),
          f"delivered events for hand uploads: {announced}")


def requested_events(exports: dict, export: str | None, params: dict[str, str]) -> list[dict] | None:
    """The event for ``--export``/``--param``, checked against the definition with the function's own parser
    before anything runs; None (every export, then the backfill) when no export is named."""
    import datetime as dt

    from lambdas.export_to_xlsx import params as export_params

    if export is None:
        if params:
            raise ValueError("--param needs --export: parameters belong to one export")
        return None
    if export not in exports:
        raise ValueError(f"unknown export {export!r}; dev's exports: {', '.join(exports)}")
    definition = exports[export]
    export_params.resolve(definition.parameters, params, dt.datetime.now(dt.timezone.utc), definition.time_zone,
                          export=export)
    return [{EVENT_EXPORT: export, EVENT_PARAMS: params} if params else {EVENT_EXPORT: export}]


def main(template_path: Path | None, *, sample_data: bool, export: str | None = None,
         params: dict[str, str] | None = None, out: Path | None = None, say: Callable[[str], None] = print) -> None:
    """The `local` command: check the request, read or synthesize dev, load its sample data, run, report."""
    _show_function_logs(say)
    _require_dev_packages()
    config = _dev_config()
    events = requested_events({e.name: e for e in config.exports}, export, params or {})
    from pipeline_ops.local.sample import load_sample_data, mysql_from_env

    mysql = mysql_from_env()
    template = _template(template_path, say)
    if sample_data and config.database.init_sql is not None:
        count = load_sample_data(mysql, config.database.init_sql)
        say(f"sample data: {count} statements of {config.database.init_sql.name} applied")
    report = run(template, mysql, say=say, events=events, hand_uploads=events is None, out=out)
    for bucket, keys in report["listing"].items():
        say(f"s3://{bucket}/: " + (", ".join(keys) or "(empty)"))


def _show_function_logs(say: Callable[[str], None]) -> None:
    """The functions' log lines (Lambda would send them to CloudWatch Logs) go where the run's own lines go."""
    import logging

    class Say(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name != "root" and not record.name.startswith("lambdas"):
                return  # the SDK's and moto's own chatter
            say(f"function log ({record.levelname}): {record.getMessage()}")

    root = logging.getLogger()
    root.addHandler(Say())
    root.setLevel(logging.INFO)


def _require_dev_packages() -> None:
    import importlib.util

    missing = [m for m in DEV_REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the local run needs {', '.join(missing)} from the dev requirements: "
                           "run `make test` once, or `.venv/bin/pip install -r requirements-dev.txt`")


def _dev_config():
    from pipeline_ops.synth import CDK_JSON
    from stacks.config import CONTEXT_KEY, load_environment

    return load_environment({CONTEXT_KEY: CDK_JSON["context"][CONTEXT_KEY]}, "dev")


def _template(template_path: Path | None, say: Callable[[str], None]) -> dict:
    if template_path:
        return json.loads(template_path.read_text())
    from pipeline_ops.synth import synthesize

    started = time.monotonic()
    template = synthesize("dev").template
    say(f"synthesized dev in {time.monotonic() - started:.2f} s")
    return template
