"""The assembly of a training run, in one place.

A run, the learning-rate finder, ``resnet bench`` and the Python API build what they step from
here: the config that a run's options and images resolve to (``train_config``), the model with
its optimizer, scaler and weight average (``build_parts``), the step around them
(``training_step``) and the batches that feed it (``TrainInputs``). None of them keeps a copy,
so a range test or a benchmark steps the model a run would train, the way it would train it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet.data import augment
from resnet.config import (
    SMALL_IMAGE_RECIPE,
    SMALL_IMAGE_SIDE,
    TrainConfig,
    absolute,
    resolve_config,
    resume_config,
    wants_image_defaults,
)
from resnet.data.sources import classic_loader
from resnet.data.datasets import sample_image_files, typical_shorter_side
from resnet.util.distributed import Topology, shard
from resnet.errors import ResnetError
from resnet.util.hardware import select_device
from resnet.engine.graphs import GraphedStep, uses_cuda_graphs
from resnet.engine.mixing import BatchMixer, mix_generator, mixes
from resnet.engine.optim import build_optimizer
from resnet.data.pipeline import FastTrainBatches, RunData, augment_spec
from resnet.engine.sampling import class_weights, generator_for
from resnet.engine.step import TrainStep, build_model
from resnet.words import plural

# --- the config --------------------------------------------------------------------------------


def train_config(overrides: dict[str, Any], resume: str | os.PathLike | None = None) -> TrainConfig:
    """The config of ``resnet train`` and ``resnet.train``: with ``resume``, that run's saved one
    with the options that may change; else one resolved from ``overrides`` (None: not given) and,
    when they leave the size and the stem to the images, the images' typical size; small images
    get the small-image defaults, said in a line, since they change the model and the recipe."""
    if resume is not None:
        return resume_config(Path(resume), overrides)
    side = images_side(overrides)
    if side is None or side > SMALL_IMAGE_SIDE:
        return resolve_config(overrides, side)
    device_type = select_device(overrides.get("device") or TrainConfig.device).type
    config = resolve_config(overrides, side, device_type)
    print(f"images of about {side} px on the shorter side: {describe_small_image_choice(config, device_type)} "
          f"(--image-size or --stem chooses otherwise)")
    return config


def describe_small_image_choice(config: TrainConfig, device_type: str) -> str:
    """What the small-image defaults chose, as said before a run: for a CPU, also the GPU's choice."""
    chose = (f"{config.arch} with the {config.stem} stem at {config.image_size} px, pad-and-crop "
             f"{config.crop_padding} px, {plural(config.epochs, 'epoch')}")
    if device_type != "cpu":
        return chose
    gpu = SMALL_IMAGE_RECIPE
    return f"on a CPU, {chose} (with a GPU: {gpu['arch']}, the {gpu['stem']} stem, {gpu['epochs']} epochs)"


def images_side(overrides: dict[str, Any]) -> int | None:
    """The typical shorter side of a fresh run's images, when its options leave the size and the
    stem to them."""
    labels = overrides.get("labels")
    data_dir = overrides.get("data_dir") or (os.path.dirname(absolute(labels)) if labels else None)
    if not wants_image_defaults(overrides) or not data_dir:
        return None
    sample = sample_image_files(os.path.expanduser(data_dir), labels)
    return typical_shorter_side(sample)


# --- the model and what steps it ------------------------------------------------------------------


@dataclass
class Parts:
    """What a run trains: the model (on its device, in its memory format), its optimizer, the
    fp16 GradScaler (inactive at other precisions) and the optional weight average (EMA)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    memory_format: torch.memory_format


def build_parts(config: TrainConfig, num_classes: int, device: torch.device, dtype: torch.dtype | None,
                topology: Topology = Topology(), fused: bool = True) -> Parts:
    """The model (seeded: every caller starts from the same weights), its optimizer, scaler and
    EMA. ``fused``: the fused optimizer update where the device has one (the tutorial's
    per-tensor loop otherwise, which ``resnet bench`` measures); a step that will be a CUDA
    graph gets AdamW's capturable form."""
    torch.manual_seed(config.seed)  # the initial weights
    model = build_model(config, num_classes)
    if config.sync_bn and topology.enabled:
        if device.type != "cuda":
            raise ResnetError("--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config, model, fused=fused,
                                capturable=fused and uses_cuda_graphs(config, device, topology))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = None
    if config.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    return Parts(model, optimizer, scaler, ema, memory_format)


def training_step(config: TrainConfig, parts: Parts, device: torch.device, dtype: torch.dtype | None,
                  class_counts: torch.Tensor | None = None, topology: Topology = Topology()
                  ) -> TrainStep | GraphedStep:
    """The optimizer step of ``parts``: the model under DDP (with torchrun) and torch.compile
    (``--compile``), the loss with ``--balance loss``'s class weights from ``class_counts``, the
    whole step a CUDA graph where ``--cuda-graphs`` resolves to on (``resnet.engine.graphs``)."""
    train_model: nn.Module = parts.model
    if topology.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    weights = None
    if config.balance == "loss" and class_counts is not None:
        weights = class_weights(class_counts).to(device)
    step = TrainStep(train_model, parts.optimizer, device, dtype, parts.memory_format, config.label_smoothing,
                     parts.scaler, weights)
    if not uses_cuda_graphs(config, device, topology):
        return step
    if not parts.optimizer.defaults.get("fused"):  # the per-tensor update reads the lr on the host
        if config.cuda_graphs == "on":
            raise ResnetError("--cuda-graphs on needs the fused optimizer update")
        return step
    return GraphedStep(step, parts.model.num_classes if mixes(config) else None)


# --- the batches -------------------------------------------------------------------------------


class TrainInputs:
    """A run's training batches from either pipeline: the fast one's decoded cache augmented
    on the device, or the classic one's DataLoader; then MixUp or CutMix when the run mixes.
    All randomness comes from (seed, epoch, step), so a resumed epoch repeats an uninterrupted one."""

    def __init__(self, config: TrainConfig, data: RunData, device: torch.device,
                 topology: Topology = Topology()) -> None:
        self.config, self.topology = config, topology
        self.source = data.splits.train
        self.fast = FastTrainBatches(data.train, config, device) if data.train is not None else None
        self.mixer = BatchMixer.from_config(config, len(data.splits.classes))

    def epoch(self, epoch: int, batches: list[torch.Tensor], first: int = 0, size: int | None = None
              ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(step, images, labels)`` of ``epoch`` from step ``first`` on, at crop ``size``
        (default: the epoch's own)."""
        config = self.config
        size = size or config.image_size_at(epoch)
        if self.fast is not None:
            generators = (generator_for(config.seed, epoch, step) for step in range(first, len(batches)))
            inputs = self.fast.epoch(batches[first:], generators, size, self.topology)
        else:
            transform = augment.classic_train_transform(augment_spec(config), size)
            local = [shard(b, self.topology) for b in batches[first:]]
            inputs = iter(classic_loader(self.source, local, transform, config.workers, config.seed * 1000 + epoch))
        try:
            for step, (images, labels) in enumerate(inputs, start=first):
                yield step, images, labels
        finally:
            if hasattr(inputs, "close"):
                inputs.close()  # the fast pipeline's prefetching thread

    def mixed(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's images and targets: MixUp or CutMix of the batch (targets: class
        probabilities) when the run mixes and this step's draw says so, else the batch as it came."""
        if self.mixer is None:
            return images, labels
        return self.mixer(images, labels, mix_generator(self.config.seed, epoch, step))
