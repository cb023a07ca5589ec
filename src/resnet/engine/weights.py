"""Loading weights into our models: torchvision's ImageNet weights, torchvision .pth
files, plain state_dicts, and our own checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet.engine.checkpoint import is_state_dict, load_checkpoint
from resnet.errors import ResnetError
from resnet.words import plural


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's official ImageNet weights for ``arch`` (downloaded and cached by torchvision)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # offline: URLError, socket errors, ...
        raise ResnetError(f"could not download torchvision's ImageNet weights for {arch} ({type(error).__name__}: "
                          f"{str(error)[:120]}); when offline, pass --weights FILE with a saved .pth") from None


def state_dict_from(spec: str, arch: str) -> dict[str, torch.Tensor]:
    """``imagenet``, or a file: a torchvision .pth / plain state_dict, or one of our checkpoints."""
    if spec == "imagenet":
        return imagenet_state_dict(arch)
    if not Path(spec).exists():
        raise ResnetError(f"--weights {spec}: no such file (or use --weights imagenet)")
    obj = load_checkpoint(spec)
    state = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    if not is_state_dict(state):
        raise ResnetError(f"--weights {spec} is neither a state_dict (a dict of named tensors) nor a resnet "
                          "checkpoint")
    return strip_wrapper_prefixes(state)


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Keys without DistributedDataParallel's "module." and torch.compile's "_orig_mod."."""
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def check_state_fits(state: dict[str, Any], own: dict[str, torch.Tensor], what: str, arch: str) -> None:
    """One line naming the first mismatch, instead of load_state_dict's multi-line report."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ResnetError(f"{what} do not fit {arch}: {detail} (a checkpoint of another architecture?)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ResnetError(f"{what}: entry {key!r} is not a tensor")
        if value.shape != own[key].shape:
            hint = ("weights made for the other --stem?" if key == "conv1.weight"
                    else "a checkpoint of another architecture?")
            raise ResnetError(f"{what} do not fit {arch}: tensor {key!r} has shape {tuple(value.shape)}, "
                              f"the model expects {tuple(own[key].shape)} ({hint})")


def load_pretrained(model: nn.Module, spec: str, arch: str) -> list[str]:
    """Load weights into ``model``; a classifier of another size is left freshly initialized.

    Returns the names of the tensors that were not loaded (the head, when re-initialized).
    """
    state = state_dict_from(spec, arch)
    own = model.state_dict()
    skipped = []
    if "fc.weight" in state and "fc.weight" in own and state["fc.weight"].shape != own["fc.weight"].shape:
        warnings.warn(f"the weights' classifier has {plural(state['fc.weight'].shape[0], 'class')} and this model "
                      f"{own['fc.weight'].shape[0]}: the head (fc) is re-initialized", stacklevel=2)
        skipped = ["fc.weight", "fc.bias"]
        state = {k: v for k, v in state.items() if k not in skipped}
        own = {k: v for k, v in own.items() if k not in skipped}
    check_state_fits(state, own, f"--weights {spec}", arch)
    model.load_state_dict(state, strict=False)
    return skipped
