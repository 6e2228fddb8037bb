"""Training on several machines: TF_CONFIG parsing, and two real workers on localhost."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cnnrnn_tf.cluster import ClusterConfig, TF_CONFIG
from cnnrnn_tf.errors import InputError

TWO_WORKERS = {"worker": ["localhost:2001", "localhost:2002"]}


def tf_config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# ------------------------------------------------------------------ TF_CONFIG
def test_a_cluster_of_two_workers():
    cluster = ClusterConfig.parse(tf_config(TWO_WORKERS, index=1))
    assert (cluster.task_type, cluster.task_index, cluster.num_workers) == ("worker", 1, 2)
    assert cluster.multi_worker and not cluster.is_chief
    assert ClusterConfig.parse(tf_config(TWO_WORKERS, index=0)).is_chief


def test_the_chief_task_is_the_chief_when_there_is_one():
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    assert ClusterConfig.parse(tf_config(cluster, "chief")).is_chief
    worker0 = ClusterConfig.parse(tf_config(cluster, "worker", 0))
    assert not worker0.is_chief and worker0.num_workers == 3


def test_vertex_ai_extra_fields_are_ignored_and_index_defaults_to_0():
    text = json.dumps({"cluster": {"chief": ["h0:1"], "worker": ["h1:1"]},
                       "task": {"type": "chief", "trial": "1"},
                       "environment": "cloud", "job": {"python_module": "x"}})
    cluster = ClusterConfig.parse(text)
    assert cluster.task_index == 0 and cluster.is_chief and cluster.multi_worker


@pytest.mark.parametrize("cluster, task_type", [({"worker": ["h0:1"]}, "worker"),
                                                ({"chief": ["h0:1"]}, "chief")])
def test_a_single_task_is_not_multi_worker(cluster, task_type):
    parsed = ClusterConfig.parse(tf_config(cluster, task_type))
    assert not parsed.multi_worker and parsed.is_chief


def test_unset_or_empty_tf_config_is_no_cluster():
    assert ClusterConfig.from_environment({}) is None
    assert ClusterConfig.from_environment({TF_CONFIG: "  "}) is None
    assert ClusterConfig.from_environment({TF_CONFIG: tf_config(TWO_WORKERS)}).multi_worker


@pytest.mark.parametrize("text, message", [
    ("{cluster: 1", "TF_CONFIG: not valid JSON (Expecting property name"),
    ("[1, 2]", 'TF_CONFIG: must be a JSON object with "cluster" and "task"'),
    (json.dumps({"task": {"type": "worker", "index": 0}}), 'TF_CONFIG: no "cluster" field'),
    (json.dumps({"cluster": TWO_WORKERS}), 'TF_CONFIG: no "task" field'),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"index": 0}}), "TF_CONFIG: no task.type"),
    (json.dumps({"cluster": TWO_WORKERS, "task": "worker"}), "TF_CONFIG: task must be an object"),
    (tf_config(TWO_WORKERS, "chief"),
     "TF_CONFIG: task.type 'chief' is not in cluster (it has worker)"),
    (tf_config(TWO_WORKERS, index=3),
     "TF_CONFIG: task.index 3 is out of range: cluster.worker has 2 entries"),
    (tf_config(TWO_WORKERS, index=-1),
     "TF_CONFIG: task.index -1 is out of range: cluster.worker has 2 entries"),
    (tf_config({"worker": ["h0:1"]}, index=1),
     "TF_CONFIG: task.index 1 is out of range: cluster.worker has 1 entry"),
    (tf_config(TWO_WORKERS, index="1"), "TF_CONFIG: task.index must be a whole number, got '1'"),
    (tf_config(TWO_WORKERS, index=True), "TF_CONFIG: task.index must be a whole number"),
    (tf_config({"worker": "h0:1,h1:1"}), "TF_CONFIG: cluster.worker must be a non-empty list"),
    (tf_config({"worker": []}), "TF_CONFIG: cluster.worker must be a non-empty list"),
    (tf_config([]), "TF_CONFIG: cluster must be an object"),
    (tf_config({"worker": ["h0:1"], "ps": ["h1:1"]}),
     "TF_CONFIG: cluster.ps is not supported: cnnrnn trains with MultiWorkerMirroredStrategy"),
    (tf_config({"chief": ["h0:1", "h1:1"]}, "chief"),
     "TF_CONFIG: cluster.chief has 2 entries; a cluster has at most one chief"),
])
def test_bad_tf_config_gives_one_line_naming_the_field(text, message):
    with pytest.raises(InputError) as info:
        ClusterConfig.parse(text)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_choose_strategy_keeps_the_normal_path_for_a_single_worker(monkeypatch):
    import tensorflow as tf

    from cnnrnn_tf.training.devices import choose_strategy

    monkeypatch.setenv(TF_CONFIG, tf_config({"worker": ["localhost:2001"]}))
    assert not isinstance(choose_strategy(), tf.distribute.MultiWorkerMirroredStrategy)
    monkeypatch.setenv(TF_CONFIG, tf_config(TWO_WORKERS, index=5))
    with pytest.raises(InputError, match="task.index 5 is out of range"):
        choose_strategy()
    monkeypatch.setenv(TF_CONFIG, tf_config(TWO_WORKERS))
    with pytest.raises(InputError, match="cannot be chosen when TF_CONFIG describes"):
        choose_strategy(["/cpu:0", "/cpu:1"])


def test_the_cli_answers_a_bad_tf_config_in_one_line_before_reading_data(
        tmp_path, monkeypatch, capsys):
    from cnnrnn_tf.cli.app import main

    monkeypatch.setenv(TF_CONFIG, tf_config(TWO_WORKERS, index=3))
    status = main(["train", "--train", str(tmp_path / "none"), "--eval", str(tmp_path / "none"),
                   "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == ("error: TF_CONFIG: task.index 3 is out of range: "
                   "cluster.worker has 2 entries")
    assert not (tmp_path / "model").exists()


def test_workers_share_the_global_batches(tiny_data):
    import tensorflow as tf

    from cnnrnn_tf.inputs.dataset import make_dataset, scan_labels

    vocab = scan_labels(str(tiny_data / "train")).vocabulary()
    ds = make_dataset(str(tiny_data / "test"), vocab, mode="multi_hot", image_size=32,
                      batch_size=16, drop_remainder=True, num_workers=2)
    policy = ds.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [int(x["images"].shape[0]) for x, _ in ds] == [16]  # 24 records: no partial batch


def _two_workers_join(shards):
    """join_shards on two simulated workers at once (threads; the all-reduce a sum over
    what both contribute)."""
    import threading

    from cnnrnn_tf.training.decoded_validation import join_shards

    barrier = threading.Barrier(2)
    given, results = [{}, {}], [None, None]

    def all_sum_for(rank):
        def all_sum(x):
            given[rank][len(given[rank])] = x
            barrier.wait()
            key = len(given[rank]) - 1
            total = given[0][key] + given[1][key]
            barrier.wait()
            return total
        return all_sum

    def run(rank):
        results[rank] = join_shards(shards[rank], rank, 2, all_sum_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _scores(preds, calibrate):
    from cnnrnn_tf.metrics import choose_thresholds
    from cnnrnn_tf.metrics import multilabel_metrics

    y_pred = preds.y_pred
    if calibrate:
        _, per, _ = choose_thresholds(preds.y_true, preds.y_score, "OF1", True)
        y_pred = (preds.y_score >= np.asarray(per)).astype(np.int32)
    m = multilabel_metrics(preds.y_true, y_pred, preds.y_score, top_k=3)
    return {k: m[k] for k in ("CF1", "OF1", "mAP")}


@pytest.mark.parametrize("calibrate", [False, True])
def test_sharded_decoded_validation_scores_the_whole_split(calibrate):
    """Two workers each decode every other record (tf.data shard); joined, their predictions
    are the whole split's rows, so the thresholds, CF1 / OF1 and mAP equal the unsharded
    ones exactly, where the mean of per-shard values does not."""
    from cnnrnn_tf.evaluation.evaluate import Predictions

    rng = np.random.RandomState(0)
    n, k = 37, 6
    y_true = (rng.rand(n, k) < 0.35).astype(np.int32)
    y_score = np.clip(0.6 * y_true + 0.7 * rng.rand(n, k), 0, 1).astype(np.float32)
    y_pred = (y_score >= 0.5).astype(np.int32)
    label_ids = np.where(rng.rand(n, 3) < 0.7, rng.randint(0, k, (n, 3)), -1).astype(np.int32)
    whole = Predictions(y_true, y_pred, y_score, label_ids,
                        rng.rand(n, 3).astype(np.float32), [str(i) for i in range(n)])

    def rows(r):
        return Predictions(*(a[r::2] for a in (y_true, y_pred, y_score, label_ids,
                                                whole.scores)), whole.ids[r::2])

    shards = [rows(0), rows(1)]
    joined = _two_workers_join(shards)
    for preds in joined:  # the same on both workers: worker 0's rows, then worker 1's
        for name in ("y_true", "y_pred", "y_score", "label_ids", "scores"):
            want = np.concatenate([getattr(shards[0], name), getattr(shards[1], name)])
            np.testing.assert_array_equal(getattr(preds, name), want)
            assert getattr(preds, name).dtype == want.dtype
    expected = _scores(whole, calibrate)
    assert _scores(joined[0], calibrate) == pytest.approx(expected, abs=1e-12)
    per_shard = [_scores(s, calibrate) for s in shards]
    averaged = {key: np.mean([m[key] for m in per_shard]) for key in expected}
    assert max(abs(averaged[key] - expected[key]) for key in expected) > 1e-3


# ------------------------------------------------------------------ two real workers
WORKER_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import tensorflow as tf
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training.devices import choose_strategy
    from cnnrnn_tf.training.loop import train

    strategy = choose_strategy()  # from TF_CONFIG, before TensorFlow runs anything
    logging.basicConfig()
    logging.getLogger("cnnrnn_tf.training.decoded_validation").setLevel(logging.INFO)
    config = TrainConfig(**json.loads(sys.argv[4]))
    result = train(config, sys.argv[1], sys.argv[2], sys.argv[3], strategy=strategy, verbose=0)
    print("RESULT " + json.dumps({"history": result.history, "info": result.info,
                                  "metrics": result.metrics, "multi_worker": isinstance(
                                      strategy, tf.distribute.MultiWorkerMirroredStrategy),
                                  "replicas": strategy.num_replicas_in_sync}), flush=True)
""")
# The CNN-RNN without dropout (its random masks differ between processes), 1 epoch.
CONFIG = dict(image_size=32, batch_size=16, epochs=1, lstm_units=16, embed_dim=8, beam_size=2,
              dropout=0.0)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


@pytest.mark.slow
def test_two_workers_on_localhost_train_like_one_process(tiny_data, tmp_path):
    from cnnrnn_tf.training.loop import train
    from cnnrnn_tf.config import TrainConfig

    train_dir, eval_dir = str(tiny_data / "train"), str(tiny_data / "test")
    out = tmp_path / "model"
    worker_tmp = tmp_path / "worker_tmp"
    worker_tmp.mkdir()
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(worker_tmp),
                   TF_CONFIG=tf_config(cluster, index=index))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, train_dir, eval_dir, str(out),
             json.dumps(CONFIG)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    deadline = time.time() + 600
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
            outputs.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for status, stdout, stderr in outputs:
        assert status == 0, stderr[-3000:]
    results = [json.loads(next(line for line in stdout.splitlines()
                               if line.startswith("RESULT "))[7:])
               for _, stdout, _ in outputs]
    for result in results:
        assert result["multi_worker"]
        assert result["replicas"] == 2 and result["info"]["workers"] == 2
    # In lockstep: the same (all-reduced) losses and decoded metrics on both workers
    # (each times its own epochs).
    histories = [{k: v for k, v in r["history"].items() if k != "epoch_seconds"}
                 for r in results]
    assert histories[0] == histories[1] and "val_f1" in histories[0]
    # Each worker decoded its half of the 24 validation images and scored all 24.
    for _, _, stderr in outputs:
        assert "decoded 12 of 24 validation images on this worker" in stderr, stderr[-2000:]
    assert results[1]["metrics"] is None  # evaluation: on the chief only

    # The chief alone wrote one MODEL_DIR; the other worker left nothing behind.
    assert sorted(os.listdir(tmp_path)) == ["model", "test", "train", "worker_tmp"]
    written = files_under(out)
    for name in ("model.keras", "config.json", "vocabulary.json", "metrics.json",
                 "history.json", "saved_model/saved_model.pb"):
        assert name in written, written
    assert not any(name.startswith("backup") for name in written)
    assert os.listdir(worker_tmp) == []
    with open(out / "history.json") as f:
        assert json.load(f) == results[0]["history"]
    with open(out / "config.json") as f:
        assert json.load(f)["workers"] == 2

    # The same run in one process: the same global batches, so losses within noise (the
    # workers' BatchNorm sees 8 images a step where the single process sees 16).
    single = train(TrainConfig(**CONFIG), train_dir, eval_dir, str(tmp_path / "single"),
                   verbose=0)
    np.testing.assert_allclose(results[0]["history"]["loss"], single.history["loss"], rtol=0.15)
    np.testing.assert_allclose(results[0]["history"]["val_loss"], single.history["val_loss"],
                               rtol=0.25)
    assert abs(results[0]["metrics"]["mAP"] - single.metrics["mAP"]) < 0.15
