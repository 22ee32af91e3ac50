"""Checks the local run and the workbook comparison make: an explicit exception, never ``assert``.

``python -O`` drops ``assert`` statements; a check that a user's run relies on must not vanish with it.
:class:`CheckFailed` is an ``AssertionError`` so test runners report it as a failed expectation.
"""

from __future__ import annotations


class CheckFailed(AssertionError):
    """A promise of the pipeline did not hold; the message says which."""


def check(ok: object, message: str) -> None:
    if not ok:
        raise CheckFailed(message)
