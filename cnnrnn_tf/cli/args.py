"""The command line's argument types and parser: one-line errors, shared by every command module."""
from __future__ import annotations

import argparse
import os

from cnnrnn_tf.errors import InputError

EXIT_INPUT = 2
EXIT_INTERNAL = 1


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _float_where(ok, requirement: str):
    """An argparse type: a float for which ``ok(value)`` holds, else '... must be <requirement>'."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {requirement}")
        return value

    return parse


probability = _float_where(lambda v: 0.0 < v < 1.0, "between 0 and 1")
positive_float = _float_where(lambda v: v > 0, "> 0")
non_negative_float = _float_where(lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def label_sep(text: str) -> str:
    if not text or text in ("\n", "\r", ","):
        raise argparse.ArgumentTypeError(f"{text!r} cannot separate labels (the CSV uses ',')")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, with the one-line error format of the rest of the CLI."""

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} "
                              f"(run '{self.prog} --help' for usage)\n")


# The local input paths of each command (``set_defaults(local_inputs=((argument, what), ...))``)
# are checked before anything heavy is imported, so a mistyped path answers at once. URIs and
# glob patterns are left to the command itself.
def check_local_inputs(args) -> None:
    """InputError naming the first local input path of ``args`` that does not exist."""
    for name, what in getattr(args, "local_inputs", ()):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or not value or "://" in value \
                    or any(c in value for c in "*?["):
                continue
            if not os.path.exists(value):
                raise InputError(f"{value}: {what} does not exist")
