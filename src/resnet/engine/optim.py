"""The optimizer and its learning rate: weight-decay groups, fine-tuning's head and backbone,
warmup and the schedule, each a function of the config and the step, so that training, a
resumed run and anything else that steps an optimizer (a learning-rate search) agree."""

from __future__ import annotations

import math

import torch
from torch import nn

from resnet.config import TrainConfig


def is_head(parameter_name: str) -> bool:
    return parameter_name.startswith("fc.")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Backbone and head, each split for weight decay: decay on conv and linear weights
    only, since decaying BatchNorm scales and biases only fights the normalization."""
    groups = {(head, decays): [] for head in (False, True) for decays in (True, False)}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[(is_head(name), parameter.ndim > 1)].append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "head": head}
            for (head, decays), params in groups.items() if params]


def build_optimizer(config: TrainConfig, model: nn.Module, fused: bool = True,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over ``parameter_groups``; ``fused``: one fused kernel per update where the
    device has one, instead of several passes over every weight (False: the per-tensor loop).
    ``capturable``: AdamW keeps its step count on the device, as a CUDA graph capture of its
    update requires (SGD keeps no count, and torch gives it no such flag)."""
    groups = parameter_groups(model, config.weight_decay)
    fused = fused and has_fused_optimizer(next(model.parameters()).device)
    if config.optimizer == "adamw":
        # AdamW's decay is decoupled (scaled by the lr, not by the gradient statistics).
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused, capturable=capturable)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0, fused=fused)


def has_fused_optimizer(device: torch.device) -> bool:
    """Whether torch (>= 2.4) has fused SGD and AdamW kernels there; elsewhere the default loop runs."""
    return device.type in ("cpu", "cuda")


def group_learning_rate(config: TrainConfig, lr: float, head: bool, epoch: int) -> float:
    """fastai's fine_tune: with pretrained weights the head trains alone first, then the
    backbone joins at a lower learning rate, so a random head cannot wreck its features."""
    if head:
        return lr
    if epoch < config.resolved_head_epochs():
        return 0.0
    return lr * config.resolved_backbone_lr_scale()


def freeze_backbone_batchnorm(model: nn.Module) -> None:
    """A frozen backbone keeps its BatchNorm statistics too: eval mode for every BN outside the head."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head(name + "."):
            module.eval()


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> float:
    """The warm-up's length in steps: ``warmup_epochs`` of them, but at most half the run under a
    cosine schedule, so that a run shorter than its warm-up still decays to zero."""
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "cosine":
        warmup = min(warmup, config.epochs * steps_per_epoch / 2)
    return warmup


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warmup from ~0 to the peak ``lr``, then cosine to 0 at the run's end (or constant),
    as a function of the global step. The rate never exceeds the peak, also when the warm-up
    is not a whole number of steps."""
    warmup = warmup_steps(config, steps_per_epoch)
    if step < warmup:
        return config.lr * min(1.0, (step + 1) / warmup)
    if config.schedule == "constant":
        return config.lr
    total = config.epochs * steps_per_epoch
    progress = min(1.0, max(0.0, (step - warmup) / (total - warmup)))  # warmup < total: capped
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
