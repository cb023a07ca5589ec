"""MixUp and CutMix on a training batch: ``--mixup``, ``--cutmix``, ``--mix-prob``, ``--mix-switch``.

A batch is mixed after augmentation, on the tensors the step trains on, by torchvision's
``transforms.v2.MixUp`` and ``CutMix`` (each image with the batch's previous one; the labels
become class probabilities). Their draws (the Beta share, CutMix's box) come from the global
RNG; here each mix runs under ``torch.random.fork_rng`` seeded from a generator of
``(seed, epoch, step)``, so that a mix is a function of the step alone (a resumed run mixes as
an uninterrupted one does) and the global RNG is left as it was. That keeps torchvision's
formulas as they are, rather than a copy of them drawing from the generator. The choices of
whether a batch is mixed, and by which, are drawn from that generator directly, in timm's
order: mixed with probability ``mix_prob``, then CutMix with probability ``mix_switch`` when
both are on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from resnet.config import TrainConfig
from resnet.engine.sampling import generator_for

# The last key of a step's mixing generator: its numbers are not the augmentation's, which come
# from (seed, epoch, step) itself, so turning colour jitter on or off does not change the mixes.
MIX_STREAM = -3

Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mix_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of a step's mixing draws."""
    return generator_for(seed, epoch, step, MIX_STREAM)


class BatchMixer:
    """MixUp and/or CutMix of a batch, with the probability that a batch is mixed and, with both,
    the probability that it takes CutMix."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch: float = 0.5) -> None:
        from torchvision.transforms import v2

        self.prob, self.switch = prob, switch
        self.mixup: Mix | None = v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None
        self.cutmix: Mix | None = v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None

    @classmethod
    def from_config(cls, config: TrainConfig, num_classes: int) -> BatchMixer | None:
        """The run's mixer, or None when it mixes nothing."""
        if not mixes(config):
            return None
        return cls(num_classes, config.mixup, config.cutmix, config.mix_prob, config.mix_switch)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, targets)``: a mixed batch with class probabilities (N, C), or the batch and
        its class indices as they came when this one is not mixed."""
        # Three draws every step, whatever they decide, so each keeps its place in the stream.
        mixed, switch = torch.rand(2, generator=generator).tolist()
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        if mixed >= self.prob:
            return images, labels
        mix = self.cutmix if self.mixup is None or (self.cutmix is not None and switch < self.switch) else self.mixup
        with torch.random.fork_rng(devices=[]):  # torchvision draws on the CPU, the batch may be elsewhere
            torch.manual_seed(seed)
            return mix(images, labels)


def mixes(config: TrainConfig) -> bool:
    """Whether a run of ``config`` mixes any batch (its targets are then class probabilities)."""
    return (config.mixup > 0 or config.cutmix > 0) and config.mix_prob > 0
