"""Executes the notebooks top to bottom (tiny settings) with nbclient.

The kernel is ``python3``: jupyter_client starts it with this interpreter
(``sys.executable``), so the notebooks see the same installed library.
The quickstart's model is reused as the fine-tune notebook's base model.
"""
import json
import os
import re
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.join(os.path.dirname(HERE), "notebooks")
FASHION = "/usr/share/datasets/fashion-mnist"

TINY_ENV = {
    "CNNRNN_NB_TRAIN": "96",
    "CNNRNN_NB_TEST": "32",
    "CNNRNN_NB_EPOCHS": "1",
    "CNNRNN_NB_FT_EPOCHS": "6",
    "CNNRNN_NB_FT_BATCH_SIZE": "16",
    "CNNRNN_NB_FT_LEARNING_RATE": "3e-3",
    "CNNRNN_NB_IMAGE_SIZE": "32",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONWARNINGS": "ignore",
}


def _fashion_or_skip():
    if not os.path.isfile(os.path.join(FASHION, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"{FASHION} missing (apt-get install dataset-fashion-mnist)")


def run_notebook(name, workdir, monkeypatch, **env):
    for key, value in {**TINY_ENV, "CNNRNN_NB_WORK": str(workdir / "work"), **env}.items():
        monkeypatch.setenv(key, value)
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        nb = nbformat.read(f, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def text_outputs(nb):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def image_outputs(nb):
    return sum(1 for cell in nb.cells for o in cell.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def test_notebooks_are_generated_from_build_script(tmp_path):
    subprocess.run([sys.executable, os.path.join(NOTEBOOKS, "build_notebooks.py"), str(tmp_path)],
                   check=True)
    for name in ("01_quickstart.ipynb", "02_finetune_keras.ipynb"):
        with open(tmp_path / name) as a, open(os.path.join(NOTEBOOKS, name)) as b:
            assert json.load(a) == json.load(b), f"{name} is stale: run notebooks/build_notebooks.py"


def test_quickstart_notebook(workdir, monkeypatch):
    _fashion_or_skip()
    nb = run_notebook("01_quickstart.ipynb", workdir, monkeypatch)
    text = text_outputs(nb)
    assert "CNN-RNN on the test scenes" in text and "mAP" in text
    assert image_outputs(nb) == 3  # examples grid, per-class AP, co-occurrence
    assert os.path.isfile(workdir / "work" / "quickstart_model" / "model.keras")


def test_finetune_notebook_predicts_the_new_label(workdir, monkeypatch):
    _fashion_or_skip()
    base = workdir / "work" / "quickstart_model"
    env = {"CNNRNN_NB_MODEL": str(base)} if (base / "model.keras").is_file() else {}
    nb = run_notebook("02_finetune_keras.ipynb", workdir, monkeypatch, **env)
    text = text_outputs(nb)
    assert "new labels: framed" in text
    m = re.search(r"NEW LABEL 'framed' predicted on (\d+) of (\d+) test images that have it "
                  r"\(and on (\d+) of (\d+) that do not\)", text)
    assert m, text[-3000:]
    hits, positives, false_alarms, negatives = map(int, m.groups())
    assert positives > 0 and negatives > 0
    hit_rate, false_alarm_rate = hits / positives, false_alarms / negatives
    # Found on most images that have it, and clearly more often than on those that do not.
    # (A hard false-alarm cap of 0.5 flaked: the base model here is 1 epoch on 96 images,
    # and the same run gave 0/16 or 11/16 false alarms; see the issue note.)
    assert hit_rate >= 0.75, m.group(0)
    assert hit_rate - false_alarm_rate >= 0.25, m.group(0)
    m = re.search(r"signatures: (\[.*\])", text)
    assert m and {"'serving_default'", "'predict_images'"} <= set(m.group(1)[1:-1].split(", "))
    assert re.search(r"-> \[[^]]*'framed'", text), "the SavedModel predicts no 'framed'"
    serving = workdir / "work" / "serving"
    versions = os.listdir(serving)
    assert len(versions) == 1 and (serving / versions[0] / "saved_model.pb").is_file()
