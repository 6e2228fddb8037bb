"""``cnnrnn evaluate``, ``predict``, ``export``, ``report`` and ``benchmark``: what a MODEL_DIR does."""
from __future__ import annotations

import json
import sys

from cnnrnn_tf import progress
from cnnrnn_tf.cli.args import non_negative_int, positive_int

MODEL_DIR_INPUT = ("model", "model folder")


def cmd_evaluate(args) -> int:
    from cnnrnn_tf.evaluation.evaluate import evaluate_model
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
    from cnnrnn_tf.serving.predictor import Predictor

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
    from cnnrnn_tf.serving.export import export_saved_model
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
    from cnnrnn_tf.evaluation.report import write_report

    path = write_report(args.model, args.data, args.out, beam_size=args.beam_size,
                        progress=progress.wanted(args))
    print(f"report written to {path}")
    return 0


def cmd_benchmark(args) -> int:
    from cnnrnn_tf.evaluation.speed import benchmark_command

    return benchmark_command(args)


def register(sub) -> None:
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
    p.set_defaults(func=cmd_evaluate, local_inputs=(MODEL_DIR_INPUT, ("data", "data folder")))

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
    p.set_defaults(func=cmd_predict, local_inputs=(MODEL_DIR_INPUT, ("images", "image file")))

    p = sub.add_parser("export", help="write the SavedModel of a MODEL_DIR")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--serving-manifests", metavar="DIR", default=None,
                   help="warn when the tensorflow/serving images in DIR's *.yml/*.yaml are "
                        "older than the exporting TensorFlow (default: compare with the image "
                        "serving/ pins)")
    p.set_defaults(func=cmd_export, local_inputs=(MODEL_DIR_INPUT,))

    p = sub.add_parser("report", help="plots and a report.md for a MODEL_DIR on a data folder")
    p.add_argument("--model", required=True, help="MODEL_DIR written by cnnrnn train")
    p.add_argument("--data", required=True, help="data folder of TFRecord shards")
    p.add_argument("--out", required=True, help="REPORT_DIR to write (report.md + PNG plots)")
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width of the decoding (default: the model's)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    p.set_defaults(func=cmd_report, local_inputs=(MODEL_DIR_INPUT, ("data", "data folder")))

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
    p.set_defaults(func=cmd_benchmark, local_inputs=(MODEL_DIR_INPUT,))
