"""The TFX pipeline end to end on a few dozen generated examples (LocalDagRunner).

Needs the [pipeline] extra; skipped without it. About 3 minutes on 2 cores.
The main run reads train/ val/ test/ folders; the runs that stop at AnomalyGate read the
old train/ + test/ layout (eval carved out of train); tests/test_pipeline_example_gen.py
covers each layout's splits.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tfx")
pytest.importorskip("tensorflow_model_analysis")

import tensorflow as tf  # noqa: E402

from cnnrnn_tf import schema  # noqa: E402
from cnnrnn_tf.errors import InputError  # noqa: E402
from tests.conftest import synthetic_records  # noqa: E402

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

TINY_CONFIG = dict(image_size=32, epochs=1, batch_size=16, lstm_units=32, embed_dim=16)
DIRECT = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
UPSTREAM_OF_EVALUATOR = ("ImportExampleGen", "StatisticsGen", "CuratedSchemaGen",
                         "ExampleValidator", "AnomalyGate", "Transform", "Trainer")
ALL_NODES = UPSTREAM_OF_EVALUATOR + ("latest_blessed_model_resolver", "Evaluator",
                                     "TestEvaluator", "Pusher")


def _run(root, data, serving, **kwargs):
    from cnnrnn_pipeline import local_runner

    local_runner.run("cnnrnn", str(root / "pipeline_root"), str(data), str(serving),
                     beam_pipeline_args=DIRECT, train_config=TINY_CONFIG,
                     train_steps=3, eval_steps=1, **kwargs)
    from cnnrnn_pipeline import results

    return results.summarize(local_runner.metadata_path(str(root / "pipeline_root")), "cnnrnn")


def _write_raw(out_dir, examples):
    """Writes tf.train.Example protos as one GZIP shard (the schema writer refuses bad ones)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "data-00000-of-00001.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def _examples(records):
    return [schema.make_example(r.image, r.labels, r.image_id) for r in records]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_good")
    data = root / "data"
    schema.write_records(str(data / "train"), synthetic_records(48, seed=1), records_per_shard=24)
    schema.write_records(str(data / "val"), synthetic_records(12, seed=2))
    schema.write_records(str(data / "test"), synthetic_records(16, seed=3))
    return root, data


@pytest.fixture(scope="module")
def first_run(good_data):
    root, data = good_data
    summary = _run(root, data, root / "serving")
    return root, data, summary


def test_every_component_ran_and_pusher_wrote_a_servable_version(first_run):
    root, _, summary = first_run
    assert {n: summary.states.get(n) for n in ALL_NODES} == {n: "COMPLETE" for n in ALL_NODES}
    assert summary.blessed is True
    versions = glob.glob(str(root / "serving" / "cnnrnn" / "*" / "saved_model.pb"))
    assert len(versions) == 1
    assert summary.pushed_path == os.path.dirname(versions[0])

    loaded = tf.saved_model.load(summary.pushed_path)
    records = synthetic_records(3, seed=5)
    serialized = tf.constant([e.SerializeToString() for e in _examples(records)])
    out = loaded.signatures["serving_default"](examples=serialized)
    labels = out["labels"].numpy()
    assert labels.shape[0] == 3 and labels.dtype == object
    known = {b"", b"red", b"green", b"blue", b"bar"}
    assert set(labels.ravel()) <= known and (out["label_count"].numpy() >= 1).all()


def _library_metrics(model, folder):
    """The SavedModel's eval signatures over a folder, scored by cnnrnn_tf.metrics."""
    from cnnrnn_tf.metrics import multilabel_metrics

    serialized = tf.constant([e.SerializeToString()
                              for e in _examples(schema.iter_records(str(folder)))])
    y_true = model.signatures["eval_labels"](examples=serialized)["label_multi_hot"].numpy()
    pred = model.signatures["eval_predictions"](examples=serialized)
    # The labels as the vocabulary sees them: every label of the folder is known.
    assert y_true.sum() == sum(len(r.labels) for r in schema.iter_records(str(folder)))
    return multilabel_metrics(y_true, pred["predicted_multi_hot"].numpy(),
                              pred["probabilities"].numpy())


def test_blessing_reads_eval_and_the_test_split_is_scored_apart(first_run):
    root, data, summary = first_run
    assert summary.split_counts == {"train": 48, "eval": 12, "test": 16}
    model = tf.saved_model.load(summary.pushed_path)
    # The Evaluator (blessing) scored val/, the TestEvaluator test/; both agree with the library.
    assert summary.metrics["example_count"] == 12
    assert summary.test_metrics["example_count"] == 16
    on_val, on_test = _library_metrics(model, data / "val"), _library_metrics(model, data / "test")
    for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert summary.metrics[name] == pytest.approx(on_val[name], abs=1e-6), name
        assert summary.test_metrics[name] == pytest.approx(on_test[name], abs=1e-6), name
    # The test split has no thresholds and no baseline: nothing is selected on it.
    assert not any(k.endswith("_diff") for k in summary.test_metrics)
    # The library's evaluation (cnnrnn_tf.evaluation.evaluate, Keras decode) of run_fn's MODEL_DIR
    # gives the same test numbers (run_fn itself leaves the scoring to the Evaluators).
    from cnnrnn_tf.evaluation.evaluate import evaluate_model
    from cnnrnn_tf.model_dir import load_model_dir

    model_dirs = glob.glob(str(root / "pipeline_root" / "Trainer" / "model_run" / "*" /
                                "model_dir"))
    assert not glob.glob(model_dirs[0] + "/metrics.json")  # no second pass in the Trainer
    loaded = load_model_dir(model_dirs[0])
    library = evaluate_model(loaded.model, loaded.vocab, str(data / "test"), loaded.image_size,
                             beam_size=loaded.config.beam_size)
    for name in ("mAP", "CF1", "OF1"):
        assert summary.test_metrics[name] == pytest.approx(library[name], abs=1e-5), name


def test_second_run_is_served_from_cache(first_run):
    from cnnrnn_pipeline.cli import format_summary

    root, data, _ = first_run
    summary = _run(root, data, root / "serving")
    # Everything up to the Trainer comes from the cache. The Evaluator runs again
    # because its baseline input changed (run 1 had no blessed model yet).
    cached = UPSTREAM_OF_EVALUATOR + ("TestEvaluator",)
    assert {n: summary.states[n] for n in cached} == {n: "CACHED" for n in cached}
    assert "OF1_diff" in summary.metrics and summary.metrics["OF1_diff"] == pytest.approx(0.0)
    text = format_summary(summary)
    assert "mAP" in text and "OF1" in text and "blessed: yes" in text
    assert "splits: train 48, eval 12, test 16" in text and "test split" in text


def test_a_model_below_the_value_threshold_is_not_pushed(first_run):
    root, data, _ = first_run
    serving = root / "serving_strict"
    summary = _run(root, data, serving, min_of1=0.999)
    assert summary.states["Trainer"] == "CACHED" and summary.states["Evaluator"] == "COMPLETE"
    assert summary.metrics["OF1"] < 0.999
    assert summary.blessed is False and summary.pushed_path is None
    assert not glob.glob(str(serving / "cnnrnn" / "*"))


def _cli_args(root, data):
    return argparse.Namespace(
        data=str(data), pipeline_root=str(root / "pipeline_root"),
        serving_dir=str(root / "serving"), model_name="cnnrnn", train_steps=1, eval_steps=1,
        beam_arg=DIRECT)


def _assert_stopped_before_trainer(root):
    from cnnrnn_pipeline import local_runner, results

    summary = results.summarize(local_runner.metadata_path(str(root / "pipeline_root")), "cnnrnn")
    assert summary.states.get("AnomalyGate") == "FAILED"
    assert "Transform" not in summary.states and "Trainer" not in summary.states
    assert summary.pushed_path is None
    assert not glob.glob(str(root / "serving" / "**" / "saved_model.pb"), recursive=True)


def test_missing_labels_stop_the_run_before_the_trainer(tmp_path, capfd):
    from cnnrnn_pipeline.cli import run_command

    data = tmp_path / "data"
    train = _examples(synthetic_records(24, seed=3))
    for example in train[::4]:
        del example.features.feature[schema.LABELS_KEY]
    _write_raw(str(data / "train"), train)
    _write_raw(str(data / "test"), _examples(synthetic_records(8, seed=4)))
    with pytest.raises(InputError) as err:
        run_command(_cli_args(tmp_path, data))
    message = str(err.value)
    assert "\n" not in message
    assert "data anomalies" in message and "image/labels" in message and "'train'" in message
    _assert_stopped_before_trainer(tmp_path)
    # train/ + test/ is not refused: eval is carved out of train, and the command says so.
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no val/" in notes[0] and "carved out of train" in notes[0]


def test_unknown_eval_and_test_labels_stop_the_run_before_the_trainer(tmp_path):
    from cnnrnn_pipeline.cli import run_command

    data = tmp_path / "data"
    schema.write_records(str(data / "train"), synthetic_records(24, seed=3))
    val, test = synthetic_records(8, seed=4), synthetic_records(8, seed=5)
    val[0] = val[0]._replace(labels=["red", "purple"])
    test[0] = test[0]._replace(labels=["blue", "violet"])
    schema.write_records(str(data / "val"), val)
    schema.write_records(str(data / "test"), test)
    with pytest.raises(InputError) as err:
        run_command(_cli_args(tmp_path, data))
    message = str(err.value)
    # Both the eval and the test split are checked against the training labels' schema.
    assert "\n" not in message and "image/labels" in message
    assert "split 'eval'" in message and "purple" in message
    assert "split 'test'" in message and "violet" in message
    _assert_stopped_before_trainer(tmp_path)


def test_run_command_rejects_bad_data_folders(tmp_path):
    from cnnrnn_pipeline.cli import run_command

    with pytest.raises(InputError, match="does not exist"):
        run_command(_cli_args(tmp_path, tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither train/ and test/"):
        run_command(_cli_args(tmp_path, tmp_path / "empty"))
    schema.write_records(str(tmp_path / "half" / "train"), synthetic_records(4, seed=1))
    with pytest.raises(InputError, match="no test/ folder"):
        run_command(_cli_args(tmp_path, tmp_path / "half"))


def test_kubeflow_v2_compile_needs_the_data_root_and_serving_dir(tmp_path):
    # The full compile (runtime parameters, GPU request, order) is in test_pipeline_remote.py.
    from cnnrnn_pipeline.cli import compile_command

    args = argparse.Namespace(runner="kubeflow-v2", image="example.org/cnnrnn:test",
                              output=str(tmp_path / "pipeline.json"))
    with pytest.raises(InputError, match="--data: no folder given"):
        compile_command(args)
    assert not (tmp_path / "pipeline.json").exists()


RUN_FN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfx.components.trainer.fn_args_utils import FnArgs
    from cnnrnn_tf.tfx_module import run_fn
    train_files, eval_files, transform_output, out = sys.argv[1:5]
    run_fn(FnArgs(
        train_files=[train_files], eval_files=[eval_files],
        transform_output=transform_output,
        serving_model_dir=os.path.join(out, "serving"), model_run_dir=os.path.join(out, "run"),
        train_steps=2, eval_steps=1,
        custom_config={"train_config": json.loads(sys.argv[5]),
                       "devices": ["/cpu:0", "/cpu:1"]}))
""")


def test_run_fn_trains_under_mirrored_strategy_on_two_cpus(first_run, tmp_path):
    root, _, _ = first_run
    pipeline_root = root / "pipeline_root"
    transform = glob.glob(str(pipeline_root / "Transform" / "transform_graph" / "*"))[0]
    examples = glob.glob(str(pipeline_root / "ImportExampleGen" / "examples" / "*"))[0]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_FN_SCRIPT, os.path.join(examples, "Split-train", "*"),
         os.path.join(examples, "Split-eval", "*"), transform, str(tmp_path),
         json.dumps(dict(TINY_CONFIG, batch_size=8))],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run" / "run_fn.json") as f:
        info = json.load(f)
    assert info["strategy"] == "MirroredStrategy" and info["replicas"] == 2
    assert os.path.exists(tmp_path / "serving" / "saved_model.pb")
    with open(os.path.join(info["model_dir"], "vocabulary.json")) as f:
        vocab = json.load(f)["labels"]
    assert sorted(vocab) == ["bar", "blue", "green", "red"]
