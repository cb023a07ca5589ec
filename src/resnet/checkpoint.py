"""Checkpoints: what they hold, written atomically, read without running code.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``. ``write_atomic`` is the one way this package writes
a file that another process (or a resumed run) may read: checkpoints, config and
metrics files, and the decoded-image cache.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import secrets
import shutil
import stat
import warnings
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
    name is unique (random, created exclusively), so processes on several machines sharing
    a folder cannot collide. The file gets the mode ``open()`` would give it: the old
    file's, else 0o666 less the umask. A full disk is a ``DiskFull`` error (``needed``:
    the bytes it would have taken, when known)."""
    path = Path(path)
    temporary = None
    try:
        descriptor, temporary = create_temporary(path)
        with os.fdopen(descriptor, "wb") as f:
            keep_mode(temporary, path)
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


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, open for writing, under a random name no other process
    holds. ``tempfile.mkstemp`` would make it 0o600, and with it every run file private
    whatever the umask; ``open()`` creates 0o666 less the umask, and so does this."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return descriptor, temporary


def keep_mode(temporary: Path, path: Path) -> None:
    """The mode of the file ``temporary`` will replace, as ``open()`` keeps it when it truncates
    a file (a run a user has made private, or shared with a group, stays so)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)


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
        with warnings.catch_warnings():
            # torch's notes on what it found in a foreign file (a pickle protocol it does not
            # expect) say nothing the error below does not.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # foreign bytes make torch's reader fail in many ways (IndexError, KeyError, ...)
        # Only torch's own errors describe the file; the others' text is an internal detail ("101").
        why = reason(error) if isinstance(error, FILE_ERRORS) else type(error).__name__
        raise ResnetError(f"{path} is not a readable checkpoint: it is truncated, corrupt or not a PyTorch file "
                          f"({why})") from None
    if not isinstance(obj, dict):
        raise ResnetError(f"{path} does not hold a checkpoint or a state_dict")
    check_format(obj, path)
    return obj


FILE_ERRORS = (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError)


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


# --- what using a model reads ------------------------------------------------------------------


def not_a_checkpoint(path: str | os.PathLike, why: str) -> ResnetError:
    return ResnetError(f"{path} is not a resnet checkpoint ({why})")


def check_model_entries(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """The entries that loading a model reads, of the types ``resnet train`` writes: a foreign or
    hand-edited file is then one line saying what is wrong with it, not an exception from deep
    inside eval, predict, export or calibrate."""
    absent = [key for key in ("arch", "classes", "model") if key not in checkpoint]
    if absent:
        raise not_a_checkpoint(path, f"it has no {', '.join(absent)}")
    if not isinstance(checkpoint["arch"], str):
        raise not_a_checkpoint(path, "its arch is not a name")
    classes = checkpoint["classes"]
    if not isinstance(classes, (list, tuple)) or not all(isinstance(name, str) for name in classes):
        raise not_a_checkpoint(path, "its classes are not a list of names")
    if not classes:
        raise not_a_checkpoint(path, "its class list is empty")
    for key in ("model", "ema"):
        state = checkpoint.get(key)
        if (key == "model" or state is not None) and not is_state_dict(state):
            raise not_a_checkpoint(path, f"its {key} entry is not a state_dict")
    check_config_entry(checkpoint.get("config"), path)
    check_normalization_entry(checkpoint.get("normalization"), path)


def is_state_dict(obj: Any) -> bool:
    """A dict of named tensors (``load_state_dict`` takes nothing else)."""
    return isinstance(obj, dict) and all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                         for key, value in obj.items())


def check_config_entry(config: Any, path: str | os.PathLike) -> None:
    """The run's options, as ``config.json`` holds them (None: a checkpoint without them, which
    loads with the defaults)."""
    from resnet.config import check_types

    if config is None:
        return
    if not isinstance(config, dict):
        raise not_a_checkpoint(path, "its config is not a dict of options")
    try:
        check_types(TrainConfig.from_dict(config))
    except ResnetError as error:
        raise not_a_checkpoint(path, f"in its config, {error}") from None


def check_normalization_entry(normalization: Any, path: str | os.PathLike) -> None:
    """Mean and std of three channels, std positive, and an input size that can be evaluated
    (each may be absent: the ImageNet statistics and the config's size stand in)."""
    from resnet.config import MAX_IMAGE_SIZE

    if normalization is None:
        return
    if not isinstance(normalization, dict):
        raise not_a_checkpoint(path, "its normalization is not a dict")
    for key in ("mean", "std"):
        values = normalization.get(key)
        if values is not None and not (isinstance(values, (list, tuple)) and len(values) == 3
                                       and all(is_number(v) and math.isfinite(v) for v in values)):
            raise not_a_checkpoint(path, f"its normalization {key} is not three finite numbers")
    if any(v <= 0 for v in normalization.get("std") or ()):
        raise not_a_checkpoint(path, f"its normalization std {normalization['std']!r} is not positive")
    size = normalization.get("image_size")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and 32 <= size <= MAX_IMAGE_SIZE):
        raise not_a_checkpoint(path, f"its input size {size!r} is not a whole number of pixels from 32 to "
                                     f"{MAX_IMAGE_SIZE}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
