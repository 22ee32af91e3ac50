"""``python -m pipeline_ops`` is the same as the ``pipeline-ops`` command."""

from pipeline_ops.cli import main

main()
