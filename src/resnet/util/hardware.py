"""Where and in what precision the model runs: device choice and autocast.

Shared by training, evaluation, prediction and the benchmark, so that every command
picks the same device and the same precision for the same ``--device``/``--precision``.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import ContextManager

import torch

from resnet.util.distributed import Topology
from resnet.errors import ResnetError

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def select_device(name: str, topology: Topology = Topology()) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. Under torchrun each process takes the GPU
    of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ResnetError("--device cuda: no CUDA GPU is available")
        return torch.device("cuda", topology.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ResnetError("--device mps: MPS is not available")
    if name not in ("cpu", "mps"):
        raise ResnetError(f"--device must be one of auto, cpu, cuda, mps, got {name!r}")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): else bf16 is emulated, and slower."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). ``auto``: fp16 on a CUDA GPU (with the GradScaler),
    bf16 on a CPU that computes it natively (AVX512-BF16/AMX), else fp32.

    fp16 rather than bf16 on CUDA, Ampere and later included: under autocast BatchNorm keeps fp32
    weights, and cuDNN's fused BatchNorm kernels take fp16 activations with them but not bf16
    ones, which fall back to slower native kernels. Reported on an H200 (torch 2.11, resnet34 at
    224 px, channels_last, the model-only step): fp16 11,572 images/s against bf16 8,878 (1.30x);
    timm's --amp-dtype defaults to float16 too. bf16 stays a choice (--precision bf16)."""
    if name == "auto":
        if device.type == "cuda":
            name = "fp16"
        elif device.type == "cpu":
            name = "bf16" if cpu_supports_bf16() else "fp32"
        else:
            name = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> ContextManager:
    """Mixed precision on ``device`` in ``dtype``, or nothing at all for fp32. ``cache=False``
    inside a CUDA graph capture: autocast's cache of cast weights would otherwise hand the
    graph tensors that are freed when the autocast region ends (torch's CUDA graphs notes)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def available_cpus() -> int:
    """The CPUs this process may run on (a container's limit, taskset), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
