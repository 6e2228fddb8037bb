"""User-facing errors.

Every input boundary (files, TFRecords, CSV, CLI flags, gRPC requests) raises
:class:`InputError` with a one-line message that names the input. The CLI
prints it as ``error: <message>`` and exits with status 2.
"""


class CnnRnnError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(CnnRnnError, ValueError):
    """Bad input from the user: a file, a flag, a record, a request."""
