"""The cells and helpers both notebooks share (see build_notebooks.py): the parameters cell,
the GPU check, the install cell, the work-folder cells and Colab's notebook metadata."""
from __future__ import annotations

import os
import re

from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
with open(os.path.join(os.path.dirname(HERE), "setup.py"), encoding="utf-8") as _f:
    REPO_URL = re.search(r'^REPO_URL = "([^"]+)"$', _f.read(), re.M).group(1)
# Colab's notebook metadata for a GPU runtime (what Colab itself writes when a T4 is chosen).
COLAB_METADATA = {"accelerator": "GPU", "colab": {"provenance": [], "gpuType": "T4"}}
# The work-folder field of both notebooks: a local folder, Google Drive or Cloud Storage.
WORK_FIELD = ('WORK = "cnnrnn_work"  #@param ["cnnrnn_work", "/content/drive/MyDrive/cnnrnn_work", '
              '"gs://BUCKET/cnnrnn_work"] {allow-input: true}')


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def colab_badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO_URL.split('github.com/', 1)[1]}" \
          f"/blob/main/notebooks/{name}"
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})")


def parameters(fields: str, overrides: str):
    """The parameters cell: Colab form fields, then CNNRNN_NB_* environment overrides."""
    return code(f"""
#@title Parameters
# Colab shows the #@param lines as a form. An environment variable CNNRNN_NB_<NAME>,
# when set, wins over the field (that is how the tests run this notebook tiny).
import os


def from_env(name, value):
    text = os.environ.get("CNNRNN_NB_" + name)
    return value if text is None else type(value)(text)


#@markdown Where the install cell installs the library from in Colab (any pip requirement:
#@markdown a wheel on Drive such as /content/drive/MyDrive/cnnrnn_tf-VERSION-py3-none-any.whl,
#@markdown a gs://BUCKET/....whl, a git URL); BUILD.md shows how to build the wheel.
PACKAGE = ""  #@param {{type:"string"}}
#@markdown The work folder: a local folder (in Colab under /content, gone with the runtime),
#@markdown Google Drive (/content/drive/MyDrive/..., mounted below) or gs://BUCKET/...
{WORK_FIELD}
{fields.strip()}

PACKAGE = from_env("PACKAGE", PACKAGE)
{overrides.strip()}
""")


GPU_CHECK = code("""
#@title Check for a GPU
# Training runs on a GPU when TensorFlow sees one, else (much slower) on the CPU.
import tensorflow as tf

try:
    import google.colab  # noqa: F401  (only importable in Colab)
    IN_COLAB = True
except ImportError:
    IN_COLAB = False

GPUS = tf.config.list_physical_devices("GPU")
for gpu in GPUS:
    print("GPU:", tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
if not GPUS:
    print("No GPU: training runs on the CPU, many times slower. "
          + ("In Colab: Runtime > Change runtime type > Hardware accelerator: a GPU (T4 is "
             "free), then Runtime > Run all again." if IN_COLAB else
             "TensorFlow sees no CUDA device here (nvidia-smi shows what the machine has)."))
""")


INSTALL = code("""
#@title Install the library (in Colab)
import importlib
import subprocess
import sys


class StopHere(Exception):
    \"\"\"Ends "Run all" at this cell with one line (IPython shows _render_traceback_).\"\"\"

    def _render_traceback_(self):
        return [f"StopHere: {self}"]


# Elsewhere the library is assumed to be installed already (`make venv` in the repository).
if IN_COLAB:
    if not PACKAGE:
        raise StopHere("set PACKAGE in the Parameters form, or the CNNRNN_NB_PACKAGE environment "
                       "variable, to the cnnrnn-tf wheel (a Drive path such as /content/drive/"
                       "MyDrive/cnnrnn_tf-VERSION-py3-none-any.whl, a gs://BUCKET/... .whl or a git "
                       "URL); BUILD.md, 'A wheel for the notebooks', shows how to build it")
    if PACKAGE.startswith("/content/drive/") and not os.path.isdir("/content/drive/MyDrive"):
        from google.colab import drive

        drive.mount("/content/drive")
    if PACKAGE.startswith("gs://"):  # pip cannot read gs://: copy the wheel here first
        from google.colab import auth

        auth.authenticate_user()
        local_wheel = os.path.join("/content", PACKAGE.rstrip("/").rsplit("/", 1)[1])
        tf.io.gfile.copy(PACKAGE, local_wheel, overwrite=True)
        PACKAGE = local_wheel
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE],
                         capture_output=True, text=True)
    print(pip.stdout + pip.stderr)
    if pip.returncode:
        raise RuntimeError(f"pip install {PACKAGE!r} failed (exit {pip.returncode}); see above")
    importlib.invalidate_caches()

import cnnrnn_tf

print("cnnrnn_tf", cnnrnn_tf.__version__, "from", os.path.dirname(cnnrnn_tf.__file__))
""")


WORK_FOLDER = code("""
#@title The work folder: local, Google Drive or gs://
# Drive: mounted here with Colab's own sign-in. gs://: Colab's own auth, then the notebook
# works in a local copy (fast local disk; resumed from the bucket when it holds an earlier
# run) and the last cell copies it back to WORK.
from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import copy_tree

SAVE_TO = None  # the gs:// folder the last cell copies the work folder to
if IN_COLAB and WORK.startswith("/content/drive/") and not os.path.isdir("/content/drive/MyDrive"):
    from google.colab import drive

    drive.mount("/content/drive")
if uri.is_remote(WORK):
    if IN_COLAB and WORK.startswith("gs://"):
        from google.colab import auth

        auth.authenticate_user()
    try:
        uri.ensure_filesystem(WORK)  # checks that the bucket answers
    except InputError as exc:
        raise StopHere(str(exc)) from None
    SAVE_TO, WORK = WORK, os.path.abspath("cnnrnn_work_local")
    if tf.io.gfile.isdir(SAVE_TO):
        copy_tree(SAVE_TO, WORK)
os.makedirs(WORK, exist_ok=True)
print("work folder:", WORK + (f" (copied to {SAVE_TO} by the last cell)" if SAVE_TO else ""))
""")

SAVE_WORK = code("""
#@title Copy the work folder back (gs:// only)
if SAVE_TO:
    copy_tree(WORK, SAVE_TO)
    print("copied", WORK, "to", SAVE_TO)
else:
    print("work folder:", WORK)
""")
