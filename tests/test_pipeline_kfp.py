"""Compiling for Kubeflow Pipelines 2.x and Vertex AI offline, and submitting the result:
the issue's acceptance checks (offline compile, kfp's own loader, aiplatform's PipelineJob,
submit with and without --dry-run), against a fake KFP API server on localhost."""
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("tfx")
pytest.importorskip("kfp")

from cnnrnn_tf.cli import main  # noqa: E402

pytestmark = [pytest.mark.pipeline]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMETERS = {"data_root", "push_destination", "train_args", "eval_config"}
ACCEPTANCE = ["pipeline", "compile", "--runner", "kubeflow-v2", "--platform", "kfp",
              "--image", "IMAGE", "--output", "p.yaml", "--pipeline-root", "s3://B/root",
              "--data", "s3://B/data", "--serving-dir", "s3://B/serving", "--gpus", "1",
              "--resources", "Evaluator=cpu:4,memory:16G",
              "--resources", "ImportExampleGen=cpu:2,memory:8G"]
CLI = ("import sys; from cnnrnn_tf.cli import main; from cnnrnn_tf.uri import exit_process; "
       "exit_process(main(sys.argv[1:]))")


def _offline_env():
    """No credentials anywhere, and an S3 endpoint at a closed port."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_", "GOOGLE_", "KF_PIPELINES"))}
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", TF_CPP_MIN_LOG_LEVEL="2",
               GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/credentials.json",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, ".wt")]))
    return env


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The acceptance compile, run as a user would: the CLI in a child process, offline."""
    cwd = tmp_path_factory.mktemp("kfp_compile")
    proc = subprocess.run([sys.executable, "-c", CLI, *ACCEPTANCE], cwd=cwd, env=_offline_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote p.yaml (kfp" in proc.stdout
    assert sorted(os.listdir(cwd)) == ["p.yaml"]  # no temporary file left
    return str(cwd / "p.yaml")


def _load(path):
    from google.protobuf import json_format
    from kfp.client import client

    doc = client._extract_pipeline_yaml(path)  # the loader create_run_from_pipeline_package uses
    return (json_format.MessageToDict(doc.pipeline_spec),
            json_format.MessageToDict(doc.platform_spec))


def _container(spec, step):
    label = spec["components"][spec["root"]["dag"]["tasks"][step]["componentRef"]["name"]][
        "executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_offline_compile_gives_a_bare_spec_that_kfps_loader_accepts(package):
    with open(package) as f:
        text = f.read()
    assert "displayName" not in text.split("\n---", 1)[0] and "runtimeConfig" not in text
    spec, platform = _load(package)
    assert platform == {}
    assert spec["schemaVersion"] == "2.1.0"
    assert spec["defaultPipelineRoot"] == "s3://B/root"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == PARAMETERS
    assert all(p["defaultValue"] and p["parameterType"] == "STRING" for p in params.values())
    assert params["data_root"]["defaultValue"] == "s3://B/data"
    assert json.loads(params["push_destination"]["defaultValue"]) == {
        "filesystem": {"baseDirectory": "s3://B/serving/cnnrnn"}}
    assert _container(spec, "Trainer")["resources"] == {
        "accelerator": {"type": "nvidia.com/gpu", "count": "1"}}
    assert _container(spec, "Evaluator")["resources"] == {"cpuLimit": 4.0, "memoryLimit": 16.0}
    assert _container(spec, "ImportExampleGen")["resources"] == {"cpuLimit": 2.0,
                                                                "memoryLimit": 8.0}
    assert "resources" not in _container(spec, "Pusher")
    # The label domain is derived when the pipeline runs: no schema path is compiled in.
    assert "CuratedSchemaGen" in spec["root"]["dag"]["tasks"]
    assert "ImportSchemaGen" not in spec["root"]["dag"]["tasks"]


def _bad_executors(spec):
    return sorted(name for name, e in spec["deploymentSpec"]["executors"].items()
                  if "container" not in e or "resolver" in e or "customJob" in e)


@pytest.mark.xfail(strict=False, reason="resolver replaced by K2")
def test_no_resolver_or_custom_job_executor(package):
    # KFP's Argo compiler refuses resolver ("not implemented") and customJob executors.
    spec, _ = _load(package)
    assert _bad_executors(spec) == []


def _run_cli(args, capfd, cwd=None):
    with _cwd(cwd or os.getcwd()):
        code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


class FakeKFP(BaseHTTPRequestHandler):
    """The few KFP v2beta1 API calls create_run_from_pipeline_package and --wait make."""
    runs, final_state = [], "SUCCEEDED"

    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        if self.path.startswith("/apis/v2beta1/runs/"):
            return self._reply({"run_id": "run-1", "state": FakeKFP.final_state})
        self.send_error(404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            FakeKFP.runs.append(body)
            return self._reply({"run_id": "run-1", "state": "PENDING"})
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    FakeKFP.runs.clear()
    FakeKFP.final_state = "SUCCEEDED"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_submit_dry_run_contacts_nothing_and_a_closed_port_is_one_line(package, capfd):
    base = ["pipeline", "submit", package, "--platform", "kfp", "--host", "http://127.0.0.1:9"]
    code, out, err = _run_cli(base + ["--dry-run", "--param", "data_root=s3://C/new"], capfd)
    assert code == 0, err
    sent = json.loads(out)
    assert sent["runtime_config"] == {"parameters": {"data_root": "s3://C/new"},
                                      "pipeline_root": "s3://B/root"}
    code, out, err = _run_cli(base, capfd)
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and "127.0.0.1:9" in err and err.startswith("error:")


def test_submit_refuses_bad_input_in_one_line(package, tmp_path, capfd):
    bad = [(["--param", "nope=1"], "no parameter nope"),
           (["--param", "data_root"], "expected NAME=VALUE"),
           (["--platform", "vertex"], "is a kfp pipeline"),
           (["--project", "p"], "--project: a vertex flag"),
           (["--secret-env", "AWS_KEY=bad_name:k"], "--secret-env AWS_KEY=bad_name:k")]
    for flags, message in bad:
        code, out, err = _run_cli(["pipeline", "submit", package, "--dry-run"] + flags, capfd)
        assert code != 0 and message in err and err.strip().count("\n") == 0, (flags, err)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"displayName": "x", "pipelineSpec": {}}))
    code, _, err = _run_cli(["pipeline", "submit", str(job), "--dry-run"], capfd)
    assert code != 0 and "a Vertex PipelineJob, not a bare PipelineSpec" in err


def test_submit_sends_the_package_to_kfp_and_waits(package, kfp_server, capfd):
    args = ["pipeline", "submit", package, "--host", kfp_server, "--run-name", "r",
            "--param", "data_root=s3://C/new", "--service-account", "runner",
            "--secret-env", "AWS_ACCESS_KEY_ID=s3-creds:access-key", "--no-cache", "--wait"]
    code, out, err = _run_cli(args, capfd)
    assert code == 0, err
    assert "run run-1: SUCCEEDED" in out
    (run,) = FakeKFP.runs
    assert run["display_name"] == "r" and run["service_account"] == "runner"
    assert run["runtime_config"] == {"parameters": {"data_root": "s3://C/new"},
                                     "pipeline_root": "s3://B/root"}
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == PARAMETERS
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    assert executors["Trainer_executor"]["secretAsEnv"] == [
        {"secretName": "s3-creds", "keyToEnv": [{"secretKey": "access-key",
                                                 "envVar": "AWS_ACCESS_KEY_ID"}]}]
    # --no-cache switches caching off for every task of the spec that is sent.
    tasks = spec["root"]["dag"]["tasks"]
    assert all(t.get("cachingOptions", {}).get("enableCache") is not True for t in tasks.values())
    FakeKFP.final_state = "FAILED"
    code, out, _ = _run_cli(args, capfd)
    assert code == 1 and "run run-1: FAILED" in out


def _compile_args(tmp_path, output, *flags):
    return ["pipeline", "compile", "--runner", "kubeflow-v2", "--image", "IMAGE",
            "--output", str(tmp_path / output), "--pipeline-root", "gs://B/root",
            "--data", "gs://B/data", "--serving-dir", "gs://B/serving", *flags]


def test_vertex_json_is_accepted_by_aiplatform(tmp_path, capfd):
    pytest.importorskip("google.cloud.aiplatform")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.protobuf import json_format

    code, out, err = _run_cli(_compile_args(tmp_path, "v.json", "--resources",
                                            "Trainer=cpu:8,memory:16Gi,gpu:2"), capfd)
    assert code == 0, err
    assert "vertex" in out
    job = aiplatform.PipelineJob(display_name="cnnrnn", template_path=str(tmp_path / "v.json"),
                                 parameter_values={"data_root": "gs://B/other"}, project="p",
                                 location="us-central1", credentials=AnonymousCredentials())
    body = json_format.MessageToDict(job._gca_resource._pb)
    assert body["runtimeConfig"]["parameters"]["data_root"] == {"stringValue": "gs://B/other"}
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://B/root"
    trainer = _container(body["pipelineSpec"], "Trainer")
    assert trainer["resources"] == {"cpuLimit": 8.0, "memoryLimit": 17.18,
                                    "accelerator": {"type": "NVIDIA_TESLA_T4", "count": "2"}}
    code, out, err = _run_cli(["pipeline", "submit", str(tmp_path / "v.json"), "--dry-run",
                               "--project", "p", "--region", "us-central1",
                               "--labels", "team=ml", "--param", "data_root=gs://B/x"], capfd)
    assert code == 0, err
    sent = json.loads(out)["job"]
    assert sent["labels"] == {"team": "ml"}
    assert sent["runtimeConfig"]["parameters"]["data_root"] == {"stringValue": "gs://B/x"}
    code, _, err = _run_cli(["pipeline", "submit", str(tmp_path / "v.json"), "--dry-run"], capfd)
    assert code != 0 and "--project: required" in err


@pytest.mark.parametrize("flags, message", [
    (["--platform", "kfp"], "--platform kfp contradicts --output"),
    (["--resources", "Trainer=cpu:four"], "--resources Trainer=cpu:four: cpu:four"),
    (["--resources", "Trainer=memory:16"], "memory:16 is not a size"),
    (["--resources", "Trainer=disk:1"], "'disk:1' is not one of"),
    (["--resources", "Trainer"], "expected STEP=cpu:N"),
    (["--gpus", "1", "--resources", "Trainer=gpu:2"], "--gpus: the Trainer's GPUs"),
    (["--secret-env", "AWS_ACCESS_KEY_ID=s3:key"], "--secret-env: KFP only"),
])
def test_compile_refuses_bad_flags_in_one_line(tmp_path, capfd, flags, message):
    code, out, err = _run_cli(_compile_args(tmp_path, "v.json", *flags), capfd)
    assert code != 0 and message in err and err.strip().count("\n") == 0, err
    assert os.listdir(tmp_path) == []


def test_compile_refuses_an_unknown_step_and_an_unknown_extension(tmp_path, capfd):
    code, _, err = _run_cli(_compile_args(tmp_path, "p.txt"), capfd)
    assert code != 0 and "--output" in err and ".yaml" in err
    code, _, err = _run_cli(_compile_args(tmp_path, "p.yaml", "--resources", "Trainr=cpu:1"),
                            capfd)
    assert code != 0 and "no step Trainr in this pipeline" in err and "Trainer" in err
    assert err.strip().count("\n") == 0
    assert os.listdir(tmp_path) == []


def test_compile_writes_the_secret_env_platform_spec(tmp_path, capfd):
    code, _, err = _run_cli(_compile_args(
        tmp_path, "p.yml", "--secret-env", "AWS_ACCESS_KEY_ID=s3-creds:access-key",
        "--secret-env", "AWS_SECRET_ACCESS_KEY=s3-creds:secret-key"), capfd)
    assert code == 0, err
    spec, platform = _load(str(tmp_path / "p.yml"))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    assert executors["ImportExampleGen_executor"]["secretAsEnv"] == [{
        "secretName": "s3-creds",
        "keyToEnv": [{"secretKey": "access-key", "envVar": "AWS_ACCESS_KEY_ID"},
                     {"secretKey": "secret-key", "envVar": "AWS_SECRET_ACCESS_KEY"}]}]
    code, out, _ = _run_cli(["pipeline", "submit", str(tmp_path / "p.yml"), "--dry-run"], capfd)
    assert code == 0 and json.loads(out)["secret_env"] == ["AWS_ACCESS_KEY_ID",
                                                          "AWS_SECRET_ACCESS_KEY"]


def test_resource_values():
    from cnnrnn_pipeline.resources import parse_cpu, parse_memory_gb, parse_resources

    assert parse_memory_gb("16G") == 16 and parse_memory_gb("16Gi") == 17.18
    assert parse_memory_gb("512M") == 0.51 and parse_memory_gb("1Ti") == 1099.51
    assert parse_cpu("4") == 4 and parse_cpu("500m") == 0.5 and parse_cpu("0.5") == 0.5
    steps = parse_resources(["Trainer=cpu:8,memory:32G", "Pusher=cpu:1"], gpus=2,
                            gpu_type="NVIDIA_L4")
    assert steps["Trainer"].to_ir("nvidia.com/gpu") == {
        "cpuLimit": 8, "memoryLimit": 32, "accelerator": {"type": "NVIDIA_L4", "count": "2"}}
    assert steps["Pusher"].to_ir("x") == {"cpuLimit": 1}



def _readme_block():
    """The README's Kubeflow / Vertex block: its commands (continuations joined) and its two
    Python snippets (comment lines indented by three spaces), kfp's first."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text.split("<!-- submit-lines", 1)[1].split("```", 2)[1]
    commands, snippets = [], []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("cnnrnn "):
            commands.append(line.split()[1:])
        elif line.startswith("# the same from Python"):
            snippets.append("")
        elif line.startswith("#   "):
            snippets[-1] += line[4:].strip()
    return commands, snippets


@contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def test_readmes_submit_lines_work(tmp_path, kfp_server, capfd):
    commands, (kfp_snippet, vertex_snippet) = _readme_block()
    assert [c[:2] for c in commands] == [["pipeline", "compile"], ["pipeline", "submit"]] * 2
    for args in commands:
        if args[1] == "submit":
            args = [a.replace("http://localhost:8080", kfp_server) for a in args]
            if "--project" in args:
                args.append("--dry-run")  # no Vertex AI here: what would be sent
        code, out, err = _run_cli(args, capfd, cwd=tmp_path)
        assert code == 0, (args, err)
    (run,) = FakeKFP.runs
    assert run["runtime_config"] == {"parameters": {"data_root": "s3://B/other-data"},
                                     "pipeline_root": "s3://B/root"}
    assert "secretAsEnv" in json.dumps(run["pipeline_spec"]["platform_spec"])
    assert json.loads(out)["job"]["runtimeConfig"]["parameters"]["data_root"] == {
        "stringValue": "gs://B/other-data"}

    # kfp's create_run_from_pipeline_package takes pipeline.yaml as it is ...
    import kfp

    with _cwd(tmp_path):
        exec(kfp_snippet.replace("http://localhost:8080", kfp_server), {"kfp": kfp})
    assert len(FakeKFP.runs) == 2
    assert FakeKFP.runs[1]["runtime_config"]["parameters"] == {"data_root": "s3://B/other-data"}
    # ... and aiplatform's PipelineJob loads pipeline.json with the README's arguments.
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    assert vertex_snippet.startswith("aiplatform.PipelineJob(")
    call = vertex_snippet.rsplit(".submit()", 1)[0][:-1] + (
        ", project='p', location='us-central1', credentials=credentials)")
    with _cwd(tmp_path):
        job = eval(call, {"aiplatform": aiplatform, "credentials": AnonymousCredentials()})
    from google.protobuf import json_format

    body = json_format.MessageToDict(job._gca_resource._pb)
    assert body["displayName"] == "cnnrnn"
    assert body["runtimeConfig"]["parameters"]["data_root"] == {"stringValue": "gs://B/other-data"}


def test_curated_schema_gen_takes_the_labels_from_statistics_else_from_the_records(tmp_path):
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx.types import artifact_utils, standard_artifacts

    from cnnrnn_pipeline.schema_gen import labels_from_records, labels_from_statistics
    from cnnrnn_tf import schema
    from tests.conftest import synthetic_records

    stats = standard_artifacts.ExampleStatistics()
    stats.uri = str(tmp_path / "stats")
    stats.split_names = artifact_utils.encode_split_names(["train"])

    def write(unique, labels):
        lists = statistics_pb2.DatasetFeatureStatisticsList()
        feature = lists.datasets.add(num_examples=4).features.add()
        feature.path.step.append(schema.LABELS_KEY)
        feature.string_stats.unique = unique
        for label in labels:
            feature.string_stats.rank_histogram.buckets.add(label=label, sample_count=1)
        os.makedirs(tmp_path / "stats" / "Split-train", exist_ok=True)
        (tmp_path / "stats" / "Split-train" / "FeatureStats.pb").write_bytes(
            lists.SerializeToString())

    write(2, ["red", "blue"])
    assert labels_from_statistics(stats) == ["blue", "red"]
    write(3, ["red", "blue"])  # more labels than the histogram lists: read the records
    assert labels_from_statistics(stats) is None
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train"])
    records = synthetic_records(12, seed=1)
    schema.write_records(str(tmp_path / "examples" / "Split-train"), records)
    assert labels_from_records(examples) == sorted({l for r in records for l in r.labels})
