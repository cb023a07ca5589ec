"""Checkpoints: what they hold, written atomically, read without running code.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``. ``write_atomic`` is the one way this package writes
a file that another process (or a resumed run) may read: checkpoints, config and
metrics files, and the decoded-image cache.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
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


class DiskFull(ResnetError):
    """A write that the disk had no room for; the file it would have replaced is intact."""

    def __init__(self, path: Path, needed: int | None = None) -> None:
        free = free_bytes(path.parent)
        sizes = [f"it needs {byte_size(needed)}" if needed is not None else "",
                 f"{byte_size(free)} free" if free is not None else ""]
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        super().__init__(f"no space left on the device to write {path} ({', '.join(s for s in sizes if s)}){kept}")


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def byte_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], needed: int | None = None) -> None:
    """Call ``write(file)`` on a temporary file in the same folder, flush it to disk, then
    rename it over ``path``: a crash at any moment leaves either the old file or the new
    one, never half, and a concurrent reader never sees a partial file. The temporary
    name is unique (``mkstemp``), so processes on several machines sharing a folder
    cannot collide. A full disk is a ``DiskFull`` error (``needed``: the bytes it would
    have taken, when known)."""
    path = Path(path)
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(descriptor, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise DiskFull(path, needed) from None
        raise
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``write_atomic``. The object is serialized in memory first:
    its size is then known, so a disk without room for it is refused before a byte is
    written (torch's own writer reports a full disk as an opaque RuntimeError)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    needed = buffer.getbuffer().nbytes
    free = free_bytes(path.parent)
    if free is not None and free < needed:
        raise DiskFull(path, needed)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), needed)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    data = text.encode()
    write_atomic(path, lambda f: f.write(data), len(data))


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


def restore(checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, ema: nn.Module | None) -> RunState:
    """Load a training checkpoint (``load_resume_checkpoint``) into the modules; returns where the run stood."""
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if ema is not None and checkpoint.get("ema") is not None:
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(checkpoint["ema_updates"])
    return RunState(**checkpoint["state"])


def load_resume_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/last.pt`` as a training checkpoint, or None when the run has none yet. An
    unreadable one is an error that says whether ``best.pt`` could take its place."""
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    try:
        checkpoint = load_checkpoint(path)
        absent = [key for key in ("model", "optimizer", "scaler", "state") if key not in checkpoint]
        if absent:
            raise ResnetError(f"{path} is not a training checkpoint of resnet train (it has no {', '.join(absent)})")
    except ResnetError as error:
        raise ResnetError(f"{error}{best_instead(run_dir)}") from None
    return checkpoint


def best_instead(run_dir: Path) -> str:
    """A hint for a run whose last.pt is lost: best.pt, when readable, resumes from its epoch."""
    best = run_dir / "best.pt"
    try:
        epoch = load_checkpoint(best)["state"]["epoch"]
    except (ResnetError, KeyError, TypeError):
        return ""
    return (f". {best} is intact (saved after epoch {epoch}): copy it over last.pt to resume from there "
            f"(cp {best} {run_dir / 'last.pt'})")


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
