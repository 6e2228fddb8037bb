"""Training on several machines: the cluster that ``TF_CONFIG`` describes.

Kubeflow's training operator (TFJob) and Vertex AI start one process per machine and
tell each, in the environment variable ``TF_CONFIG``, the whole cluster and its own
place in it::

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]},
     "task": {"type": "worker", "index": 0}}

When it names more than one ``chief`` / ``worker`` task, :func:`choose_strategy`
(``cnnrnn_tf.training.loop``) trains with ``tf.distribute.MultiWorkerMirroredStrategy``: every
process runs the same program, gradients are summed across all of them at every step.
The chief (the ``chief`` task, or ``worker`` 0 when there is none) writes MODEL_DIR; the
other workers write into a temporary folder of their own, removed when they finish
(:func:`worker_dir`), as TensorFlow's multi-worker tutorial does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Dict, Iterator, Mapping, Optional, Tuple

import tensorflow as tf

from cnnrnn_tf.errors import InputError

TF_CONFIG = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")  # MultiWorkerMirroredStrategy's; no "ps", no "evaluator"


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A checked ``TF_CONFIG``: the cluster's tasks and this process's task."""

    cluster: Dict[str, Tuple[str, ...]]
    task_type: str
    task_index: int

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None
                         ) -> Optional["ClusterConfig"]:
        """The cluster ``TF_CONFIG`` describes, or None when it is unset or empty."""
        text = (os.environ if environ is None else environ).get(TF_CONFIG, "")
        return cls.parse(text) if text.strip() else None

    @classmethod
    def parse(cls, text: str) -> "ClusterConfig":
        """Checks a ``TF_CONFIG`` value; InputError naming the field that is wrong."""
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{TF_CONFIG}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise InputError(f'{TF_CONFIG}: must be a JSON object with "cluster" and "task"')
        for key in ("cluster", "task"):
            if key not in config:
                raise InputError(f'{TF_CONFIG}: no "{key}" field')
        cluster = _parse_cluster(config["cluster"])
        task = config["task"]
        if not isinstance(task, dict):
            raise InputError(f'{TF_CONFIG}: task must be an object like '
                             f'{{"type": "worker", "index": 0}}')
        task_type = task.get("type")
        if not isinstance(task_type, str) or not task_type:
            raise InputError(f"{TF_CONFIG}: no task.type")
        if task_type not in cluster:
            raise InputError(f"{TF_CONFIG}: task.type {task_type!r} is not in cluster "
                             f"(it has {', '.join(sorted(cluster))})")
        index = task.get("index", 0)  # as TensorFlow's TFConfigClusterResolver: 0 when absent
        if isinstance(index, bool) or not isinstance(index, int):
            raise InputError(f"{TF_CONFIG}: task.index must be a whole number, got {index!r}")
        if not 0 <= index < len(cluster[task_type]):
            raise InputError(f"{TF_CONFIG}: task.index {index} is out of range: "
                             f"cluster.{task_type} has {len(cluster[task_type])} "
                             f"entr{'y' if len(cluster[task_type]) == 1 else 'ies'}")
        return cls(cluster, task_type, index)

    @property
    def num_workers(self) -> int:
        """The processes that train (chief and workers)."""
        return sum(len(self.cluster.get(t, ())) for t in TASK_TYPES)

    @property
    def multi_worker(self) -> bool:
        """True when training is spread over several processes (else: the normal path)."""
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """The task that writes MODEL_DIR: the chief, or worker 0 when there is no chief."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def task_name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def _parse_cluster(cluster) -> Dict[str, Tuple[str, ...]]:
    if not isinstance(cluster, dict) or not cluster:
        raise InputError(f'{TF_CONFIG}: cluster must be an object like '
                         f'{{"worker": ["host1:port", "host2:port"]}}')
    out: Dict[str, Tuple[str, ...]] = {}
    for name, addresses in cluster.items():
        if name not in TASK_TYPES:
            raise InputError(f"{TF_CONFIG}: cluster.{name} is not supported: cnnrnn trains with "
                             f"MultiWorkerMirroredStrategy, which has only chief and worker tasks")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.strip() for a in addresses)):
            raise InputError(f'{TF_CONFIG}: cluster.{name} must be a non-empty list of '
                             f'"host:port" addresses')
        out[name] = tuple(addresses)
    if len(out.get("chief", ())) > 1:
        raise InputError(f"{TF_CONFIG}: cluster.chief has {len(out['chief'])} entries; "
                         f"a cluster has at most one chief")
    return out


# ------------------------------------------------------------------ the strategy's view
def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy over more than one process."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and num_workers(strategy) > 1)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """The processes training together (1 unless multi-worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return max(1, strategy.num_replicas_in_sync // len(strategy.extended.worker_devices))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the results (always, except a non-chief worker)."""
    return bool(strategy.extended.should_checkpoint)


@contextlib.contextmanager
def worker_dir(out_dir: str, strategy: tf.distribute.Strategy) -> Iterator[str]:
    """The folder this process writes: ``out_dir`` on the chief; on another worker a new
    local temporary folder, removed when the block ends (even on an error)."""
    if is_chief(strategy):
        yield out_dir
        return
    tmp = tempfile.mkdtemp(prefix="cnnrnn-worker-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
