"""The ``cnnrnn`` command line.

Every command answers bad input with a non-zero exit and one line
``error: <what was wrong, naming the input>`` on stderr. Heavy imports
(TensorFlow, the pipeline) happen inside the commands, so ``--help`` is fast and
the core never imports the TFX pipeline.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from cnnrnn_tf import progress
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.pipeline_flags import add_compile_flags, add_submit_parser


# Argument types and the parser class live in cnnrnn_tf.cli_args (shared with
# cnnrnn_tf.serving.commands, which the CLI imports: no import circle).
from cnnrnn_tf.cli_args import (EXIT_INPUT, EXIT_INTERNAL, Parser, _float_where,  # noqa: E402,F401
                                label_sep, non_negative_float, non_negative_int, positive_float,
                                positive_int, probability)


# ---------------------------------------------------------------- commands
def cmd_data_fashion(args) -> int:
    from cnnrnn_tf.data import build_fashion_outfits

    summary = build_fashion_outfits(args.out, num_train=args.train, num_test=args.test,
                                    num_val=args.val, seed=args.seed, grammar=args.grammar,
                                    source_dir=args.source, image_size=args.image_size)
    for split in ("train", "val", "test"):
        print(summary[split])
    return 0


def cmd_data_split(args) -> int:
    import logging

    from cnnrnn_tf.data import split_train_val

    # The split's warning (a training label without val examples) as one "warning: ..." line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("cnnrnn_tf.data.split")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        summary = split_train_val(args.data, args.out, args.val_fraction, seed=args.seed)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    for side in ("train", "val"):
        print(summary[side])
    return 0


def _writing_options(args) -> dict:
    """The converters' keyword arguments for how they write (see add_writing_flags)."""
    if args.beam:
        from cnnrnn_tf.data.beam_writer import quiet_beam_logging

        quiet_beam_logging()
    elif args.beam_arg:
        raise InputError("--beam-arg: only with --beam")
    return dict(on_bad_image=args.on_bad_image, beam=args.beam, beam_args=args.beam_arg,
                direct_num_workers=args.direct_num_workers,
                progress=not args.quiet and sys.stdout.isatty())


def cmd_data_csv(args) -> int:
    from cnnrnn_tf.data import convert_csv

    print(convert_csv(args.csv, args.out, label_sep=args.label_sep, **_writing_options(args)))
    return 0


def cmd_data_coco(args) -> int:
    from cnnrnn_tf.data import convert_coco

    print(convert_coco(args.annotations, args.images, args.out,
                       skip_empty=not args.keep_empty, **_writing_options(args)))
    return 0


def cmd_data_voc(args) -> int:
    from cnnrnn_tf.data import convert_voc

    print(convert_voc(args.root, args.split, args.out, include_difficult=args.difficult,
                      **_writing_options(args)))
    return 0


def _train_config(args):
    from cnnrnn_tf.config import TrainConfig

    fields = dict(model=args.model, backbone=args.backbone, image_size=args.image_size,
                  epochs=args.epochs, batch_size=args.batch_size, label_order=args.label_order,
                  seed=args.seed, optimizer=args.optimizer, learning_rate=args.learning_rate,
                  beam_size=args.beam_size, max_labels=args.max_labels, augment=args.augment,
                  crop_scale=args.crop_scale, hflip=args.hflip, ema=args.ema,
                  label_smoothing=args.label_smoothing, monitor=args.monitor,
                  fine_tune=args.fine_tune, mixed_precision=args.mixed_precision,
                  threshold=args.threshold, threshold_metric=args.threshold_metric,
                  per_class_threshold=args.per_class_threshold,
                  steps_per_epoch=args.steps_per_epoch,
                  jit_compile=args.jit_compile, steps_per_execution=args.steps_per_execution,
                  cache=args.cache, cache_budget_gb=args.cache_budget_gb,
                  early_stopping_patience=args.patience,
                  early_stopping=not args.no_early_stopping)
    if args.paper:
        from cnnrnn_tf.config import PAPER_SETTINGS

        fields.update(PAPER_SETTINGS)
    fields.update(decoder=args.decoder, attention_dim=args.attention_dim)
    for key in ("label_head", "aux_loss_weight", "lstm_units", "embed_dim", "dropout",
                "lr_schedule"):  # None: TrainConfig's default (or the paper's, with --paper)
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.no_mask_seen:
        fields["mask_seen"] = False
    if args.no_pretrained_weights:
        fields["weights"] = "none"
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    config = _train_config(args)  # flag errors first, then TF_CONFIG, then the paths
    if os.environ.get("TF_CONFIG"):
        from cnnrnn_tf.cluster import ClusterConfig

        ClusterConfig.from_environment()
    check_local_inputs(args)
    from cnnrnn_tf.metrics import format_table
    from cnnrnn_tf.training import train

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


def cmd_evaluate(args) -> int:
    from cnnrnn_tf.evaluation import evaluate_model
    from cnnrnn_tf.metrics import format_table, per_class_table
    from cnnrnn_tf.model_dir import load_model_dir

    loaded = load_model_dir(args.model)
    results = evaluate_model(loaded.model, loaded.vocab, args.data, loaded.image_size,
                             beam_size=args.beam_size, batch_size=args.batch_size,
                             progress=progress.wanted(args))
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(format_table(results, title=f"{args.model} on {args.data}"))
        if args.per_class:
            print(per_class_table(results))
    return 0


def _attention_peak(item) -> str:
    """', looked at row r col c of h x w': the peak of a label's attention map, if any."""
    grid = item.get("attention")
    if grid is None:
        return ""
    import numpy as np

    grid = np.asarray(grid)
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return f", looked at row {r} col {c} of {grid.shape[0]}x{grid.shape[1]}"


def cmd_predict(args) -> int:
    from cnnrnn_tf.predictor import Predictor

    predictor = Predictor.from_model_dir(args.model, beam_size=args.beam_size,
                                         attention=args.attention)
    with progress.progress_bar(progress.wanted(args), total=len(args.images)) as bar:
        for result in predictor.predict_files(args.images, batch_size=args.batch_size):
            _print_prediction(result, args.json)
            bar.update(1)
    return 0


def _print_prediction(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    else:
        labels = ", ".join(f"{x['label']} ({x['score']:.2f}{_attention_peak(x)})"
                           for x in result["labels"])
        print(f"{result['image']}: {labels or '(no labels)'}", flush=True)


def cmd_export(args) -> int:
    from cnnrnn_tf.export import export_saved_model
    from cnnrnn_tf.model_dir import load_model_dir

    if args.serving_manifests:  # a bad folder fails before the export, not after it
        from cnnrnn_tf.serving.deploy import serving_images

        serving_images(args.serving_manifests)
    loaded = load_model_dir(args.model)
    path = export_saved_model(loaded.model, loaded.vocab, loaded.image_size, args.out,
                              beam_size=args.beam_size or loaded.config.beam_size)
    print(f"SavedModel written to {path}")
    _warn_if_serving_image_older(path, args.serving_manifests)
    return 0


def _warn_if_serving_image_older(saved_model_dir: str, manifests) -> None:
    """One stderr line when the tensorflow/serving image is older than this TensorFlow."""
    from cnnrnn_tf.serving.deploy import image_version_problem

    problem = image_version_problem(saved_model_dir, manifests)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)


def cmd_report(args) -> int:
    from cnnrnn_tf.report import write_report

    path = write_report(args.model, args.data, args.out, beam_size=args.beam_size,
                        progress=progress.wanted(args))
    print(f"report written to {path}")
    return 0


def cmd_benchmark(args) -> int:
    from cnnrnn_tf.benchmark import benchmark_command

    return benchmark_command(args)


def _pipeline_module():
    try:
        import cnnrnn_pipeline.cli as pipeline_cli
    except ImportError as exc:
        raise InputError(
            f"the TFX pipeline is not installed ({exc}); install it with "
            "pip install 'cnnrnn-tf[pipeline]' (see BUILD.md)") from None
    return pipeline_cli


def cmd_pipeline_run(args) -> int:
    return _pipeline_module().run_command(args)


def cmd_pipeline_compile(args) -> int:
    return _pipeline_module().compile_command(args)


def cmd_pipeline_submit(args) -> int:
    return _pipeline_module().submit_command(args)


def cmd_main_job(args) -> int:
    from cnnrnn_tf.main_job import run_main_job

    return run_main_job(args.work_dir, num_train=args.train, num_test=args.test,
                        epochs=args.epochs, seed=args.seed)


# ---------------------------------------------------------------- parser
def add_writing_flags(p) -> None:
    """How the converters (from-csv, from-coco, from-voc) read the images and write shards."""
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="a missing, unreadable or corrupt image file: 'fail' (default) stops "
                        "with an error naming it; 'skip' leaves it out and lists it in "
                        "OUT/skipped.csv")
    p.add_argument("--beam", action="store_true",
                   help="read and write the images with an Apache Beam pipeline (local "
                        "DirectRunner with worker processes unless --beam-arg says otherwise)")
    p.add_argument("--direct-num-workers", type=positive_int, default=2, metavar="N",
                   help="--beam on the local DirectRunner: worker processes (default 2)")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument, repeatable, e.g. "
                        "--beam-arg=--runner=DataflowRunner")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> Parser:
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

    data = sub.add_parser("data", help="build or convert data sets to TFRecord shards")
    dsub = data.add_subparsers(dest="data_command", metavar="SOURCE", parser_class=Parser)
    dsub.required = True
    p = dsub.add_parser("fashion-outfits", help="the built-in default data set")
    p.add_argument("--out", required=True, help="writes OUT/train, OUT/val and OUT/test")
    p.add_argument("--train", type=positive_int, default=10000,
                   help="train scenes (from Fashion-MNIST train images 0..49,999)")
    p.add_argument("--val", type=positive_int, default=None,
                   help="val scenes (from Fashion-MNIST train images 50,000..59,999, which no "
                        "train scene uses; default: the --test size)")
    p.add_argument("--test", type=positive_int, default=2000,
                   help="test scenes (from Fashion-MNIST test images)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed: the same seed writes the same shards")
    p.add_argument("--grammar", choices=("outfits", "independent"), default="outfits",
                   help="'independent': the control variant without label dependencies")
    p.add_argument("--image-size", type=positive_int, default=64,
                   help="scene width and height in pixels (even, >= 56)")
    p.add_argument("--source", default=None, help="folder with Fashion-MNIST IDX files")
    p.set_defaults(func=cmd_data_fashion)
    p = dsub.add_parser(
        "split", help="carve a val split out of a train folder (by a hash)",
        description="Writes OUT/train and OUT/val from the records of --data, copied byte for "
                    "byte. A record goes to val when sha256(seed + image/id, or its bytes "
                    "without an id) falls below the fraction: the same data and seed always "
                    "give the same split.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="data folder of *.tfrecord.gz shards to split")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes OUT/train and OUT/val (refused when they hold shards)")
    p.add_argument("--val-fraction", type=probability, required=True, metavar="F",
                   help="expected fraction of records in val, between 0 and 1 (exclusive)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                   help="salt of the hash: the same data and seed give the same split")
    p.set_defaults(func=cmd_data_split)
    p = dsub.add_parser("from-csv", help="CSV with columns image,labels")
    p.add_argument("--csv", required=True, help="CSV file with the columns image,labels")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--label-sep", type=label_sep, default="|",
                   help="separator between the labels of one image (default |)")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_csv)
    p = dsub.add_parser("from-coco", help="MS-COCO instances JSON + image folder")
    p.add_argument("--annotations", required=True, help="COCO instances JSON file")
    p.add_argument("--images", required=True, help="folder of the images the JSON names")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--keep-empty", action="store_true",
                   help="keep images without annotations (they get no labels)")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_coco)
    p = dsub.add_parser("from-voc", help="Pascal VOC folder")
    p.add_argument("--root", required=True, help="VOC root (holds Annotations/, JPEGImages/, ImageSets/)")
    p.add_argument("--split", required=True,
                   help="image set under ImageSets/Main (e.g. train, val, trainval, test)")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--difficult", action="store_true", help="include 'difficult' objects")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_voc)

    from cnnrnn_tf.config import BACKBONES, DECODERS, LABEL_HEADS, MODELS, MONITORS, OPTIMIZERS
    from cnnrnn_tf.vocabulary import LABEL_ORDERS

    p = sub.add_parser("train", help="train a model; writes MODEL_DIR")
    p.add_argument("--train", required=True, help="training data folder")
    p.add_argument("--eval", required=True,
                   help="validation data folder: early stopping, checkpoint selection, "
                        "thresholds")
    p.add_argument("--test", default=None, metavar="FOLDER",
                   help="test data folder: scored once, after selection (the numbers of "
                        "metrics.json and the table); read only once the model is final")
    p.add_argument("--out", required=True, help="MODEL_DIR to write")
    p.add_argument("--model", choices=MODELS, default="cnn-rnn",
                   help="cnn-rnn (the paper's model, default) or a per-label baseline: bce, asl")
    p.add_argument("--backbone", choices=BACKBONES, default="small-cnn",
                   help="image encoder: small-cnn from scratch (default) or a pretrained one")
    p.add_argument("--image-size", type=positive_int, default=64,
                   help="images are resized to this square size in pixels (default 64)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default: chosen from the training set size, with early stopping")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="the global batch: split over all replicas when training on several "
                        "GPUs or machines (TF_CONFIG, see README)")
    p.add_argument("--label-order", choices=LABEL_ORDERS, default="frequent-first",
                   help="cnn-rnn: order of the label path in training (default frequent-first, "
                        "the paper's; pla/mla: orderless, Yazici et al. 2020)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop",
                   help="rmsprop (the paper's, default) or adam")
    p.add_argument("--learning-rate", type=positive_float, default=1e-3,
                   help="initial learning rate (default 1e-3)")
    p.add_argument("--beam-size", type=positive_int, default=3,
                   help="beam width of the decoding (default 3)")
    p.add_argument("--max-labels", type=positive_int, default=None,
                   help="most labels per image (default: the most of any training image, up to 16)")
    p.add_argument("--threshold", type=probability, default=None,
                   help="bce/asl: a fixed decision threshold (default: chosen on the --eval "
                        "(validation) split after training, maximising --threshold-metric)")
    p.add_argument("--threshold-metric", choices=("OF1", "CF1"), default="OF1",
                   help="bce/asl: what the calibrated threshold maximises on --eval")
    p.add_argument("--per-class-threshold", action="store_true",
                   help="bce/asl: one calibrated threshold per label")
    p.add_argument("--label-head", choices=LABEL_HEADS, default=None,
                   help="cnn-rnn: 'evidence' (default) adds a per-label head trained with an "
                        "auxiliary BCE whose logits join the decoder's scores; 'aux' uses it "
                        "for the loss only; 'none' is the paper's model exactly")
    p.add_argument("--decoder", choices=DECODERS, default="global",
                   help="cnn-rnn: 'global' (the paper's: one image vector joins every step) or "
                        "'attention' (each step attends over the encoder's feature map; "
                        "attention maps with predict --attention and in report)")
    p.add_argument("--attention-dim", type=positive_int, default=128,
                   help="cnn-rnn --decoder attention: size of the attention space")
    p.add_argument("--aux-loss-weight", type=non_negative_float, default=None,
                   help="cnn-rnn: weight of that auxiliary BCE (default 1)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's CNN-RNN settings: no label head, no seen-label mask in "
                        "training, no dropout, a 512-unit LSTM, constant-rate RMSprop, no early "
                        "stopping (flags given explicitly still win)")
    p.add_argument("--no-mask-seen", action="store_true",
                   help="cnn-rnn: do not mask labels already on the path in training (paper)")
    p.add_argument("--lstm-units", type=positive_int, default=None, help="default 256 (paper 512)")
    p.add_argument("--embed-dim", type=positive_int, default=None, help="label embedding (64)")
    p.add_argument("--dropout", type=_float_where(lambda v: 0 <= v < 1, "in [0, 1)"),
                   default=None, help="default 0.1 (paper 0)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=None,
                   help="default cosine decay over the planned steps (paper: constant)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="training steps per epoch (default: one pass over --train)")
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                   help="XLA for the training step: auto (default) on a GPU, off on the CPU")
    p.add_argument("--steps-per-execution", type=positive_int, default=None,
                   help="training steps per compiled call (default: chosen; a divisor of "
                        "the steps per epoch, so epochs and callbacks stay exact)")
    p.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help="decoded input (or frozen-encoder features): in memory when it fits "
                        "--cache-budget-gb (auto), in a cache file under --out removed after "
                        "training (disk), or decoded again every epoch (none)")
    p.add_argument("--cache-budget-gb", type=non_negative_float, default=2.0,
                   help="memory for --cache auto (default 2)")
    p.add_argument("--patience", type=non_negative_int, default=None,
                   help="early stopping patience in epochs (default: max(4, epochs/3))")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train every epoch; keep the last weights")
    p.add_argument("--augment", action="store_true", help="brightness / contrast jitter")
    p.add_argument("--crop-scale", type=_float_where(lambda v: 0.05 <= v <= 1, "in [0.05, 1]"),
                   default=None, metavar="MIN",
                   help="random resized crop of MIN..1 of the image's area (e.g. 0.5)")
    p.add_argument("--hflip", action="store_true",
                   help="random horizontal flips (only where a mirrored image keeps its labels)")
    p.add_argument("--ema", action="store_true",
                   help="validate, select and export a moving average of the weights")
    p.add_argument("--label-smoothing", type=_float_where(lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
                   default=0.0, help="label smoothing of the training loss, in [0, 0.5)")
    p.add_argument("--monitor", choices=MONITORS, default="val_f1",
                   help="early stopping / checkpoint selection: decoded validation F1 (mean of "
                        "CF1 and OF1, default), mAP, or the teacher-forced loss")
    p.add_argument("--fine-tune", action="store_true", help="train a pretrained encoder too")
    p.add_argument("--no-pretrained-weights", action="store_true",
                   help="random init for vgg16/resnet50/efficientnet-lite0 (needs --fine-tune: "
                        "a frozen random backbone learns nothing)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute (GPU)")
    p.add_argument("--verbose", type=non_negative_int, default=None, choices=(0, 1, 2),
                   help="Keras fit verbosity: 1 a progress bar, 2 one line per epoch "
                        "(default: 1 on a terminal, 2 when the output goes to a file or pipe)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a MODEL_DIR on a data folder")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--data", required=True, help="data folder of TFRecord shards")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    p.add_argument("--per-class", action="store_true", help="also a table per label")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="label sets for image files")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    p.add_argument("--attention", action="store_true",
                   help="--decoder attention models: with --json, each label's attention map "
                        "(an h x w grid of weights that sums to 1) under 'attention'")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write the SavedModel of a MODEL_DIR")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--serving-manifests", metavar="DIR", default=None,
                   help="warn when the tensorflow/serving images in DIR's *.yml/*.yaml are "
                        "older than the exporting TensorFlow (default: compare with the image "
                        "serving/ pins)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="plots and a report.md for a MODEL_DIR on a data folder")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--data", required=True, help="data folder of TFRecord shards")
    p.add_argument("--out", required=True, help="REPORT_DIR to write (report.md + PNG plots)")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("benchmark", help="inference speed of a MODEL_DIR: encoder vs full decode")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--repeats", type=positive_int, default=20, help="timed batches")
    p.add_argument("--warmup", type=non_negative_int, default=3,
                   help="untimed batches first (tracing, caches)")
    p.add_argument("--python-loop", action="store_true",
                   help="also time a greedy decode whose loop runs in Python")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    p.set_defaults(func=cmd_benchmark)

    # The pipeline's ExampleGen always makes train / eval / test (cnnrnn_pipeline.example_gen).
    data_help = (
        "folder of shards ({where}): train/ val/ test/ inside (val/ is the eval split), or "
        "train/ test/ (eval is then carved out of train, 1 in 10 by a hash of image/id, "
        "and the run says so), or one folder hash-split 8:1:1 into train/eval/test; the "
        "layout is detected when the pipeline runs")
    pipe = sub.add_parser("pipeline", help="the TFX pipeline (needs the [pipeline] extra)")
    psub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", parser_class=Parser)
    psub.required = True
    # --min-of1 0 is valid: it blesses any model.
    unit_interval = _float_where(lambda v: 0.0 <= v <= 1.0, "between 0 and 1 (inclusive)")
    p = psub.add_parser("run", help="run the pipeline locally (LocalDagRunner, Beam)")
    p.add_argument("--data", required=True,
                   help=data_help.format(where="local, s3:// or gs://"))
    p.add_argument("--pipeline-root", required=True, help="artifacts (local, s3:// or gs://)")
    p.add_argument("--serving-dir", required=True, help="pushes to SERVING_DIR/MODEL_NAME/VERSION")
    p.add_argument("--model-name", default="cnnrnn",
                   help="the served model's name (SERVING_DIR/MODEL_NAME/VERSION)")
    p.add_argument("--metadata-path", default=None, metavar="FILE",
                   help="the local ML Metadata SQLite file (default PIPELINE_ROOT/metadata.sqlite;"
                        " required when PIPELINE_ROOT is s3:// or gs://)")
    p.add_argument("--schema", default=None, metavar="URI",
                   help="a curated schema.pbtxt (default: derived from the training labels)")
    p.add_argument("--train-config", default=None, metavar="FILE",
                   help="a TrainConfig JSON; the training flags below override its fields")
    p.add_argument("--model", choices=MODELS, default=None, help="as cnnrnn train --model")
    p.add_argument("--backbone", choices=BACKBONES, default=None,
                   help="as cnnrnn train --backbone")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="as cnnrnn train --image-size")
    p.add_argument("--epochs", type=positive_int, default=None, help="as cnnrnn train --epochs")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="as cnnrnn train --batch-size")
    p.add_argument("--label-order", choices=LABEL_ORDERS, default=None,
                   help="as cnnrnn train --label-order")
    p.add_argument("--seed", type=non_negative_int, default=None, help="as cnnrnn train --seed")
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="the Trainer's training steps (default: from the epochs)")
    p.add_argument("--eval-steps", type=positive_int, default=None,
                   help="the Trainer's validation steps (default: the whole eval split)")
    p.add_argument("--min-of1", type=unit_interval, default=0.1,
                   help="the Evaluator blesses (and the Pusher pushes) only above this OF1 "
                        "(0 blesses any model)")
    p.add_argument("--infra-validator", choices=("docker", "kubernetes"), default=None,
                   help="add TFX's InfraValidator (TF Serving in Docker or Kubernetes) "
                        "before the Pusher; off by default")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument, e.g. --beam-arg=--direct_num_workers=2")
    p.set_defaults(func=cmd_pipeline_run)
    p = psub.add_parser("compile", help="compile the pipeline for an orchestrator")
    p.add_argument("--runner", choices=("kubeflow-v2",), required=True,
                   help="the orchestrator to compile for")
    p.add_argument("--image", required=True, help="container image with this package installed")
    p.add_argument("--output", required=True,
                   help="the file to write: .yaml (kfp) or .json (vertex)")
    p.add_argument("--pipeline-root", required=True, help="gs:// or s3:// URI")
    p.add_argument("--data", required=True,
                   help=data_help.format(where="gs:// or s3://; the data_root runtime parameter"))
    p.add_argument("--serving-dir", required=True,
                   help="gs:// or s3:// serving base (in the push_destination runtime parameter)")
    p.add_argument("--model-name", default="cnnrnn",
                   help="the served model's name (SERVING_DIR/MODEL_NAME/VERSION)")
    p.add_argument("--gpus", type=non_negative_int, default=0,
                   help="GPUs the Trainer requests (shorthand for --resources Trainer=gpu:N)")
    p.add_argument("--gpu-type", default=None,
                   help="accelerator name (default nvidia.com/gpu on kfp, NVIDIA_TESLA_T4 on vertex)")
    p.add_argument("--train-config", default=None, metavar="FILE", help="a TrainConfig JSON")
    p.add_argument("--schema", default=None, metavar="URI",
                   help="a curated schema.pbtxt the workers read (default: the label domain is "
                        "derived from the train split when the pipeline runs)")
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="default of the train_args runtime parameter")
    p.add_argument("--min-of1", type=unit_interval, default=0.1,
                   help="blessing threshold (in the eval_config runtime parameter)")
    p.add_argument("--infra-validator", choices=("docker", "kubernetes"), default=None,
                   help="add TFX's InfraValidator before the Pusher; off by default")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument for the Beam-based components")
    add_compile_flags(p)
    p.set_defaults(func=cmd_pipeline_compile)
    add_submit_parser(psub, cmd_pipeline_submit)

    from cnnrnn_tf.serving.commands import add_serving_commands

    add_serving_commands(sub, Parser)

    p = sub.add_parser("main-job", help="the README's main job (what 'make run' calls)")
    p.add_argument("--work-dir", default="runs/default",
                   help="data, pipeline, models and report go here")
    p.add_argument("--train", type=positive_int, default=None,
                   help="train scenes when the job builds its data (default 10000)")
    p.add_argument("--test", type=positive_int, default=None,
                   help="val and test scenes each, when the job builds its data (default 2000)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: chosen from the training set size)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="data and training seed")
    p.set_defaults(func=cmd_main_job)
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


# The local input paths of each command, checked before anything heavy is imported, so a
# mistyped path answers at once: (argument, what it is). URIs and glob patterns are left
# to the command itself.
def _local_inputs():
    model = ("model", "model folder")
    return {
        cmd_train: (("train", "data folder"), ("eval", "data folder"), ("test", "data folder")),
        cmd_evaluate: (model, ("data", "data folder")),
        cmd_report: (model, ("data", "data folder")),
        cmd_predict: (model,),
        cmd_export: (model,),
        cmd_benchmark: (model,),
        cmd_data_split: (("data", "data folder"),),
        cmd_data_csv: (("csv", "CSV file"),),
        cmd_data_coco: (("annotations", "annotation file"), ("images", "image folder")),
        cmd_data_voc: (("root", "VOC root folder"),),
    }


def check_local_inputs(args) -> None:
    """InputError naming the first local input path of ``args`` that does not exist."""
    for name, what in _local_inputs().get(getattr(args, "func", None), ()):
        value = getattr(args, name, None)
        if not isinstance(value, str) or not value or "://" in value \
                or any(c in value for c in "*?["):
            continue
        if not os.path.exists(value):
            raise InputError(f"{value}: {what} does not exist")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_startup(args.log_level)
    try:
        if args.func is not cmd_train:  # cmd_train checks its flags first
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
    from cnnrnn_tf.uri import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
