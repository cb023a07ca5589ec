"""Which training images each step sees: the seeded order of an epoch, the class-balanced
draw of ``--balance sampler``, and the class weights of ``--balance loss``. Every order is a
function of ``(seed, epoch)`` alone, the same on every rank and in a resumed run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from resnet.data.sources import Source
from resnet.words import plural

if TYPE_CHECKING:
    from resnet.config import TrainConfig


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple such as (seed, epoch, step): the same numbers
    whether the run is fresh or resumed, on any device."""
    seed = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches: the same seeded permutation on every rank."""
    order = torch.randperm(n, generator=generator_for(seed, epoch, -1))
    return cut_into_batches(order, batch_size, world_size)


def balanced_epoch_batches(labels: torch.Tensor, batch_size: int, seed: int, epoch: int,
                           world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches under ``--balance sampler``: as many draws as there are training
    images, each a class chosen uniformly among those that have images, then one of its images
    uniformly (with replacement), so every class is equally likely at every draw. The epoch keeps
    its length, hence its steps and the schedule; like ``epoch_batches`` it is a function of
    (seed, epoch) alone, the same on every rank and in a resumed run."""
    generator = generator_for(seed, epoch, -2)
    counts = torch.bincount(labels)
    present = counts.nonzero().flatten()
    by_class = torch.argsort(labels, stable=True)  # each class's images side by side
    starts = counts.cumsum(0) - counts
    n = len(labels)
    classes = present[torch.randint(len(present), (n,), generator=generator)]
    within = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[classes]).long()
    within = torch.minimum(within, counts[classes] - 1)  # a product that rounded up to the count
    return cut_into_batches(by_class[starts[classes] + within], batch_size, world_size)


def run_epoch_batches(config: TrainConfig, train_labels: torch.Tensor, epoch: int,
                      world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches as a run orders them: class-balanced under ``--balance sampler``,
    else a seeded permutation of the training images."""
    if config.balance == "sampler":
        return balanced_epoch_batches(train_labels, config.batch_size, config.seed, epoch, world_size)
    return epoch_batches(len(train_labels), config.batch_size, config.seed, epoch, world_size)


def cut_into_batches(order: torch.Tensor, batch_size: int, world_size: int) -> list[torch.Tensor]:
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # A final batch too small to give every rank two images is dropped: BatchNorm cannot
    # normalize a single sample.
    if len(batches[-1]) < 2 * world_size:
        batches = batches[:-1] or batches
    return batches


# --- class imbalance -------------------------------------------------------------------


def labels_tensor(source: Source) -> torch.Tensor:
    return torch.as_tensor(np.asarray(source.labels, dtype=np.int64))


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """``--balance loss``: w_c = N / (C n_c) for the C classes with training images (n_c of the
    N), 0 for a class without. Every class then weighs N / C in an epoch, as in a balanced set,
    and the mean weight of a training image is 1: the loss keeps its scale, and the lr its meaning."""
    counts = counts.double()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def format_ratio(ratio: float) -> str:
    return f"{ratio:.1f}".removesuffix(".0")


def class_count_line(counts: list[int], balance: str) -> str:
    """The training split's classes in brief: the smallest and largest class and their ratio."""
    present = [n for n in counts if n]
    smallest, largest = min(present), max(present)
    line = f"classes: {len(counts)}, " + (f"{plural(largest, 'training image', ',')} each" if smallest == largest else
                                          f"training images per class {smallest:,} to {largest:,} "
                                          f"(ratio {format_ratio(largest / smallest)}:1)")
    if len(present) < len(counts):
        line += f", {len(counts) - len(present)} without any"
    if balance == "loss":
        weights = class_weights(torch.tensor(counts))
        line += f"; --balance loss: class weights {weights[weights > 0].min():.3g} to {weights.max():.3g}"
    elif balance == "sampler":
        line += f"; --balance sampler: each class drawn 1/{len(present)} of the time"
    return line


def imbalance_ratio(counts: list[int]) -> float:
    present = [n for n in counts if n]
    return max(present) / min(present)
