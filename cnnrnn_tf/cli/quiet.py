"""Holds back the native libraries' log lines on the console script's stderr.

TensorFlow and XLA log through absl before absl's logging is initialised, and such lines
("WARNING: All log messages before absl::InitializeLog() ...", "I0000 ... service.cc:145]
XLA service ... initialized", the CUDA probes) ignore ``TF_CPP_MIN_LOG_LEVEL``. At
``--log-level error`` the process's file descriptor 2 is therefore a pipe: a thread drops
the lines in absl's or TensorFlow's log format, except fatal ones, and passes the rest on.
Python's own ``sys.stderr`` (the CLI's ``error:`` lines, warnings, progress bars) writes to
the real stderr directly, so nothing it prints waits on the thread.
"""
from __future__ import annotations

import io
import os
import re
import sys
import threading
from typing import Optional, Sequence

# absl: "I0000 00:00:1796306090.673240   18241 service.cc:145] ..."; TensorFlow <= 2.19:
# "2026-12-03 13:05:00.622781: I tensorflow/core/util/port.cc:113] ..."; F (fatal) is kept.
NATIVE_LOG_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [\w./\-]+:\d+\]"
    rb"|To enable the following instructions: .*rebuild TensorFlow with)")


def wanted(argv: Sequence[str]) -> bool:
    """True unless ``--log-level info|debug`` or ``CNNRNN_DEBUG`` asks for the native lines."""
    if os.environ.get("CNNRNN_DEBUG"):
        return False
    for i, arg in enumerate(argv):
        if arg == "--log-level" and i + 1 < len(argv):
            return argv[i + 1] == "error"
        if arg.startswith("--log-level="):
            return arg.split("=", 1)[1] == "error"
    return True


class NativeLogFilter:
    """fd 2 through the filter while installed; :meth:`close` restores it and drains."""

    def __init__(self):
        sys.stderr.flush()
        self._real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._saved_stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(self._real), "w"), line_buffering=True,
                                      errors="backslashreplace")
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(self._real, line)

    def close(self, timeout: float = 2.0) -> None:
        sys.stderr.flush()
        os.dup2(self._real, 2)  # closes the pipe's write end: the thread reads to its end
        self._thread.join(timeout)
        sys.stderr = self._saved_stderr


def install(argv: Optional[Sequence[str]] = None) -> Optional[NativeLogFilter]:
    """The filter, when :func:`wanted` for ``argv`` (default: ``sys.argv[1:]``), else None."""
    argv = sys.argv[1:] if argv is None else argv
    return NativeLogFilter() if wanted(argv) else None
