"""Run the whole pipeline locally, with the synthesized CloudFormation as the source of truth.

    make e2e                                   # or: .venv/bin/pipeline-ops local
    .venv/bin/pipeline-ops local --out local-run/ --export daily_sales --param day=2026-11-20

What it does, step by step (:func:`run.main`):
1. checks ``--export``/``--param`` against dev's definitions with the function's own parser;
2. synthesizes the dev app in-process (or reads the template given with --template);
3. applies dev's init SQL (``database.init_sql``, what the bootstrap applies at deploy) to your MySQL
   (MYSQL_DSN, default the local MariaDB), reached through a local TCP proxy (``network``) that stands for
   the network path to the database, so a test can cut it;
4. starts moto's S3, Secrets Manager, EventBridge and SQS on 127.0.0.1 (``deployment``), creates the
   template's buckets and runs the export handler with exactly the environment the template gives it:
   references to the buckets and the secret resolve to the local ones, the database address to the proxy
   and TLS to "off";
5. turns each object the export created into the notification S3 would send, only when the template's
   notification configuration (``template``) matches it, and runs the replicator as Lambda would;
6. checks every workbook arrived byte for byte with its metadata, its rows equal the SQL's, its "Workbook
   Delivered" event, and every API call each handler made against its role's statements;
7. with ``--out``, keeps every workbook under its bucket and key.
"""

from pipeline_ops.local.deployment import SAMPLE_DAY, LocalPipeline
from pipeline_ops.local.run import main, requested_events, run
from pipeline_ops.local.sample import load_sample_data, mysql_from_env

__all__ = ["SAMPLE_DAY", "LocalPipeline", "load_sample_data", "main", "mysql_from_env", "requested_events", "run"]
