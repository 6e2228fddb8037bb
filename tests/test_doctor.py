"""``cnnrnn doctor`` (the pipeline image's smoke test) and the image's ``.dockerignore``."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from cnnrnn_tf.cli import app as cli, doctor

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One interpreter, one TensorFlow import: the text report, a marker, the JSON report; then
# the CLI's own exit (tensorflow-io, imported for s3://, can abort at interpreter exit).
TWICE = ("import sys; from cnnrnn_tf import cli; from cnnrnn_tf.uri import exit_process; "
         "rc = cli.main(['doctor', *sys.argv[1:]]); "
         "print('=====', flush=True); "
         "exit_process(rc or cli.main(['doctor', '--json']))")
# tensorflow-io (s3://) is in the locked environment, not in every test leg's.
HAS_TF_IO = importlib.util.find_spec("tensorflow_io") is not None


def test_doctor_prints_versions_gpus_filesystems_and_cpus():
    import tensorflow as tf
    import keras

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", AWS_ACCESS_KEY_ID="AKIA-not-printed")
    env.pop("CNNRNN_DEBUG", None)
    required = ["--require", "gs"] + (["--require", "s3"] if HAS_TF_IO else [])
    out = subprocess.run([sys.executable, "-c", TWICE, *required], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # the start-up chatter stays hidden
    text, raw = out.stdout.split("=====\n")
    fields = dict(re.match(r"(.*?):\s+(.*)$", line).groups() for line in text.splitlines())
    assert fields["tensorflow"].startswith(tf.__version__ + " (")
    assert fields["keras"] == keras.__version__
    for name in ("tfx", "tensorflow-io", "apache-beam"):  # a version or "not installed"
        assert re.fullmatch(r"\d+\.\d+\S*|not installed", fields[name]), fields[name]
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert fields["gpus"].startswith(f"{gpus} ")
    assert fields["s3://"].startswith("yes, registered (tensorflow-io)" if HAS_TF_IO else
                                      "no, not registered: tensorflow-io is not installed")
    assert fields["s3://"].endswith("variables set: AWS_ACCESS_KEY_ID")
    assert fields["gs://"].startswith("yes, registered (built into TensorFlow)")
    assert fields["cpus"].startswith(f"{os.cpu_count()} (usable by this process: ")
    assert "no bucket or network contacted" in fields["checked"]

    report = json.loads(raw)
    assert report["tensorflow"]["version"] == tf.__version__
    assert report["keras"] == keras.__version__
    assert report["filesystems"]["gs"]["registered"] is True  # built into TensorFlow
    assert report["filesystems"]["s3"]["registered"] is HAS_TF_IO
    assert report["filesystems"]["s3"]["variables_set"] == ["AWS_ACCESS_KEY_ID"]
    assert "AKIA-not-printed" not in out.stdout  # names of variables, never their values
    assert len(report["gpus"]) == gpus
    assert report["cpus"]["count"] == os.cpu_count()
    assert 1 <= report["cpus"]["usable"] <= os.cpu_count()


def test_filesystems_say_what_is_missing_and_why():
    fs = doctor.filesystems(registered=lambda: ["gs", "file", ""],
                            import_s3=lambda: "tensorflow-io is not installed (pip install x)",
                            env={"GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "AWS_REGION": ""})
    assert fs["s3"] == {"registered": False, "variables_set": [],
                        "detail": "not registered: tensorflow-io is not installed (pip install x)"}
    assert fs["gs"]["registered"] is True
    assert fs["gs"]["variables_set"] == ["GOOGLE_APPLICATION_CREDENTIALS"]
    fs = doctor.filesystems(registered=lambda: ["s3", "file"], import_s3=lambda: None, env={})
    assert fs["s3"]["registered"] is True
    assert fs["gs"] == {"registered": False, "variables_set": [],
                        "detail": "not registered in this TensorFlow build (built into TensorFlow)"}


def _fake_report(**changes):
    report = {
        "cnnrnn_tf": "0.0", "python": "3.12.1", "platform": "Linux",
        "tensorflow": {"version": "2.99.0", "cuda_build": False, "cuda_version": None,
                       "cudnn_version": None},
        "keras": "3.99", "tfx": None, "tensorflow_io": None, "apache_beam": None,
        "cnnrnn_pipeline": False, "gpus": [],
        "filesystems": doctor.filesystems(registered=lambda: ["gs"], import_s3=lambda: "no io",
                                          env={}),
        "cpus": {"count": 8, "usable": 4, "cgroup_limit": 2.5},
        "checked": doctor.HOW_CHECKED,
    }
    report.update(changes)
    return report


def test_the_text_report_says_not_installed_and_names_gpus():
    text = doctor.format_report(_fake_report())
    assert "tfx:             not installed" in text
    assert "tensorflow:      2.99.0 (CPU-only build)" in text
    assert "gpus:            0 (none seen)" in text
    assert "s3://:           no, not registered: no io; variables set: none" in text
    assert "cpus:            8 (usable by this process: 4; container limit: 2.5)" in text
    gpus = [{"device": "/physical_device:GPU:0", "name": "NVIDIA H200",
             "compute_capability": "9.0"}]
    text = doctor.format_report(_fake_report(gpus=gpus, tfx="1.16.0"))
    assert "gpus:            1: /physical_device:GPU:0 NVIDIA H200 (compute 9.0)" in text
    assert "tfx:             1.16.0" in text


def test_require_fails_with_one_line_naming_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "collect", lambda: _fake_report(tfx="1.16.0"))
    assert cli.main(["doctor", "--require", "tfx", "--require", "gs"]) == 0
    capsys.readouterr()
    assert cli.main(["doctor", "--json", "--require", "gpu", "--require", "s3",
                     "--require", "tfx"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["tfx"] == "1.16.0"  # stdout stays clean JSON
    assert err.splitlines() == ["error: doctor: required but not available: gpu (a GPU "
                                "visible to TensorFlow); s3 (s3:// in tf.io.gfile)"]


def test_an_unknown_requirement_is_one_flag_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["doctor", "--require", "tpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--require" in err[0] and "'tpu'" in err[0]


def test_cgroup_cpu_limit_reads_cpu_max(monkeypatch, tmp_path):
    files = {"/sys/fs/cgroup/cpu.max": "400000 100000\n"}

    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        target = tmp_path / "f"
        target.write_text(files[path])
        return open(target, *args, **kwargs)

    monkeypatch.setattr(doctor, "open", fake_open, raising=False)
    assert doctor._cgroup_cpu_limit() == 4.0
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert doctor._cgroup_cpu_limit() is None
    files.clear()
    files.update({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000",
                  "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert doctor._cgroup_cpu_limit() == 1.5
    files["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"] = "-1"
    assert doctor._cgroup_cpu_limit() is None


# ---------------------------------------------------------------- .dockerignore
def _dockerignore_patterns():
    """(regex, is_exception) per line of .dockerignore, as Docker reads it (moby's
    patternmatcher: paths relative to the context, '*' within one name, '**' across
    folders, '!' re-includes, the last matching line wins)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", line):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part))
        patterns.append((re.compile(regex + "$"), exception))
    return patterns


def _excluded(path: str, patterns) -> bool:
    """Whether Docker leaves ``path`` out: a line matches the path or one of its parents."""
    parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
    excluded = False
    for regex, exception in patterns:
        if any(regex.match(p) for p in parents):
            excluded = not exception
    return excluded


def test_dockerignore_keeps_out_the_environments_and_caches():
    patterns = _dockerignore_patterns()
    for path in (".venv/bin/python", ".venv-colab/lib/x.py", ".venv-tf-latest/pyvenv.cfg",
                 ".venv-py312/bin/python", ".tools/uv/uv", ".whl/uv-0.5.whl", "runs/default/x",
                 ".git/HEAD", ".wt/cnnrnn_pipeline", ".pytest_cache/v/x", ".hypothesis/x",
                 "build/lib/cnnrnn_tf/cli.py", "dist/cnnrnn_tf-0.4.0.whl", "tests/conftest.py",
                 "notebooks/02_finetune_keras.ipynb", "cnnrnn_tf.egg-info/PKG-INFO",
                 "cnnrnn_tf/__pycache__/cli.cpython-310.pyc", "pipeline/__pycache__/x.pyc",
                 "cnnrnn_tf/models/__pycache__/x.pyc"):
        assert _excluded(path, patterns), path


def test_dockerignore_keeps_every_file_the_dockerfile_copies():
    patterns = _dockerignore_patterns()
    sources = []
    for line in (ROOT / "pipeline" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += [s.rstrip("/") for s in line.split()[1:-1] if not s.startswith("--")]
    assert {"requirements", "setup.py", "README.md", "cnnrnn_tf", "pipeline"} <= set(sources)
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    tracked += [str(p.relative_to(ROOT)) for p in (ROOT / "cnnrnn_tf").rglob("*.py")]
    assert any(p.startswith("requirements/lock-") for p in tracked)
    kept_out = [p for p in tracked if _excluded(p, patterns)]
    assert kept_out == []
