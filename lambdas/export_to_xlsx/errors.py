"""The one error type the export raises: its message says what failed, never a secret."""


class ExportError(Exception):
    """An export failed; the message names the step and the resource."""
