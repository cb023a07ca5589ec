"""The model a run trains and its optimizer step, apart from the loop: shared by training,
``resnet bench`` and the learning-rate finder, which step the same model the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from resnet.config import TrainConfig
from resnet.errors import ResnetError
from resnet.util.hardware import autocast
from resnet.models.resnet import STEM_STRIDES, ResNet, get_model
from resnet.engine.weights import load_pretrained


# --- the model ------------------------------------------------------------------------


def build_model(config: TrainConfig, num_classes: int) -> ResNet:
    model = get_model(config.arch, num_classes=num_classes, zero_init_residual=config.zero_init_residual,
                      stem=config.stem)
    if config.weights:
        load_pretrained(model, config.weights, config.arch)
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("fc."))
    return model


# --- one training step (shared with ``resnet bench``) -----------------------------------


@dataclass
class TrainStep:
    """One optimizer step: forward under autocast, cross-entropy, backward (through a
    GradScaler, which is active for fp16 only), update. Returns the detached loss."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    label_smoothing: float = 0.0
    scaler: torch.amp.GradScaler | None = field(default=None)
    class_weights: torch.Tensor | None = None  # per class, on the device (--balance loss)

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        return self.update(images, labels)

    def update(self, images: torch.Tensor, labels: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """The step on a batch already on the device: what a CUDA graph captures (``cache``:
        autocast's weight-cast cache, off under capture; ``resnet.engine.graphs``)."""
        with autocast(self.device, self.dtype, cache):
            loss = self.loss(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices (N,) or class probabilities (N, C), as MixUp and
        CutMix give them; label smoothing mixes either with the uniform distribution alike."""
        if self.class_weights is None:
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        # Each image's loss (its label smoothing included) times its class's weight, averaged over
        # the batch. Not cross_entropy's weight=: its mean divides by the batch's sum of weights,
        # so a batch of one class would weigh what any other does; and under DDP each process's
        # mean over its equal share keeps the average of the gradients the whole batch's.
        losses = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
        return (losses * self.image_weights(labels)).mean()

    def image_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Each image's class weight; a mixed image's is its classes' weights in its label's
        proportions (a product and a sum, not a matmul, which autocast would take to bf16)."""
        if labels.is_floating_point():
            return (labels.float() * self.class_weights).sum(1)
        return self.class_weights[labels]


# --- whether BatchNorm can train ---------------------------------------------------------


def check_batchnorm_can_train(config: TrainConfig, batches: list[torch.Tensor], train_images: int,
                              world_size: int = 1) -> None:
    """BatchNorm normalizes each channel over a step's images and positions: layer4's map
    (1x1 at 32 px) times the fewest images a rank gets in a step must give it two values."""
    if config.freeze_backbone:  # the backbone's BatchNorm layers keep their statistics
        return
    images = min(len(batch) for batch in batches) // world_size
    size = min(config.image_size_at(epoch) for epoch in range(config.epochs))
    side = math.ceil(size / (8 * STEM_STRIDES[config.stem]))  # the network's stride
    if images * side * side >= 2:
        return
    if train_images == 1:
        raise ResnetError(f"the training split has a single image: at {size} px layer4's map is 1x1, so "
                          "BatchNorm would get one value per channel, which it cannot normalize; add images")
    per = f" per process ({world_size} processes)" if world_size > 1 else ""
    raise ResnetError(f"--batch-size {config.batch_size} gives {images} image{per} a step: at {size} px layer4's "
                      "map is 1x1, so BatchNorm would get one value per channel, which it cannot normalize; "
                      f"use --batch-size {2 * world_size} or more, or crops above 32 px")
