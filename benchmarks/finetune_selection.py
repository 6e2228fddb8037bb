"""Which epoch does fine-tuning select, and does it predict the new label?

For each seed: a tiny CNN-RNN is trained for one epoch on the shape scenes of the tests
(``tests/conftest.py``, optionally noisier), then fine-tuned (``cnnrnn_tf.training.finetune.finetune``)
on such scenes of which half carry a yellow frame and the new label ``frame``. Every
epoch's validation loss, decoded CF1 / OF1 / val_f1 and the new label's recall and
predicted count on the validation split are printed, with the epoch EarlyStopping kept
(``*``) and what the returned model predicts.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune_selection.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(image_size=32, batch_size=16, lstm_units=32, embed_dim=16, beam_size=2)


def new_label_recall(model, vocab, data, label):
    """(recall, images predicted with it) of ``label`` on ``data``, beam-search decoded."""
    from cnnrnn_tf.evaluation.evaluate import predict_dataset

    preds = predict_dataset(model, vocab, data, TINY["image_size"])
    k = vocab.index[label]
    has = preds.y_true[:, k] == 1
    return float(preds.y_pred[has, k].mean()), int(preds.y_pred[:, k].sum())


def finish(img, frame, noise, rng):
    """A float image with a yellow frame ``frame`` pixels wide (none for 0) and Gaussian
    noise of std ``noise``, as uint8."""
    if frame:
        img[:frame, :, :] = img[-frame:, :, :] = (255, 255, 0)
        img[:, :frame, :] = img[:, -frame:, :] = (255, 255, 0)
    return np.clip(img + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)


def scenes(n, seed, *, frame=0, noise=0.0):
    """The shape scenes of the tests (``tests/conftest.py``: red / green / blue / bar) with
    Gaussian pixel noise of std ``noise``; with ``frame`` > 0 every other scene gets a yellow
    frame that many pixels wide and the new label "frame"."""
    import io

    from PIL import Image

    from tests.conftest import png_bytes, synthetic_records

    rng = np.random.RandomState(seed)
    out = []
    for i, record in enumerate(synthetic_records(n, seed=seed)):
        img = np.asarray(Image.open(io.BytesIO(record.image)).convert("RGB"), np.float32)
        labels = list(record.labels)
        if frame and i % 2 == 0:
            labels.append("frame")
        img = finish(img, frame if i % 2 == 0 else 0, noise, rng)
        out.append(record._replace(image=png_bytes(img), labels=labels))
    return out


GRID_LABELS = tuple(f"cell{i}" for i in range(8))
GRID_RATES = (0.8, 0.6, 0.45, 0.3, 0.2, 0.15, 0.1, 0.1)


def grid_scenes(n, seed, *, frame=0, noise=0.0):
    """Harder old labels, like the fine-tune notebook's outfits under a 1-epoch base model:
    8 labels of skewed frequency (0.8 down to 0.1), each a faint square in a cell of a 3x3
    grid, under pixel noise; with ``frame`` every other scene gets the yellow frame."""
    from cnnrnn_tf.schema import Record
    from tests.conftest import png_bytes

    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        labels = [name for name, p in zip(GRID_LABELS, GRID_RATES) if rng.rand() < p]
        labels = labels or [GRID_LABELS[0]]
        img = rng.rand(32, 32, 3).astype(np.float32) * 60
        for name in labels:
            r, c = divmod(GRID_LABELS.index(name), 3)
            img[2 + 10 * r:10 + 10 * r, 2 + 10 * c:10 + 10 * c, :] += 70
        if frame and i % 2 == 0:
            labels = labels + ["frame"]
        img = finish(img, frame if i % 2 == 0 else 0, noise, rng)
        out.append(Record(png_bytes(img), labels, f"g{seed}-{i}"))
    return out


def epoch_table(args, work, seed):
    import keras

    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.inputs.dataset import scan_labels
    from cnnrnn_tf.training.finetune import finetune, finetune_vocabulary, new_labels_in
    from cnnrnn_tf.model_dir import load_model_dir
    from cnnrnn_tf.training import train

    root = os.path.join(work, f"seed{seed}")
    make = grid_scenes if args.scenes == "grid" else scenes
    for name, records in (("train", make(args.base_train, 1, noise=args.noise)),
                          ("test", make(16, 2, noise=args.noise)),
                          ("new_train", make(args.train, 3, frame=args.frame, noise=args.noise)),
                          ("new_val", make(args.val, 4, frame=args.frame, noise=args.noise))):
        schema.write_records(os.path.join(root, name), records)
    train(TrainConfig(epochs=1, seed=seed, **TINY), os.path.join(root, "train"),
          os.path.join(root, "test"), os.path.join(root, "base"), verbose=0, export=False,
          evaluate_after=False)
    val = os.path.join(root, "new_val")
    rows = []

    class EpochRecorder(keras.callbacks.Callback):
        """Each epoch's logs plus the new label's recall and predicted count on val."""

        def __init__(self, vocab):
            super().__init__()
            self.vocab = vocab

        def on_epoch_end(self, epoch, logs=None):
            recall, predicted = new_label_recall(self.model, self.vocab, val, "frame")
            rows.append(dict(logs, recall=recall, predicted=predicted))

    # The vocabulary finetune() will train with (known before it starts).
    base_vocab = load_model_dir(os.path.join(root, "base")).vocab
    lists = scan_labels(os.path.join(root, "new_train"), use_counts_file=False).label_lists
    recorder = EpochRecorder(finetune_vocabulary(base_vocab, lists) if args.reorder
                             else base_vocab.extend(new_labels_in(base_vocab, lists)))
    changes = {} if args.monitor is None else {"monitor": args.monitor}
    result = finetune(os.path.join(root, "base"), os.path.join(root, "new_train"), val,
                      os.path.join(root, "tuned"), epochs=args.epochs, verbose=0,
                      learning_rate=args.lr, seed=seed, extra_callbacks=[recorder],
                      reorder=args.reorder, **changes)
    assert result.vocab.labels == recorder.vocab.labels, result.vocab.labels
    final = new_label_recall(result.model, result.vocab, val, "frame")
    return rows, result.config.monitor, final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--base-train", type=int, default=64, help="the base model's scenes")
    parser.add_argument("--train", type=int, default=128, help="fine-tuning scenes")
    parser.add_argument("--frame", type=int, default=4, help="frame width in pixels")
    parser.add_argument("--scenes", choices=("shapes", "grid"), default="shapes",
                        help="shapes: the tests' scenes; grid: 8 faint labels of skewed "
                             "frequency (harder)")
    parser.add_argument("--noise", type=float, default=0.0, help="pixel noise std (0-255)")
    parser.add_argument("--val", type=int, default=32, help="validation scenes")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--reorder", action="store_true",
                        help="finetune(reorder=True), as the fine-tune notebook does")
    parser.add_argument("--monitor", default=None,
                        help="override finetune()'s monitor (default: its own)")
    parser.add_argument("--work", default=None, help="folder for data and models (default: temp)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="finetune-selection-")
    for seed in args.seeds:
        rows, monitor, (recall, predicted) = epoch_table(args, work, seed)
        # The rule of TieBreakingEarlyStopping: the best monitor value, ties to the lower
        # validation loss, then to the earlier epoch.
        sign = 1.0 if monitor == "val_loss" else -1.0
        best = min(range(len(rows)), key=lambda i: (sign * rows[i][monitor],
                                                    rows[i]["val_loss"], i))
        print(f"seed {seed} (monitor {monitor}):")
        print("  epoch  val_loss  val_CF1  val_OF1  val_f1  frame_recall  frame_predicted")
        for i, r in enumerate(rows):
            print(f"  {i:>3}{'*' if i == best else ' '}   {r['val_loss']:7.4f}  "
                  f"{r.get('val_CF1', float('nan')):7.4f}  {r.get('val_OF1', float('nan')):7.4f}  "
                  f"{r.get('val_f1', float('nan')):6.4f}  {r['recall']:12.2f}  "
                  f"{r['predicted']:>6}/{args.val}")
        print(f"  returned model: frame recall {recall:.2f}, predicted on {predicted}/{args.val}",
              flush=True)


if __name__ == "__main__":
    main()
