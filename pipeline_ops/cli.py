"""``pipeline-ops``: one command for the operators of an environment's pipeline."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run, replay and check the MySQL → .xlsx → S3 pipeline of an environment, or run it all locally."""


@cli.command()
@click.option("--template", "template_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A synthesized template (default: synthesize dev in-process).")
@click.option("--sample-tables/--no-sample-tables", default=True, show_default=True,
              help="Create the dev config's sample tables (orders, customers) where missing.")
def local(template_path: Path | None, sample_tables: bool) -> None:
    """The whole pipeline locally: moto for S3 and Secrets Manager, your MySQL (MYSQL_DSN), both handlers
    with the template's environment, every copy and every IAM call checked."""
    from pipeline_ops import local as local_run

    local_run.main(template_path, sample_tables)


def main() -> None:
    cli()
