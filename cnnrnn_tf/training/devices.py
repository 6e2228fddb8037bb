"""Where training runs: the distribution strategy, XLA, mixed precision and steps per execution."""
from __future__ import annotations

import logging
import contextlib
from typing import List, Optional

import keras
import tensorflow as tf

from cnnrnn_tf.cluster import TF_CONFIG, ClusterConfig
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.training.callbacks import BACKUP_DIR

log = logging.getLogger(__name__)


MAX_AUTO_STEPS_PER_EXECUTION = 16


def choose_strategy(devices: Optional[List[str]] = None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes several workers (each uses
    all its GPUs, see ``cnnrnn_tf.cluster``); else MirroredStrategy over several GPUs (or
    the given devices), one GPU, or the CPU."""
    cluster = ClusterConfig.from_environment()
    if cluster is not None and cluster.multi_worker:
        if devices:
            raise InputError(f"devices {list(devices)}: cannot be chosen when {TF_CONFIG} "
                             f"describes several workers (each worker uses all its GPUs)")
        log.info("%s: %s of %d workers", TF_CONFIG, cluster.task_name, cluster.num_workers)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise RuntimeError(
                f"{TF_CONFIG} describes {cluster.num_workers} workers, but TensorFlow already "
                f"ran in this process; MultiWorkerMirroredStrategy must come first: call "
                f"cnnrnn_tf.training.devices.choose_strategy() at the start of the program and pass "
                f"it to train(strategy=...)") from exc
    if devices:
        return tf.distribute.MirroredStrategy(devices) if len(devices) > 1 \
            else tf.distribute.OneDeviceStrategy(devices[0])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def strategy_device_type(strategy: tf.distribute.Strategy) -> str:
    """"GPU" when the strategy's replicas (or, for the default strategy, TensorFlow's
    default placement) run on a GPU, else "CPU"."""
    if isinstance(strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy,
                             tf.distribute.MultiWorkerMirroredStrategy)):
        devices = strategy.extended.worker_devices
        return "GPU" if any(":GPU:" in d.upper() for d in devices) else "CPU"
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def choose_jit_compile(setting: str, device_type: str) -> bool:
    """XLA for the training step. "auto": on for a GPU, off for the CPU.

    On the CPU, oneDNN's kernels without XLA trained the small CNN in 38-44 s per epoch,
    with XLA 66-79 s (BENCHMARKS.md). The value is passed to ``compile`` explicitly:
    Keras's own "auto" turns XLA off under any distribution strategy, which is how a
    single GPU (a OneDeviceStrategy) trained without it.
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    if setting != "auto":
        raise ValueError(f"jit_compile must be auto, on or off, got {setting!r}")
    return device_type.upper() == "GPU"


def choose_steps_per_execution(requested: Optional[int], steps_per_epoch: int,
                               device_type: str) -> int:
    """Training steps per call of the compiled train function: a divisor of the steps per
    epoch, so that an epoch ends on a call boundary (the data repeats, and a call that ran
    past the end would shift every later epoch) and epoch-end callbacks stay exact.

    ``requested``: the most wanted (the largest divisor not above it is taken); None: 1 on
    the CPU (a step there takes tens of milliseconds or more, the per-call overhead a few),
    up to 16 on a GPU, where short steps make the per-call overhead count. Progress bars and
    batch-level callbacks then report every that many steps.
    """
    steps = max(1, int(steps_per_epoch))
    if requested is None:
        requested = MAX_AUTO_STEPS_PER_EXECUTION if device_type.upper() == "GPU" else 1
    requested = max(1, min(int(requested), steps))
    return max(k for k in range(1, requested + 1) if steps % k == 0)


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """Sets the mixed_float16 policy for the block (GPU), restoring the old one."""
    old = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def check_workers_resume_alike(strategy: tf.distribute.Strategy, epoch: Optional[int]) -> None:
    """All workers must start from the same epoch (and weights), or their collective steps
    part ways; a worker that cannot read the chief's MODEL_DIR would start afresh."""
    value = float(-1 if epoch is None else epoch)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([1.0, value, value * value], tf.float64))
    n, total, squares = strategy.reduce("SUM", per_replica, axis=None).numpy()
    if n * squares != total * total:  # equal everywhere exactly when the variance is 0
        mine = "none" if epoch is None else f"{epoch} epochs done"
        raise InputError(
            f"the workers of {TF_CONFIG} would not resume from the same point (this one: "
            f"{mine}): every worker must read the chief's --out folder (keep it on storage all "
            f"of them reach: gs://, s3://, a shared volume), or remove its {BACKUP_DIR}/ "
            f"folder to start afresh")
