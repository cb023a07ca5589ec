"""Checkpoints: what they hold, written atomically, read without running code.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``. ``write_atomic`` is the one way this package writes
a file that another process (or a resumed run) may read: checkpoints, config and
metrics files, and the decoded-image cache.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet.data.augment import IMAGENET_MEAN, IMAGENET_STD
from resnet.config import TrainConfig
from resnet.errors import ResnetError
from resnet.config import MAX_IMAGE_SIZE, check_types

# Bump when a checkpoint's layout changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1


# --- writing ------------------------------------------------------------------------


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
    load_optimizer_state(optimizer, checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if ema is not None and checkpoint.get("ema") is not None:
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(checkpoint["ema_updates"])
    return RunState(**checkpoint["state"])


# How an optimizer's update runs, not what it computes: the resumed run's own (a run saved on a CPU
# or without CUDA graphs may resume on a GPU with them), where load_state_dict would take the saved.
HOW_UPDATES_RUN = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``saved`` into ``optimizer``, keeping the optimizer's own ``HOW_UPDATES_RUN`` settings; a
    fused or capturable update keeps its step counts on the parameters' device, as it requires."""
    own = [{key: group[key] for key in HOW_UPDATES_RUN if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)
        if not (group.get("fused") or group.get("capturable")):
            continue
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(parameter.device, torch.float32)


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
        why = first_line_or_type(error) if isinstance(error, FILE_ERRORS) else type(error).__name__
        raise ResnetError(f"{path} is not a readable checkpoint: it is truncated, corrupt or not a PyTorch file "
                          f"({why})") from None
    if not isinstance(obj, dict):
        raise ResnetError(f"{path} does not hold a checkpoint or a state_dict")
    check_format(obj, path)
    return obj


FILE_ERRORS = (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError)


def first_line_or_type(error: BaseException) -> str:
    """The first line of an error when it is short enough to read whole, else its type: torch's
    message about a file it cannot load (check.py's ``strerror_or_text`` is for Pillow's and the
    system's, whose text is the reason whole)."""
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
