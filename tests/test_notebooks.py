"""Executes the notebooks top to bottom (tiny settings) with nbclient.

The kernel is ``python3``: jupyter_client starts it with this interpreter
(``sys.executable``), so the notebooks see the same installed library.
The quickstart's model is reused as the fine-tune notebook's base model.

``test_finetune_notebook_as_colab_runs_it`` runs the fine-tune notebook the way
Colab does: a kernel on Python 3.12 with the newest TensorFlow and only a
Colab-like base (``make venv-colab``: tensorflow, matplotlib, pandas, ipykernel),
``google.colab`` importable, and the notebook's own install cell pip-installing
the package from ``CNNRNN_NB_PACKAGE`` (here: this checkout).
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
    "CNNRNN_NB_VAL": "32",
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


def run_notebook(name, workdir, monkeypatch, kernel_name="python3", **env):
    for key, value in {**TINY_ENV, "CNNRNN_NB_WORK": str(workdir / "work"), **env}.items():
        monkeypatch.setenv(key, value)
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        nb = nbformat.read(f, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs"
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
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
    # three splits: selected on val/, scored on test/
    assert all((workdir / "work" / "outfits" / s).is_dir() for s in ("train", "val", "test"))


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


REPO = os.path.dirname(HERE)
COLAB_BASE = os.path.join(REPO, ".venv-colab")


def colab_kernel(tmp_path, monkeypatch):
    """A fresh Python 3.12 venv over the cached Colab-like base, as a Jupyter kernel.

    The fresh venv sees the base's packages through a .pth file, so pip in the kernel
    installs into the fresh venv and the cached base stays without cnnrnn-tf. A stub
    ``google.colab`` (namespace ``google``, as protobuf's) goes on the same path.
    """
    base_python = os.path.join(COLAB_BASE, "bin", "python")
    if not os.path.isfile(os.path.join(COLAB_BASE, ".installed")):
        if os.environ.get("CI"):
            pytest.fail(f"{COLAB_BASE} missing: `make test` builds it (make venv-colab)")
        pytest.skip(f"{COLAB_BASE} missing: run `make venv-colab`")
    venv = tmp_path / "colab-venv"
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = lambda py: subprocess.run(  # noqa: E731
        [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    stub = tmp_path / "colab-stub"
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text('"""Test stub: we are in Colab."""\n')
    with open(os.path.join(site(python), "colab_base.pth"), "w") as f:
        f.write(f"{site(base_python)}\n{stub}\n")
    kernels = tmp_path / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like Python 3.12", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # Colab has no PYTHONPATH into a checkout: with one (as when the suite runs from a
    # worktree) the kernel would import cnnrnn_tf before its install cell ran.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    # Offline, as tests must be: nothing from an index, and the checkout is built with the
    # base's setuptools (Colab has it) instead of one fetched for build isolation.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return python, site(python)


def test_finetune_notebook_as_colab_runs_it(workdir, tmp_path, monkeypatch):
    _fashion_or_skip()
    # Start from the quickstart's model (TF 2.16 / Keras 3.12) when there, as a user who
    # brings a model to Colab: saves training one here (about a minute on 2 cores).
    base = workdir / "work" / "quickstart_model"
    env = {"CNNRNN_NB_MODEL": str(base)} if (base / "model.keras").is_file() else {}
    python, site = colab_kernel(tmp_path, monkeypatch)
    assert subprocess.run([python, "-c", "import cnnrnn_tf"], cwd=tmp_path,
                          capture_output=True).returncode != 0, "cnnrnn_tf is there before the install cell"
    nb = run_notebook("02_finetune_keras.ipynb", tmp_path, monkeypatch, kernel_name="colab",
                      CNNRNN_NB_PACKAGE=f"{REPO}[report]",
                      # the fine-tune quality is checked above; here only that it all runs
                      CNNRNN_NB_TRAIN="48", CNNRNN_NB_VAL="16", CNNRNN_NB_TEST="16", CNNRNN_NB_FT_EPOCHS="1", **env)
    text = text_outputs(nb)
    # the GPU check saw google.colab: on a machine without a GPU it says how to get one
    assert re.search(r"^GPU: ", text, re.M) or "Runtime > Change runtime type" in text, text[:3000]
    assert f"work folder: {tmp_path / 'work'}" in text
    m = re.search(r"cnnrnn_tf (\S+) from (\S+)", text)
    assert m and m.group(2).startswith(site), text[:3000]  # installed by the notebook's cell
    assert "new labels: framed" in text
    assert re.search(r"NEW LABEL 'framed' predicted on \d+ of \d+", text), text[-3000:]
    m = re.search(r"signatures: (\[.*\])", text)
    assert m and "'predict_images'" in m.group(1)
    out = subprocess.run([python, "-c", "import sys, tensorflow as tf; print(sys.version_info[:2], tf.__version__)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("(3, 12)"), out
