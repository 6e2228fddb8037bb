"""`cnnrnn train --test E`: the test split is read only after the model is final.

One run of the real CLI under strace records every file it opens and renames, in order;
the assertions read that record, MODEL_DIR/metrics.json and `cnnrnn evaluate`.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from cnnrnn_tf import schema
from cnnrnn_tf.cli.app import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--image-size", "32", "--batch-size", "16", "--epochs", "2", "--lstm-units", "32",
              "--embed-dim", "16", "--beam-size", "2", "--verbose", "2"]
# strace -ttt -f: "[pid N] 1764760000.123456 openat(AT_FDCWD, "path", O_RDONLY) = 3"
EVENT = re.compile(r'^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)')
PATH_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _data(root):
    from tests.conftest import synthetic_records

    schema.write_records(str(root / "train"), synthetic_records(64, seed=1), records_per_shard=32)
    schema.write_records(str(root / "val"), synthetic_records(24, seed=2))
    schema.write_records(str(root / "test"), synthetic_records(20, seed=3))


def _events(trace_file):
    """[(time, syscall, [paths])] of the successful calls, in time order."""
    out = []
    with open(trace_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = EVENT.match(line.strip())
            if m and int(m.group(4)) >= 0 and PATH_ARG.search(m.group(3)):
                out.append((float(m.group(1)), m.group(2), PATH_ARG.findall(m.group(3))))
    return sorted(out, key=lambda e: e[0])


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    root = tmp_path_factory.mktemp("three_splits")
    _data(root)
    out, trace = root / "model", root / "trace.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")])), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = ["strace", "-f", "-ttt", "-qq", "-o", str(trace),
           "-e", "trace=open,openat,rename,renameat,renameat2",
           sys.executable, "-m", "cnnrnn_tf.cli", "train", "--train", str(root / "train"),
           "--eval", str(root / "val"), "--test", str(root / "test"), "--out", str(out),
           *TINY_FLAGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, out, proc.stdout, _events(trace)


def test_the_test_split_is_opened_only_after_the_model_is_written(traced_run):
    root, out, _, events = traced_run
    test_dir = os.path.realpath(root / "test") + os.sep
    saved_model = os.path.realpath(out / "saved_model")
    history = os.path.realpath(out / "history.json")

    def index(predicate, what):
        found = [i for i, (_, _, paths) in enumerate(events) if predicate(paths)]
        assert found, f"the trace shows no {what}"
        return found

    # The SavedModel is written under a temporary name, then renamed into place: the last
    # path of a call is the one it opens or renames to.
    published = index(lambda p: os.path.realpath(p[-1]) in (
        saved_model, os.path.join(saved_model, "saved_model.pb")), "SavedModel publication")[-1]
    history_written = index(lambda p: os.path.realpath(p[-1]) == history,
                            "history.json write")[-1]
    # Listing the test folder (to refuse a --test that is --eval, or missing, at once) opens
    # the folder itself; no file in it may be opened before the model is published.
    test_opens = index(lambda p: any(os.path.realpath(x).startswith(test_dir) for x in p),
                       "open of the test split")
    first = events[test_opens[0]]
    assert test_opens[0] > published > history_written, (
        f"{first[2]} opened before the SavedModel was published")
    # ... and it was really read: its shard, not only its folder.
    assert any(x.endswith(".tfrecord.gz") for i in test_opens for x in events[i][2])


def test_metrics_are_the_test_split_scores_and_match_cnnrnn_evaluate(traced_run, capsys):
    root, out, stdout, _ = traced_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["data"] == {"train": str(root / "train"), "eval": str(root / "val"),
                               "test": str(root / "test")}
    assert metrics["num_images"] == 20 and metrics["validation"]["num_images"] == 24
    assert f"scored on {root / 'test'} (20 images), selected on {root / 'val'}" in stdout
    for split, expected in (("test", metrics), ("val", metrics["validation"])):
        assert main(["evaluate", "--model", str(out), "--data", str(root / split),
                     "--json"]) == 0
        scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        for key in ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR"):
            assert expected[key] == pytest.approx(scored[key], abs=1e-9), (split, key)
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_loss"]) == 2  # the val_* history is the validation split's


@pytest.mark.parametrize("role", ["eval", "train"])
def test_a_test_split_that_is_the_eval_or_train_folder_is_refused(tmp_path, capsys, role):
    _data(tmp_path)
    same = {"eval": str(tmp_path / "val") + "/",  # spelled differently, the same folder
            "train": os.path.join(str(tmp_path), "val", "..", "train")}[role]
    out = tmp_path / "model"
    assert main(["train", "--train", str(tmp_path / "train"), "--eval", str(tmp_path / "val"),
                 "--test", same, "--out", str(out), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"--{role})" in err[0], err
    assert not out.exists()


def test_splits_are_compared_by_their_shards_on_uris_too(tmp_path):
    """A glob, a list of shards or a URI spelled with a trailing slash are the same data;
    a missing --test folder fails at once, not after training."""
    from cnnrnn_tf.errors import InputError
    from cnnrnn_tf.training.splits import check_splits_apart
    from tests.conftest import synthetic_records

    base = f"ram://splits-{tmp_path.name}"
    for split in ("train", "val", "test"):
        schema.write_records(f"{base}/{split}", synthetic_records(4, seed=1),
                             records_per_shard=2)
    train, val, test = (f"{base}/{s}" for s in ("train", "val", "test"))
    check_splits_apart(train, val, test)
    check_splits_apart(train, val, None)
    with pytest.raises(InputError, match=r"also the validation split \(--eval\)"):
        check_splits_apart(train, val, val + "/")
    with pytest.raises(InputError, match=r"also the training split \(--train\)"):
        check_splits_apart(train, val, f"{train}/*.tfrecord.gz")
    with pytest.raises(InputError, match=r"1 of the test split's 2 shards \(--test\) are also "
                                         r"in the validation split"):
        check_splits_apart(train, val, [schema.list_shards(test)[0], schema.list_shards(val)[1]])
    with pytest.raises(InputError, match="data folder does not exist"):
        check_splits_apart(train, val, f"{base}/tset")
