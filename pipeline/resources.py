"""``--resources STEP=cpu:N,memory:XG[,gpu:N[,gpu-type:T]]``: per-step container resources.

The values are written straight into the compiled IR, each executor's
``container.resources`` (KFP's ``ResourceSpec``): ``cpuLimit`` in vCPUs,
``memoryLimit`` in GB (``16G`` is 16, ``16Gi`` is 17.18) and an ``accelerator``.
TFX 1.16's compiler drops ``with_platform_config`` for ImportExampleGen, so no step's
resources go through TFX; one code path serves every step.

The GPU type defaults per platform: KFP passes it to Kubernetes as the resource name
(``nvidia.com/gpu``); Vertex AI wants one of its accelerator names (``NVIDIA_TESLA_T4``).
This module imports nothing heavy, so the CLI can check the flags before TFX loads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

from cnnrnn_tf.errors import InputError

DEFAULT_GPU_TYPES = {"kfp": "nvidia.com/gpu", "vertex": "NVIDIA_TESLA_T4"}
# Bytes per unit; memoryLimit is in GB (10**9 bytes), as KFP's ResourceSpec says.
MEMORY_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
KEYS = ("cpu", "memory", "gpu", "gpu-type")
FORMAT = "STEP=cpu:N,memory:XG[,gpu:N[,gpu-type:T]]"


@dataclass(frozen=True)
class Resources:
    cpu: Optional[float] = None  # vCPUs
    memory_gb: Optional[float] = None
    gpus: Optional[int] = None
    gpu_type: Optional[str] = None

    def to_ir(self, default_gpu_type: str) -> Dict[str, object]:
        """The IR's ``container.resources`` (JSON field names of KFP's ResourceSpec)."""
        out: Dict[str, object] = {}
        if self.cpu is not None:
            out["cpuLimit"] = self.cpu
        if self.memory_gb is not None:
            out["memoryLimit"] = self.memory_gb
        if self.gpus:
            out["accelerator"] = {"type": self.gpu_type or default_gpu_type,
                                  "count": str(self.gpus)}
        return out


def parse_cpu(text: str) -> float:
    """``4``, ``0.5`` or Kubernetes' ``500m`` (millicpu) as vCPUs."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"cpu:{text} is not a positive number of vCPUs (e.g. cpu:4, cpu:500m)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def parse_memory_gb(text: str) -> float:
    """``16G`` -> 16, ``16Gi`` -> 17.18, ``512M`` -> 0.512 (GB, rounded to 2 decimals)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"memory:{text} is not a size with a unit (e.g. memory:16G, "
                         "memory:16Gi, memory:512M)")
    return round(float(match.group(1)) * MEMORY_UNITS[match.group(2)] / 10**9, 2)


def parse_one(value: str):
    """``STEP=cpu:N,...`` -> ``(STEP, Resources)``; ValueError naming what is wrong."""
    step, sep, spec = value.partition("=")
    if not sep or not step.strip() or not spec.strip():
        raise ValueError(f"expected {FORMAT}")
    fields: Dict[str, str] = {}
    for item in spec.split(","):
        key, sep, text = item.strip().partition(":")
        if not sep or key not in KEYS or not text:
            raise ValueError(f"{item.strip()!r} is not one of {', '.join(k + ':...' for k in KEYS)}")
        if key in fields:
            raise ValueError(f"{key} is given twice")
        fields[key] = text
    gpus = None
    if "gpu" in fields:
        if not fields["gpu"].isdigit():
            raise ValueError(f"gpu:{fields['gpu']} is not a whole number of GPUs")
        gpus = int(fields["gpu"])
    if "gpu-type" in fields and not gpus:
        raise ValueError("gpu-type needs gpu:N (N >= 1)")
    return step.strip(), Resources(
        cpu=parse_cpu(fields["cpu"]) if "cpu" in fields else None,
        memory_gb=parse_memory_gb(fields["memory"]) if "memory" in fields else None,
        gpus=gpus, gpu_type=fields.get("gpu-type"))


def parse_resources(values: Iterable[str], gpus: int = 0,
                    gpu_type: Optional[str] = None) -> Dict[str, Resources]:
    """Every ``--resources`` value, plus ``--gpus N`` (the Trainer's shorthand, refused
    together with a Trainer GPU in ``--resources``); InputError naming the flag and value."""
    out: Dict[str, Resources] = {}
    for value in values or ():
        try:
            step, resources = parse_one(value)
        except ValueError as exc:
            raise InputError(f"--resources {value}: {exc}") from None
        if step in out:
            raise InputError(f"--resources {value}: step {step} is given twice")
        out[step] = resources
    return with_trainer_gpus(out, gpus, gpu_type)


def with_trainer_gpus(resources: Dict[str, Resources], gpus: int = 0,
                      gpu_type: Optional[str] = None) -> Dict[str, Resources]:
    """``resources`` with ``--gpus N`` / ``--gpu-type T`` applied to the Trainer."""
    out = dict(resources)
    trainer = out.get("Trainer", Resources())
    if gpus:
        if trainer.gpus is not None:
            raise InputError("--gpus: the Trainer's GPUs are also set by --resources Trainer=..."
                             "gpu:...; give one of them")
        out["Trainer"] = Resources(trainer.cpu, trainer.memory_gb, int(gpus),
                                   trainer.gpu_type or gpu_type)
    elif gpu_type and trainer.gpus and not trainer.gpu_type:
        out["Trainer"] = Resources(trainer.cpu, trainer.memory_gb, trainer.gpus, gpu_type)
    return out


def apply_resources(pipeline_spec: dict, resources: Dict[str, Resources],
                    platform: str) -> None:
    """Writes each step's resources into its executor's ``container.resources`` (in place).

    ``pipeline_spec``: the compiled PipelineSpec as a dict. InputError for a step that is
    not in the pipeline (the message lists the steps that are).
    """
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    executors = pipeline_spec["deploymentSpec"]["executors"]
    for step, spec in resources.items():
        if step not in tasks:
            raise InputError(f"--resources {step}=...: no step {step} in this pipeline "
                             f"(steps: {', '.join(sorted(tasks))})")
        component = pipeline_spec["components"][tasks[step]["componentRef"]["name"]]
        container = executors[component["executorLabel"]].get("container")
        if container is None:
            raise InputError(f"--resources {step}=...: step {step} runs no container")
        container.setdefault("resources", {}).update(spec.to_ir(DEFAULT_GPU_TYPES[platform]))
