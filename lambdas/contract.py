"""Facts every part of the pipeline shares: where workbooks go, what they carry, what travels.

The export writes keys and metadata by these rules, the replicator reads them, the stack grants and
filters by them and ``pipeline-ops`` looks for them. Each fact is named here once. Stdlib only: the
bundler puts this module into every function's package (``lambdas/contract.py``).
"""

from __future__ import annotations

#: The key endings that are copied. S3 notification filters compare suffixes case-sensitively,
#: so the stack adds one filter per ending and the replicator accepts exactly these, nothing else
#: (``Report.Xlsx`` is neither delivered nor copied).
SUFFIXES = (".xlsx", ".XLSX")

#: Object metadata the export writes on each workbook (S3 user metadata, ``x-amz-meta-*``).
META_EXPORT = "export"
META_ROWS = "rows"
META_SHEETS = "sheets"
META_PARAMS = "params"
META_SQL_SHA256 = "sql-sha256"

#: The function's event: ``{"export": NAME, "params": {NAME: VALUE}}``.
EVENT_EXPORT = "export"
EVENT_PARAMS = "params"
EVENT_KEYS = (EVENT_EXPORT, EVENT_PARAMS)

#: The Amazon RDS CA bundle, written by the bundler into each package that connects to the database.
CA_BUNDLE_FILE = "rds-ca-bundle.pem"


def export_prefix(key_prefix: str, export: str) -> str:
    """Every key of one export starts with this (its IAM grant and its listing are this prefix)."""
    return f"{key_prefix}{export}/"


def is_replicated(key: str, source_prefix: str) -> bool:
    """The one rule the notification filter, the replicator's grant and its handler share."""
    return key.startswith(source_prefix) and key.endswith(SUFFIXES)


def destination_key(destination_prefix: str, key: str) -> str:
    """The key of a source object's copy in the destination bucket."""
    return destination_prefix + key
