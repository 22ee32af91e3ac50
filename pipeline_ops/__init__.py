"""Operator commands for a deployed (or local) pipeline: ``pipeline-ops --help``.

The commands read the environment's config from this checkout's ``cdk.json`` (through
``stacks.config``), so the checkout's root is put on ``sys.path`` once, here.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
