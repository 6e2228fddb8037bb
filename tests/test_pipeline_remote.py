"""The pipeline on object storage: Kubeflow V2 compile with runtime parameters and a GPU
request, AnomalyGate on a non-local root, bad URIs, and (slow) the whole pipeline on
s3:// against the test S3 server (tests/s3_server.py, moto_server on localhost).
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tfx")
pytest.importorskip("tensorflow_model_analysis")

import tensorflow as tf  # noqa: E402

from cnnrnn_tf import schema  # noqa: E402
from cnnrnn_tf.errors import InputError  # noqa: E402
from tests.conftest import synthetic_records  # noqa: E402

pytestmark = [pytest.mark.pipeline]

ORDER = ["ImportExampleGen", "StatisticsGen", "CuratedSchemaGen", "ExampleValidator",
         "AnomalyGate", "Transform", "Trainer", "latest_blessed_model_resolver",
         "Evaluator", "TestEvaluator", "Pusher"]


def _upload_data(s3, tmp_path, train=None, test=None, prefix="data"):
    local = tmp_path / "local_data"
    schema.write_records(str(local / "train"), train or synthetic_records(24, seed=1))
    schema.write_records(str(local / "test"), test or synthetic_records(8, seed=2))
    return s3.upload_dir(str(local), s3.bucket, prefix)


def _compile(tmp_path, s3, data, **extra):
    from cnnrnn_pipeline.cli import compile_command

    out = tmp_path / "pipeline.json"
    args = argparse.Namespace(
        runner="kubeflow-v2", image="example.org/cnnrnn:test", output=str(out),
        pipeline_root=f"s3://{s3.bucket}/root", data=data,
        serving_dir=f"s3://{s3.bucket}/serving", model_name="shapes", gpus=0, gpu_type=None,
        train_config=None, schema=None, train_steps=7, min_of1=0.25, infra_validator=None,
        beam_arg=[])
    for key, value in extra.items():
        setattr(args, key, value)
    assert compile_command(args) == 0
    return json.loads(out.read_text()), out.read_text()


def _node(task):
    # The Resolver compiles to two tasks: <id>-model-resolver and <id>-model-blessing-resolver.
    return task.split("-", 1)[0]


def _task_order(spec):
    """The nodes in an order that respects dependentTasks (ties by ORDER)."""
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    done, order = set(), []
    while len(done) < len(tasks):
        ready = sorted((t for t in tasks if t not in done and
                        set(tasks[t].get("dependentTasks", [])) <= done),
                       key=lambda t: ORDER.index(_node(t)) if _node(t) in ORDER else len(ORDER))
        assert ready, "cycle in the task graph"
        done.add(ready[0])
        if _node(ready[0]) not in order:
            order.append(_node(ready[0]))
    return order, tasks


def test_kubeflow_compile_has_runtime_parameters_gpu_image_and_writes_nothing(tmp_path, s3):
    data = _upload_data(s3, tmp_path)
    before = s3.keys(s3.bucket)
    spec, text = _compile(tmp_path, s3, data, gpus=1)
    assert s3.keys(s3.bucket) == before  # compiling writes nothing to the bucket
    assert "BUCKET" not in text
    root = spec["pipelineSpec"]["root"]
    assert set(root["inputDefinitions"]["parameters"]) == {
        "data_root", "push_destination", "train_args", "eval_config"}
    values = spec["runtimeConfig"]["parameters"]
    assert values["data_root"]["stringValue"] == data
    push = json.loads(values["push_destination"]["stringValue"])
    assert push == {"filesystem": {"baseDirectory": f"s3://{s3.bucket}/serving/shapes"}}
    assert json.loads(values["train_args"]["stringValue"])["numSteps"] == 7
    assert "0.25" in values["eval_config"]["stringValue"]
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == f"s3://{s3.bucket}/root"

    order, tasks = _task_order(spec)
    assert order == ORDER
    params = tasks["ImportExampleGen"]["inputs"]["parameters"]
    assert params["input_base"] == {"componentInputParameter": "data_root"}
    for task, name in (("Pusher", "push_destination"), ("Trainer", "train_args"),
                       ("Evaluator", "eval_config")):
        assert tasks[task]["inputs"]["parameters"][name] == {"componentInputParameter": name}

    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    # ExampleGen runs our executor, which finds the data's layout when the step runs.
    example_gen = json.dumps(executors["ImportExampleGen_executor"])
    assert "cnnrnn_pipeline.example_gen.Executor" in example_gen
    assert tasks["TestEvaluator"]["inputs"]["parameters"]["example_splits"] == {
        "runtimeValue": {"constantValue": {"stringValue": '["test"]'}}}
    trainer = executors["Trainer_executor"]["container"]
    assert trainer["image"] == "example.org/cnnrnn:test"
    # pipeline.json is Vertex's PipelineJob: the GPU type is a Vertex accelerator name.
    assert trainer["resources"]["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "1"}
    assert all("accelerator" not in e.get("container", {}).get("resources", {})
               for name, e in executors.items() if name != "Trainer_executor")

    # The label domain is derived from the train split when the pipeline runs.
    assert "ImportSchemaGen" not in tasks
    assert set(tasks["CuratedSchemaGen"]["inputs"]["artifacts"]) == {"statistics", "examples"}
    assert "InfraValidator" not in text


def test_kubeflow_compile_wires_the_infra_validator_when_asked(tmp_path, s3):
    data = _upload_data(s3, tmp_path)
    spec, _ = _compile(tmp_path, s3, data, infra_validator="kubernetes")
    order, tasks = _task_order(spec)
    assert "InfraValidator" in order
    assert order.index("InfraValidator") < order.index("Pusher")
    assert "InfraValidator" in tasks["Pusher"]["dependentTasks"]
    assert "infra_blessing" in tasks["Pusher"]["inputs"]["artifacts"]
    serving = tasks["InfraValidator"]["inputs"]["parameters"]["serving_spec"]
    assert "kubernetes" in serving["runtimeValue"]["constantValue"]["stringValue"]
    assert "Trainer_executor" in spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert "resources" not in spec["pipelineSpec"]["deploymentSpec"]["executors"][
        "Trainer_executor"]["container"]


def test_compile_with_a_schema_file_imports_it(tmp_path, s3):
    from cnnrnn_pipeline.curated_schema import schema_text

    data = _upload_data(s3, tmp_path)
    schema_uri = f"s3://{s3.bucket}/my/schema.pbtxt"
    with tf.io.gfile.GFile(schema_uri, "w") as f:
        f.write(schema_text(["cat", "dog"]))
    spec, _ = _compile(tmp_path, s3, data, schema=schema_uri)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    # ImportSchemaGen reads the user's schema when the step runs; compiling does not.
    used = tasks["ImportSchemaGen"]["inputs"]["parameters"]["schema_file"][
        "runtimeValue"]["constantValue"]["stringValue"]
    assert used == schema_uri and "CuratedSchemaGen" not in tasks


def _anomalies_artifact(root, splits):
    from tfx.types import artifact_utils, standard_artifacts

    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = root
    artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


def test_anomaly_gate_reads_a_non_local_root():
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.dsl.io import fileio

    from cnnrnn_pipeline.components import ANOMALIES_FILE, describe_anomalies

    root = "ram://gate_test/ExampleValidator/anomalies/7"
    clean, bad = anomalies_pb2.Anomalies(), anomalies_pb2.Anomalies()
    info = bad.anomaly_info["image/labels"]
    info.short_description = "Column dropped"
    info.description = "The feature was present in fewer examples than expected."
    for split, proto in (("train", bad), ("eval", clean)):
        fileio.makedirs(f"{root}/Split-{split}")
        with fileio.open(f"{root}/Split-{split}/{ANOMALIES_FILE}", "wb") as f:
            f.write(proto.SerializeToString())
    lines = describe_anomalies(_anomalies_artifact(root, ["train", "eval"]))
    assert lines == ["split 'train': image/labels: Column dropped (The feature was present "
                     "in fewer examples than expected.)"]

    # Clean files but ExampleValidator's blessed property says no: the gate stops.
    artifact = _anomalies_artifact(root, ["eval"])
    assert describe_anomalies(artifact) == []
    artifact.set_json_value_custom_property("blessed", {"eval": 0})
    assert describe_anomalies(artifact) == [
        "split 'eval': ExampleValidator did not bless it (blessed=0)"]

    # A split whose result cannot be read does not pass.
    lines = describe_anomalies(_anomalies_artifact(root, ["missing"]))
    assert len(lines) == 1 and "SchemaDiff.pb missing" in lines[0] and root in lines[0]


def _run_args(**kw):
    base = dict(data=None, pipeline_root=None, serving_dir=None, model_name="cnnrnn",
                metadata_path=None, schema=None, train_config=None, train_steps=1,
                eval_steps=1, min_of1=0.0, infra_validator=None, beam_arg=[])
    base.update(kw)
    return argparse.Namespace(**base)


def test_run_command_refuses_bad_uris_before_anything_runs(tmp_path, s3):
    from cnnrnn_pipeline.cli import run_command

    data = _upload_data(s3, tmp_path)
    root, serving = f"s3://{s3.bucket}/root", f"s3://{s3.bucket}/serving"
    before = s3.keys(s3.bucket)
    with pytest.raises(InputError, match="--metadata-path FILE"):
        run_command(_run_args(data=data, pipeline_root=root, serving_dir=serving))
    with pytest.raises(InputError, match=r"hdfs://x/data: unknown URI scheme"):
        run_command(_run_args(data="hdfs://x/data", pipeline_root=root, serving_dir=serving,
                              metadata_path=str(tmp_path / "m.sqlite")))
    with pytest.raises(InputError) as err:
        run_command(_run_args(data=data, pipeline_root="s3://no-such-bucket-zz/root",
                              serving_dir=serving, metadata_path=str(tmp_path / "m.sqlite")))
    assert "s3://no-such-bucket-zz" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        run_command(_run_args(data=f"s3://{s3.bucket}/nothing", pipeline_root=root,
                              serving_dir=serving, metadata_path=str(tmp_path / "m.sqlite")))
    with pytest.raises(InputError, match="must be a local file"):
        run_command(_run_args(data=data, pipeline_root=root, serving_dir=serving,
                              metadata_path=f"s3://{s3.bucket}/m.sqlite"))
    assert s3.keys(s3.bucket) == before
    assert not (tmp_path / "m.sqlite").exists()


def test_train_config_file_and_flags(tmp_path):
    from cnnrnn_pipeline.cli import train_config_from_args

    path = tmp_path / "train.json"
    path.write_text(json.dumps({"image_size": 32, "epochs": 3, "backbone": "small-cnn"}))
    config = train_config_from_args(argparse.Namespace(
        train_config=str(path), model=None, backbone=None, image_size=None, epochs=2,
        label_order="rare-first", batch_size=None, seed=5))
    assert (config.image_size, config.epochs, config.label_order, config.seed) == (
        32, 2, "rare-first", 5)
    path.write_text("{not json")
    with pytest.raises(InputError, match="train.json: not JSON"):
        train_config_from_args(argparse.Namespace(train_config=str(path)))


# ------------------------------------------------------------------ end to end on s3://
# The CLI in a child process: tensorflow-io can abort at interpreter exit, so the child
# ends through cnnrnn_tf.uri.exit_process, which keeps the command's own status.
CLI = ("import sys; from cnnrnn_tf.cli.app import main; from cnnrnn_tf.uri import exit_process; "
       "exit_process(main(sys.argv[1:]))")
TINY = {"image_size": 32, "epochs": 1, "batch_size": 8, "lstm_units": 16, "embed_dim": 8}


def _cli(args, s3, cwd):
    env = dict(os.environ, **s3.env, TF_CPP_MIN_LOG_LEVEL="2")
    for key in ("S3_ENDPOINT", "S3_USE_HTTPS", "S3_VERIFY_SSL"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _local_files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder)
                  for r, _, files in os.walk(folder) for f in files)


def _base_args(s3, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(TINY))
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return cwd, ["pipeline", "run", "--pipeline-root", f"s3://{s3.bucket}/root",
                 "--model-name", "shapes", "--train-steps", "2", "--eval-steps", "1",
                 "--min-of1", "0", "--train-config", str(config),
                 "--beam-arg=--direct_num_workers=1"]


@pytest.mark.slow
def test_pipeline_end_to_end_on_s3(tmp_path, s3):
    data = _upload_data(s3, tmp_path, synthetic_records(32, seed=1), synthetic_records(8, seed=2))
    cwd, base = _base_args(s3, tmp_path)
    meta = tmp_path / "meta" / "metadata.sqlite"
    proc = _cli(base + ["--data", data, "--serving-dir", f"s3://{s3.bucket}/serving",
                        "--metadata-path", str(meta)], s3, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blessed: yes" in proc.stdout
    # train/ + test/ on s3://: eval is carved out of train when the step runs, test is
    # test/ (8 examples) and is scored apart from the blessing.
    assert "carved out of train" in proc.stderr
    counts = [line for line in proc.stdout.splitlines() if line.startswith("splits: ")]
    assert len(counts) == 1 and counts[0].endswith(", test 8"), proc.stdout
    assert "TestEvaluator (test split" in proc.stdout
    assert _local_files(cwd) == []
    assert meta.exists()
    pushed = [k for k in s3.keys(s3.bucket, "serving/shapes/") if k.endswith("saved_model.pb")]
    assert len(pushed) == 1, s3.keys(s3.bucket, "serving/")
    version_dir = f"s3://{s3.bucket}/" + pushed[0].rsplit("/", 1)[0]
    loaded = tf.saved_model.load(version_dir)
    assert {"serving_default", "predict_images", "label_scores"} <= set(loaded.signatures)
    example = schema.make_example(synthetic_records(1, seed=9)[0].image, ["red"], "x")
    out = loaded.signatures["serving_default"](examples=tf.constant([example.SerializeToString()]))
    assert out["labels"].shape[0] == 1
