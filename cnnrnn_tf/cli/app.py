"""The ``cnnrnn`` command line.

Every command answers bad input with a non-zero exit and one line
``error: <what was wrong, naming the input>`` on stderr. Heavy imports
(TensorFlow, the pipeline) happen inside the commands, so ``--help`` is fast and
the core never imports the TFX pipeline.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from cnnrnn_tf.cli.args import EXIT_INPUT, EXIT_INTERNAL, Parser, check_local_inputs
from cnnrnn_tf.errors import InputError


def build_parser() -> Parser:
    """The parser: each command group (a module of this package) registers its commands."""
    from cnnrnn_tf import __version__

    parser = Parser(prog="cnnrnn", description="CNN-RNN multi-label image classification.")
    parser.add_argument("--version", action="version", version=f"cnnrnn-tf {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="error",
                        help="what TensorFlow, absl and the libraries log on stderr: 'error' "
                             "(default) hides their start-up chatter, whatever "
                             "TF_CPP_MIN_LOG_LEVEL says; 'info' and 'debug' show it "
                             "(CNNRNN_DEBUG=1 also shows it, with tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    from cnnrnn_tf.cli import data, doctor, main_job, model, pipeline, serve, train

    for group in (data, train, model, pipeline, serve, doctor, main_job):
        group.register(sub)
    return parser


# TensorFlow's C++ log threshold per --log-level (3 hides its errors too: the CUDA probe's
# "Unable to register cuDNN factory" lines are errors on a machine without a GPU).
LOG_LEVELS = ("error", "info", "debug")
_TF_CPP_LEVEL = {"error": "3", "info": "1", "debug": "0"}


def _quiet_startup(level: str = "error") -> None:
    """TensorFlow's and absl's start-up chatter (CUDA probes, oneDNN notes, deprecations)
    hides the real output: off unless ``--log-level`` or ``CNNRNN_DEBUG=1`` asks for it.

    Errors reach the user as Python exceptions, which this CLI turns into one-line messages.
    Call before TensorFlow is imported (the C++ level is read once, at import).
    """
    import logging
    import warnings

    if os.environ.get("CNNRNN_DEBUG") and level == "error":
        level = "debug"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = _TF_CPP_LEVEL[level]
    python_level = {"error": logging.ERROR, "info": logging.INFO, "debug": logging.DEBUG}[level]
    for name in ("tensorflow", "absl", "apache_beam", "tfx"):
        logging.getLogger(name).setLevel(python_level)
    if level == "error":
        warnings.filterwarnings("ignore", category=FutureWarning, module="google")
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_startup(args.log_level)
    try:
        if not getattr(args, "checks_inputs_itself", False):  # train: its flags first
            check_local_inputs(args)
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: one line, no traceback
        if os.environ.get("CNNRNN_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename:  # a path that cannot be written / read
            print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_INPUT
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if type(exc).__name__ in _STORAGE_ERRORS and type(exc).__module__.startswith("tensorflow"):
            # tf.io.gfile on a path that cannot be reached (a bucket, credentials, endpoint)
            print(f"error: {first} (check the path, and for s3:// / gs:// the bucket and "
                  "credentials)", file=sys.stderr)
            return EXIT_INPUT
        print(f"error: {type(exc).__name__}: {first} (set CNNRNN_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


_STORAGE_ERRORS = ("NotFoundError", "PermissionDeniedError", "UnauthenticatedError",
                   "UnavailableError", "AlreadyExistsError")


def run() -> None:
    """The console script: :func:`main`, then an exit that keeps its status (see
    :func:`cnnrnn_tf.uri.exit_process`: tensorflow-io's S3 file system can abort at exit)."""
    from cnnrnn_tf.cli import quiet
    from cnnrnn_tf.uri import exit_process

    native_logs = quiet.install()
    status = main()
    if native_logs is not None:
        native_logs.close()
    exit_process(status)


if __name__ == "__main__":
    run()
