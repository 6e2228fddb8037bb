"""The notebooks' Colab parts, checked without running a notebook (tests/test_notebooks.py runs
them): GPU metadata, the GPU check, the install cell without a package source, and the work
folder on Google Drive or a remote URI (``ram://`` stands in for ``gs://``)."""
import json
import os
import sys
import types

import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = ("01_quickstart.ipynb", "02_finetune_keras.ipynb")


def _code_cells(name):
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        nb = json.load(f)
    return nb, ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _cell(cells, title):
    (source,) = [c for c in cells if c.startswith(f"#@title {title}")]
    return source


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_ask_colab_for_a_gpu_and_say_how_to_get_one(name):
    nb, cells = _code_cells(name)
    assert nb["metadata"]["accelerator"] == "GPU"
    assert nb["metadata"]["colab"]["gpuType"] == "T4"
    titles = [c.splitlines()[0] for c in cells if c.startswith("#@title")]
    # the GPU check comes before the install (changing the runtime type restarts it), the
    # work folder right after it, and the copy back to gs:// last
    assert titles[:4] == ["#@title Parameters", "#@title Check for a GPU",
                          "#@title Install the library (in Colab)",
                          "#@title The work folder: local, Google Drive or gs://"]
    assert cells[-1].startswith("#@title Copy the work folder back (gs:// only)")
    assert "Runtime > Change runtime type" in _cell(cells, "Check for a GPU")
    params = _cell(cells, "Parameters")
    assert 'PACKAGE = ""  #@param' in params  # no default: the git URL is not known to exist
    assert 'PACKAGE = from_env("PACKAGE", PACKAGE)' in params
    assert '"/content/drive/MyDrive/cnnrnn_work", "gs://BUCKET/cnnrnn_work"] {allow-input: true}' \
        in params
    assert not any("git+https://github.com/cnnrnn-tf" in c for c in cells)


class _Mounted(Exception):
    pass


@pytest.fixture
def colab(monkeypatch):
    """A fake ``google.colab`` (drive, auth) in sys.modules: the cells believe they are in Colab."""
    calls = []
    colab = types.ModuleType("google.colab")

    def mount(path):
        calls.append(("mount", path))
        raise _Mounted(path)  # stop here: nothing may be written under /content

    colab.drive = types.SimpleNamespace(mount=mount)
    colab.auth = types.SimpleNamespace(authenticate_user=lambda: calls.append(("auth",)))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.delenv("CNNRNN_NB_PACKAGE", raising=False)
    return calls


def _run(cells, titles, namespace=None):
    ns = {} if namespace is None else namespace
    for title in titles:
        exec(compile(_cell(cells, title), title, "exec"), ns)
    return ns


def test_the_install_cell_stops_with_one_line_when_no_package_is_set(colab):
    _, cells = _code_cells("02_finetune_keras.ipynb")
    ns = _run(cells, ["Parameters", "Check for a GPU"])
    assert ns["IN_COLAB"] is True
    with pytest.raises(Exception) as info:
        _run(cells, ["Install the library (in Colab)"], ns)
    assert type(info.value).__name__ == "StopHere"
    (line,) = info.value._render_traceback_()  # what IPython shows instead of a traceback
    assert "CNNRNN_NB_PACKAGE" in line and "PACKAGE in the Parameters form" in line
    assert "BUILD.md" in line and ".whl" in line and "gs://" in line
    assert colab == []  # nothing mounted, nothing installed


def test_a_drive_package_or_work_folder_mounts_drive(colab, monkeypatch):
    _, cells = _code_cells("01_quickstart.ipynb")
    monkeypatch.setenv("CNNRNN_NB_PACKAGE", "/content/drive/MyDrive/cnnrnn_tf-0.4.0-py3-none-any.whl")
    ns = _run(cells, ["Parameters", "Check for a GPU"])
    with pytest.raises(_Mounted):
        _run(cells, ["Install the library (in Colab)"], ns)
    monkeypatch.setenv("CNNRNN_NB_WORK", "/content/drive/MyDrive/cnnrnn_work")
    ns = _run(cells, ["Parameters"], ns)
    with pytest.raises(_Mounted):
        _run(cells, ["The work folder: local, Google Drive or gs://"], ns)
    assert colab == [("mount", "/content/drive")] * 2


def test_a_remote_work_folder_is_worked_on_locally_and_copied_back(tmp_path, monkeypatch):
    import tensorflow as tf

    remote = "ram://colab-test/work"
    tf.io.gfile.makedirs(remote + "/quickstart_model")
    with tf.io.gfile.GFile(remote + "/quickstart_model/earlier.txt", "w") as f:
        f.write("from an earlier run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNRNN_NB_WORK", remote)
    _, cells = _code_cells("01_quickstart.ipynb")
    ns = _run(cells, ["Parameters"], {"IN_COLAB": False, "tf": tf})
    _run(cells, ["The work folder: local, Google Drive or gs://"], ns)
    assert ns["SAVE_TO"] == remote
    local = ns["WORK"]
    assert local == str(tmp_path / "cnnrnn_work_local")
    # resumed: the earlier run's files are here
    with open(os.path.join(local, "quickstart_model", "earlier.txt")) as f:
        assert f.read() == "from an earlier run"
    with open(os.path.join(local, "new.txt"), "w") as f:
        f.write("written by this run")
    _run(cells, ["Copy the work folder back (gs:// only)"], ns)
    with tf.io.gfile.GFile(remote + "/new.txt") as f:
        assert f.read() == "written by this run"
