"""Checkpoints: what they hold, written atomically, read without running code.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``. ``write_atomic`` is the one way this package writes
a file that another process (or a resumed run) may read: checkpoints, config and
metrics files, and the decoded-image cache.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from resnet.augment import IMAGENET_MEAN, IMAGENET_STD
from resnet.config import TrainConfig
from resnet.errors import ResnetError

# Bump when a checkpoint's layout changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1


# --- writing ------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file in the same folder, flush it to disk, then
    rename it over ``path``: a crash at any moment leaves either the old file or the new
    one, never half, and a concurrent reader never sees a partial file. The temporary
    name is unique (``mkstemp``), so processes on several machines sharing a folder
    cannot collide."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``write_atomic``."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


# --- what a checkpoint holds --------------------------------------------------------------


@dataclass
class RunState:
    """Everything besides the modules that a checkpoint must hold to resume exactly."""

    epoch: int = 0  # the epoch in progress (or the next one, when step == 0)
    step: int = 0  # the next step within that epoch
    loss_sum: float = 0.0  # sum of per-image training loss so far in this epoch
    images_seen: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)  # one metrics row per finished epoch


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def checkpoint_dict(config: TrainConfig, classes: list[str], model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, ema: nn.Module | None, state: RunState) -> dict[str, Any]:
    """A training checkpoint as plain data: loadable with weights_only=True."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": config.arch,
        "config": asdict(config),
        "classes": list(classes),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "image_size": config.resolved_eval_image_size()},
        "model": unwrap(model).state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,  # the average restarts at 0
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
    }


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            ema: nn.Module | None) -> RunState:
    """Load a training checkpoint into the modules; returns where the run stood."""
    checkpoint = load_checkpoint(path)
    absent = [key for key in ("model", "optimizer", "scaler", "state") if key not in checkpoint]
    if absent:
        raise ResnetError(f"{path} is not a training checkpoint of resnet train (it has no {', '.join(absent)})")
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if ema is not None and checkpoint.get("ema") is not None:
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(checkpoint["ema_updates"])
    return RunState(**checkpoint["state"])


# --- reading ------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint (or state_dict) as plain data. A missing, truncated or foreign file, or a
    checkpoint of a newer format than this code knows, is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ResnetError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ResnetError(f"{path} is not a readable checkpoint: it is truncated, corrupt or not a PyTorch file "
                          f"({reason(error)})") from None
    if not isinstance(obj, dict):
        raise ResnetError(f"{path} does not hold a checkpoint or a state_dict")
    check_format(obj, path)
    return obj


def reason(error: BaseException) -> str:
    """The first line of an error when it is short enough to read whole, else its type."""
    lines = str(error).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return first if first and len(first) <= 160 else type(error).__name__


def check_format(checkpoint: dict[str, Any], path: Path) -> None:
    """Checkpoints written before the format field existed have none, and still load."""
    found = checkpoint.get("format")
    if found is None:
        return
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise ResnetError(f"{path} has an invalid checkpoint format {found!r}")
    if found > CHECKPOINT_FORMAT:
        raise ResnetError(f"{path} is a checkpoint of format {found}, newer than this version of resnet reads "
                          f"(format {CHECKPOINT_FORMAT} and older); upgrade resnet to load it")
