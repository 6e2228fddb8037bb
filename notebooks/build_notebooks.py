"""Writes the notebooks of this folder from the cells below (run it after editing).

    python notebooks/build_notebooks.py          # rewrites 01_quickstart.ipynb, 02_finetune_keras.ipynb

The notebooks hold no model code: every cell calls the installed library.
They are committed without outputs; ``tests/test_notebooks.py`` executes them
with tiny settings through the ``CNNRNN_NB_*`` environment variables that
their parameters cell reads (in Colab the same parameters are form fields).
Both carry Colab's GPU metadata (``accelerator: GPU``, ``colab.gpuType``), so Colab
opens them on a GPU runtime, and a cell says how to get one when there is none.
In Colab, the install cell pip-installs ``PACKAGE`` (``CNNRNN_NB_PACKAGE``: a path,
a wheel on Drive, a ``gs://`` wheel or a git URL); there is no default, so with
none set it stops with one line saying what to set (BUILD.md builds the wheel).
``WORK`` may be a local folder, a Google Drive folder (mounted by the work-folder
cell) or a ``gs://`` folder (the notebook works in a local copy and copies it back).
"""
from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_notebook

# The shared cells live beside this script (its folder is on sys.path when it runs).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from notebook_cells import (COLAB_METADATA, GPU_CHECK, HERE, INSTALL, KERNEL,  # noqa: E402
                            SAVE_WORK, WORK_FOLDER, code, colab_badge, md, parameters)

QUICKSTART = [
    md("""
# CNN-RNN quickstart

Multi-label image classification with CNN-RNN (Wang et al., CVPR 2016): a CNN encodes the
image, an LSTM walks a path of labels, and a beam search decodes the label **set**.

This notebook builds the default data set (Fashion-MNIST outfit scenes), trains a small
CNN-RNN, and looks at its predictions. Three splits, three jobs: the model is fitted on
`train`, the `val` split selects (early stopping, the checkpoint), and the `test` split is
scored once, at the end, by a model that nothing fitted or chose on it. All code lives in
the `cnnrnn_tf` library; the cells only call it. The settings below are form fields in Colab; environment variables
(`CNNRNN_NB_TRAIN=200 CNNRNN_NB_EPOCHS=1 ...`) override them to run it tiny.

""" + colab_badge("01_quickstart.ipynb") + """
"""),
    parameters("""
N_TRAIN = 3000  #@param {type:"integer"}
N_VAL = 500  #@param {type:"integer"}
N_TEST = 500  #@param {type:"integer"}
EPOCHS = 10  #@param {type:"integer"}
IMAGE_SIZE = 64  #@param {type:"integer"}
#@markdown Fashion-MNIST IDX folder; empty: Debian's package when installed, else a Keras download.
FASHION_MNIST = ""  #@param {type:"string"}
""", """
N_TRAIN = from_env("TRAIN", N_TRAIN)    # training scenes: fit
N_VAL = from_env("VAL", N_VAL)          # validation scenes: select, never reported
N_TEST = from_env("TEST", N_TEST)       # test scenes: reported, never select
EPOCHS = from_env("EPOCHS", EPOCHS)
IMAGE_SIZE = from_env("IMAGE_SIZE", IMAGE_SIZE)
WORK = from_env("WORK", WORK)           # everything is written here
FASHION_MNIST = from_env("FASHION_MNIST", FASHION_MNIST) or None
"""),
    GPU_CHECK,
    INSTALL,
    WORK_FOLDER,
    code("""
DATA = os.path.join(WORK, "outfits")
MODEL_DIR = os.path.join(WORK, "quickstart_model")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
%matplotlib inline
"""),
    md("""
## 1. The default data

64x64 scenes of 1-4 Fashion-MNIST items whose combinations follow an outfit grammar
(winter, summer, office, sport, evening), so labels depend on each other. Fashion-MNIST is
read from Debian's `dataset-fashion-mnist` package when installed, else downloaded by Keras.
`train/` and `val/` scenes use disjoint parts of Fashion-MNIST's train items, `test/` scenes
its test items: no item is in two splits.
"""),
    code("""
from cnnrnn_tf.data import build_fashion_outfits, describe_grammar

if not all(os.path.isdir(os.path.join(DATA, s)) for s in ("train", "val", "test")):
    build_fashion_outfits(DATA, num_train=N_TRAIN, num_test=N_TEST, num_val=N_VAL, seed=0,
                          source_dir=FASHION_MNIST, progress=False)
print(describe_grammar())
"""),
    md("""
## 2. Train a small CNN-RNN

`train` fits on `train/` and validates on `val/` after every epoch: early stopping and the
choice of the epoch that is kept use the decoded validation F1. The test split is not read here.
"""),
    code("""
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.model_dir import is_model_dir, load_model_dir
from cnnrnn_tf.training import train

if not is_model_dir(MODEL_DIR):
    config = TrainConfig(model="cnn-rnn", backbone="small-cnn", image_size=IMAGE_SIZE,
                         epochs=EPOCHS, batch_size=32)
    train(config, os.path.join(DATA, "train"), os.path.join(DATA, "val"), MODEL_DIR, verbose=2)
loaded = load_model_dir(MODEL_DIR)
model, vocab = loaded.model, loaded.vocab
print("labels, most frequent first:", ", ".join(vocab.labels))
"""),
    md("""
## 3. Evaluate on the test split

The model is final: now, and only now, the test scenes are scored. mAP ranks the test
images by each label's score; CP/CR/CF1 (per class, averaged) and
OP/OR/OF1 (overall) score the predicted label sets; top-3 scores the three best labels.
"""),
    code("""
from cnnrnn_tf.evaluation.evaluate import predict_dataset
from cnnrnn_tf.metrics import format_table, multilabel_metrics, per_class_table

TEST = os.path.join(DATA, "test")
preds = predict_dataset(model, vocab, TEST, loaded.image_size)
metrics = multilabel_metrics(preds.y_true, preds.y_pred, preds.y_score, top_k=3,
                             label_names=list(vocab.labels))
print(format_table(metrics, title="CNN-RNN on the test scenes (percent)"))
print()
print(per_class_table(metrics))
"""),
    md("""
## 4. Predictions on test images

Under each image: predicted labels in decoding order with their scores, green when right,
red when wrong; true labels the model missed in grey.
"""),
    code("""
from cnnrnn_tf.evaluation.plots import plot_predictions

plot_predictions(preds, TEST, list(vocab.labels), count=12)
"""),
    md("## 5. Average precision per label"),
    code("""
from cnnrnn_tf.evaluation.plots import plot_per_class_ap

plot_per_class_ap(metrics)
"""),
    md("""
## 6. Label co-occurrence

Cell (i, j) is the fraction of images with label i that also have label j. The decoder
models these dependencies: compare the structure of its predicted sets with the truth.
"""),
    code("""
from cnnrnn_tf.evaluation.plots import plot_cooccurrence

plot_cooccurrence(preds.y_true, preds.y_pred, list(vocab.labels))
"""),
    SAVE_WORK,
    md("""
The full report (these plots, precision-recall curves, set sizes and the metric tables in
`report.md`) is one command:

    cnnrnn report --model cnnrnn_work/quickstart_model --data cnnrnn_work/outfits/test --out cnnrnn_work/report
"""),
]


FINETUNE = [
    md("""
# Fine-tune a CNN-RNN on your own labels, export for TF Serving

""" + colab_badge("02_finetune_keras.ipynb") + """

1. Install the library (in Colab) and load a trained model (or train a tiny one).
2. Fine-tune it on **your CSV data set** (`image,labels` with labels joined by `|`), which
   may contain labels the model has never seen: they are added to the vocabulary, the
   existing labels keep their weights.
3. Evaluate, check that the new labels are predicted, and export a SavedModel for TF Serving.

Three splits, three jobs: fine-tuning fits on your `train` CSV, a validation split selects
the epoch that is kept (your `val` CSV, or a part of `train` carved off with
`cnnrnn data split`), and your `test` CSV is scored once, by the final model.

Without a CSV of your own, the notebook makes a demo one: outfit scenes, half of them with a
yellow frame and the **new** label `framed`.
"""),
    parameters("""
#@markdown Your data: CSVs with columns image,labels (image paths relative to the CSV);
#@markdown CSV_TRAIN empty: make the demo CSVs. CSV_VAL empty: carve VAL_FRACTION of train off.
CSV_TRAIN = ""  #@param {type:"string"}
CSV_VAL = ""  #@param {type:"string"}
CSV_TEST = ""  #@param {type:"string"}
VAL_FRACTION = 0.2  #@param {type:"number"}
LABEL_SEP = "|"  #@param {type:"string"}
#@markdown A trained model folder to start from; empty: train a small one on the default data.
BASE_MODEL = ""  #@param {type:"string"}
N_TRAIN = 2000  #@param {type:"integer"}
N_VAL = 400  #@param {type:"integer"}
N_TEST = 400  #@param {type:"integer"}
EPOCHS = 8  #@param {type:"integer"}
FT_EPOCHS = 6  #@param {type:"integer"}
FT_BATCH_SIZE = 16  #@param {type:"integer"}
FT_LEARNING_RATE = 1e-3  #@param {type:"number"}
IMAGE_SIZE = 64  #@param {type:"integer"}
FASHION_MNIST = ""  #@param {type:"string"}
""", """
CSV_TRAIN = from_env("CSV_TRAIN", CSV_TRAIN)
CSV_VAL = from_env("CSV_VAL", CSV_VAL)
CSV_TEST = from_env("CSV_TEST", CSV_TEST)
VAL_FRACTION = from_env("VAL_FRACTION", VAL_FRACTION)
LABEL_SEP = from_env("LABEL_SEP", LABEL_SEP)
BASE_MODEL = from_env("MODEL", BASE_MODEL)
N_TRAIN = from_env("TRAIN", N_TRAIN)
N_VAL = from_env("VAL", N_VAL)
N_TEST = from_env("TEST", N_TEST)
EPOCHS = from_env("EPOCHS", EPOCHS)                  # base model, if trained here
FT_EPOCHS = from_env("FT_EPOCHS", FT_EPOCHS)         # fine-tuning
FT_BATCH_SIZE = from_env("FT_BATCH_SIZE", FT_BATCH_SIZE)
FT_LEARNING_RATE = from_env("FT_LEARNING_RATE", FT_LEARNING_RATE)
IMAGE_SIZE = from_env("IMAGE_SIZE", IMAGE_SIZE)
WORK = from_env("WORK", WORK)
FASHION_MNIST = from_env("FASHION_MNIST", FASHION_MNIST) or None
"""),
    GPU_CHECK,
    INSTALL,
    WORK_FOLDER,
    code("""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.makedirs(WORK, exist_ok=True)
%matplotlib inline
"""),
    md("## 1. The model to start from"),
    code("""
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.data import build_fashion_outfits
from cnnrnn_tf.model_dir import is_model_dir, load_model_dir
from cnnrnn_tf.training import train

OUTFITS = os.path.join(WORK, "outfits")  # the default data: for the base model, the demo CSV
if (not BASE_MODEL or not CSV_TRAIN) and not os.path.isdir(os.path.join(OUTFITS, "val")):
    build_fashion_outfits(OUTFITS, num_train=N_TRAIN, num_test=N_TEST, num_val=N_VAL, seed=0,
                          source_dir=FASHION_MNIST, progress=False)
if not BASE_MODEL:
    BASE_MODEL = os.path.join(WORK, "base_model")
    if not is_model_dir(BASE_MODEL):  # fitted on train, selected on val
        train(TrainConfig(image_size=IMAGE_SIZE, epochs=EPOCHS), os.path.join(OUTFITS, "train"),
              os.path.join(OUTFITS, "val"), BASE_MODEL, verbose=2)
base = load_model_dir(BASE_MODEL)
print(f"{BASE_MODEL}: {base.config.model}, {base.image_size}px, labels: {', '.join(base.vocab.labels)}")
"""),
    md("""
## 2. Your data set (CSV)

The demo CSVs: outfit scenes of the default data (train, val and test from its three
splits, which share no Fashion-MNIST item); every other one gets a yellow frame and the
new label `framed`, next to its outfit labels (keeping old labels in the new data stops the
model from forgetting them).
"""),
    code("""
import csv

import numpy as np
from PIL import Image

from cnnrnn_tf.evaluation.plots import example_images

NEW_LABEL = "framed"


def make_demo_csv(source_dir, out_dir, count, offset=0):
    \"\"\"Writes out_dir/labels.csv and its PNGs from the scenes of a data folder.\"\"\"
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    images, labels = example_images(source_dir, offset + count)
    path = os.path.join(out_dir, "labels.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for i, (image, names) in enumerate(zip(images[offset:], labels[offset:])):
            image = image.copy()
            if i % 2 == 0:
                w = max(2, image.shape[0] // 12)
                image[:w], image[-w:], image[:, :w], image[:, -w:] = 255, 255, 255, 255
                image[:w, :, 2] = image[-w:, :, 2] = image[:, :w, 2] = image[:, -w:, 2] = 0
                names = names + [NEW_LABEL]
            name = f"images/{i:05d}.png"
            Image.fromarray(image).save(os.path.join(out_dir, name))
            writer.writerow([name, LABEL_SEP.join(names)])
    return path


if not CSV_TRAIN:
    demo = os.path.join(WORK, "demo_csv")
    counts = {"train": max(16, min(N_TRAIN, 400)), "val": max(8, min(N_VAL, 100)),
              "test": max(8, min(N_TEST, 100))}
    for split, count in counts.items():
        if not os.path.isfile(os.path.join(demo, split, "labels.csv")):
            make_demo_csv(os.path.join(OUTFITS, split), os.path.join(demo, split), count)
    CSV_TRAIN, CSV_VAL, CSV_TEST = (os.path.join(demo, s, "labels.csv")
                                    for s in ("train", "val", "test"))

with open(CSV_TRAIN) as f:
    print("".join(f.readlines()[:4]))
"""),
    code("""
import subprocess
import sys

from cnnrnn_tf.data import convert_csv

MY_DATA = os.path.join(WORK, "my_data")
for split, path in (("train", CSV_TRAIN), ("val", CSV_VAL), ("test", CSV_TEST)):
    if path and not os.path.isdir(os.path.join(MY_DATA, split)):
        summary = convert_csv(path, os.path.join(MY_DATA, split), label_sep=LABEL_SEP)
        print(split, summary.written, "images")
TRAIN_DIR, VAL_DIR, TEST_DIR = (os.path.join(MY_DATA, s) for s in ("train", "val", "test"))
if not CSV_VAL:
    # No val CSV: carve VAL_FRACTION of train off as the validation split (a stable hash of
    # each record's id decides its side); fine-tuning then fits on the rest.
    CARVED = os.path.join(MY_DATA, "carved")
    if not os.path.isdir(os.path.join(CARVED, "val")):
        done = subprocess.run([sys.executable, "-m", "cnnrnn_tf.cli", "data", "split",
                               "--data", TRAIN_DIR, "--out", CARVED,
                               "--val-fraction", str(VAL_FRACTION)], capture_output=True, text=True)
        print(done.stdout + done.stderr)
        if done.returncode:
            raise RuntimeError("cnnrnn data split failed; see above")
    TRAIN_DIR, VAL_DIR = os.path.join(CARVED, "train"), os.path.join(CARVED, "val")
"""),
    md("""
## 3. Fine-tune

`finetune` loads the model, adds the labels of the new training data that it does not know
(here `framed`) to the vocabulary and the label embedding (existing rows are copied, new rows
start at the mean label row) and trains on the new data. By default it keeps the label order
the model learned and appends new labels after the old ones; here `reorder=True` re-sorts every
label by its frequency in the new data (the paper's frequent-first order), because `framed` is
on half of the images, and a frequent label that comes last in every training path is emitted
only after all the others (with the default, the test saw it on 7 of 16 framed images).
The epoch it keeps is chosen on the validation split; the test split is not read here.
"""),
    code("""
from cnnrnn_tf.training.finetune import finetune

TUNED = os.path.join(WORK, "tuned_model")
if not is_model_dir(TUNED):
    finetune(BASE_MODEL, TRAIN_DIR, VAL_DIR, TUNED,
             epochs=FT_EPOCHS, batch_size=FT_BATCH_SIZE, learning_rate=FT_LEARNING_RATE,
             reorder=True, verbose=2)
tuned = load_model_dir(TUNED)
added = [x for x in tuned.vocab.labels if x not in base.vocab.labels]
print("new labels:", ", ".join(added) or "(none)")
"""),
    md("## 4. Evaluate: is the new label predicted?"),
    code("""
from cnnrnn_tf.evaluation.evaluate import predict_dataset
from cnnrnn_tf.metrics import format_table, multilabel_metrics, per_class_table

TEST = TEST_DIR  # read for the first time: the model is final
names = list(tuned.vocab.labels)
preds = predict_dataset(tuned.model, tuned.vocab, TEST, tuned.image_size)
metrics = multilabel_metrics(preds.y_true, preds.y_pred, preds.y_score, label_names=names)
print(format_table(metrics, title="fine-tuned model on the new test data (percent)"))
print()
print(per_class_table(metrics))
print()
for label in added:
    k = names.index(label)
    has = preds.y_true[:, k] == 1
    hits, false_alarms = int(preds.y_pred[has, k].sum()), int(preds.y_pred[~has, k].sum())
    print(f"NEW LABEL {label!r} predicted on {hits} of {int(has.sum())} test images that have it "
          f"(and on {false_alarms} of {int((~has).sum())} that do not)")
"""),
    code("""
from cnnrnn_tf.evaluation.plots import plot_predictions

plot_predictions(preds, TEST, names, count=8)
"""),
    md("""
## 5. Export for TF Serving

TF Serving loads `<model_base_path>/<version>/saved_model.pb`. The SavedModel decodes the
image, resizes it and runs the beam search inside the graph; its `serving_default` signature
takes serialized `tf.train.Example`s, `predict_images` takes PNG/JPEG bytes. Serve it with

    docker run -p 8501:8501 -v $PWD/cnnrnn_work/serving:/models/cnnrnn -e MODEL_NAME=cnnrnn tensorflow/serving
"""),
    code("""
import time

import tensorflow as tf

from cnnrnn_tf.serving.export import export_saved_model
from cnnrnn_tf.schema import iter_records

version = str(int(time.time()))
export_dir = export_saved_model(tuned.model, tuned.vocab, tuned.image_size,
                                os.path.join(WORK, "serving", version))
serving = tf.saved_model.load(export_dir)
print(export_dir, "signatures:", sorted(serving.signatures))

records = [r for _, r in zip(range(4), iter_records(TEST))]
out = serving.signatures["predict_images"](images=tf.constant([r.image for r in records]))
for r, labels, count in zip(records, out["labels"].numpy(), out["label_count"].numpy()):
    print(r.image_id, "->", [x.decode() for x in labels[:count]], " truth:", r.labels)
"""),
    SAVE_WORK,
]


def build(path: str, cells) -> None:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": KERNEL,
        "language_info": {"name": "python"},
        **COLAB_METADATA,
    })
    nbformat.validate(nb)
    # ids are deterministic so the committed files only change when a cell changes
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    with open(path, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)


def main(out_dir: str = HERE) -> None:
    build(os.path.join(out_dir, "01_quickstart.ipynb"), QUICKSTART)
    build(os.path.join(out_dir, "02_finetune_keras.ipynb"), FINETUNE)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
