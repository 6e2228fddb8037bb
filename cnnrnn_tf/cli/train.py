"""``cnnrnn train``. Its training flags are generated from TrainConfig's declaration
(:func:`cnnrnn_tf.config.option`), as are ``cnnrnn pipeline run/compile``'s (with no defaults
of their own, so they never override a ``--train-config`` file)."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict

from cnnrnn_tf.cli.args import _float_where, _int_at_least, non_negative_int


def _argument_type(field: dataclasses.Field):
    from cnnrnn_tf.config import in_interval

    meta = field.metadata
    if meta["interval"] is not None:
        interval = meta["interval"]
        return _float_where(lambda v: in_interval(v, interval), f"in {interval}")
    if "int" in str(field.type):
        return _int_at_least(meta["minimum"] if meta["minimum"] is not None else 0)
    return str


def add_config_flags(parser, *, help_prefix: str = "") -> None:
    """One flag per TrainConfig field, named, typed and explained by its declaration.

    Every flag defaults to None (the field's own default then applies: :func:`config_from_args`),
    so explicit flags win over ``--paper`` and over a ``--train-config`` file.
    """
    from cnnrnn_tf.config import config_fields, flag_name

    for field in config_fields():
        meta = field.metadata
        kwargs: Dict[str, Any] = dict(dest=field.name, default=None,
                                      help=help_prefix + meta["help"])
        if meta["store"] is not None:
            kwargs.update(action="store_const", const=meta["store"])
        else:
            kwargs["type"] = _argument_type(field)
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["choices"] is None:
                kwargs["metavar"] = meta["metavar"] or flag_name(field)[2:].upper().replace("-", "_")
        parser.add_argument(flag_name(field), **kwargs)


def config_from_args(args):
    """The TrainConfig of ``cnnrnn train``'s flags: TrainConfig's defaults, then ``--paper``'s
    settings, then every flag given explicitly."""
    from cnnrnn_tf.config import PAPER_SETTINGS, TrainConfig, config_overrides

    fields = dict(PAPER_SETTINGS) if getattr(args, "paper", False) else {}
    fields.update(config_overrides(args))
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    from cnnrnn_tf.cli.args import check_local_inputs

    config = config_from_args(args)  # flag errors first, then TF_CONFIG, then the paths
    if os.environ.get("TF_CONFIG"):
        from cnnrnn_tf.cluster import ClusterConfig

        ClusterConfig.from_environment()
    check_local_inputs(args)
    from cnnrnn_tf.metrics import format_table
    from cnnrnn_tf.training.loop import train

    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    result = train(config, args.train, args.eval, args.out, test_data=args.test,
                   verbose=verbose)
    if result.metrics:
        print(format_table(result.metrics, title=_scored_title(config.model, args, result.metrics)))
    print(f"model written to {args.out}")
    return 0


def _scored_title(model: str, args, metrics) -> str:
    """What the printed numbers are: the split they were scored on and the one selected on."""
    count = metrics.get("num_images", "?")
    if args.test:
        return f"{model} scored on {args.test} ({count} images), selected on {args.eval}"
    return (f"{model} scored on {args.eval} ({count} images), the split it was selected on "
            f"(give --test for a split no step tuned on)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model; writes MODEL_DIR")
    p.add_argument("--train", required=True, help="training data folder")
    p.add_argument("--eval", required=True,
                   help="validation data folder: early stopping, checkpoint selection, "
                        "thresholds")
    p.add_argument("--test", default=None, metavar="FOLDER",
                   help="test data folder: scored once, after selection (the numbers of "
                        "metrics.json and the table); read only once the model is final")
    p.add_argument("--out", required=True, help="MODEL_DIR to write")
    add_config_flags(p)
    p.add_argument("--paper", action="store_true",
                   help="the paper's CNN-RNN settings: no label head, no seen-label mask in "
                        "training, no dropout, a 512-unit LSTM, constant-rate RMSprop, no early "
                        "stopping (flags given explicitly still win)")
    p.add_argument("--verbose", type=non_negative_int, default=None, choices=(0, 1, 2),
                   help="Keras fit verbosity: 1 a progress bar, 2 one line per epoch "
                        "(default: 1 on a terminal, 2 when the output goes to a file or pipe)")
    p.set_defaults(func=cmd_train, checks_inputs_itself=True,
                   local_inputs=(("train", "data folder"), ("eval", "data folder"),
                                 ("test", "data folder")))
