"""The learning-rate range test (Smith, 2017, "Cyclical learning rates for training neural
networks"), as fastai's ``lr_find`` runs it.

The run's model, from the initial weights a run of the same config starts from, trains with the
run's step (``resnet.engine.step.TrainStep``), optimizer and data (its batches and augmentation, epoch
after epoch as long as the test needs them) while the learning rate grows exponentially from
``start_lr`` to ``end_lr``, one step at a time. The loss is smoothed as fastai does (an
exponential moving average, beta 0.98, with bias correction), and the test stops once the
smoothed loss is over 4 times the lowest seen (it diverged) or is not finite. The suggestion is
read off the smoothed curve by fastai's default rule, 'valley'. The model and its optimizer are
thrown away after: the test writes no run directory.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from resnet.engine.assembly import TrainInputs, build_parts, training_step
from resnet.config import TrainConfig
from resnet.data.sources import DataSplits
from resnet.data.datasets import load_splits
from resnet.util.distributed import Topology
from resnet.errors import ResnetError
from resnet.util.hardware import select_device, select_precision
from resnet.engine.optim import freeze_backbone_batchnorm, group_learning_rate
from resnet.data.pipeline import RunData, load_run_data
from resnet.util.progress import progress_bar
from resnet.engine.sampling import labels_tensor, run_epoch_batches
from resnet.engine.graphs import GraphedStep, uses_cuda_graphs
from resnet.engine.step import TrainStep, check_batchnorm_can_train
from resnet.words import plural
from resnet.util.files import write_text_atomic

START_LR, END_LR, STEPS = 1e-7, 10.0, 100  # fastai's defaults
BETA = 0.98  # the smoothing of fastai's Recorder
DIVERGED = 4.0  # fastai's stop_div: the smoothed loss over 4 times the lowest
PLOT, POINTS = "lr_find.png", "lr_find.csv"


@dataclass
class RangeTest:
    """What the test recorded, a point a step, and why it ended early (None: it ran every step)."""

    steps: int  # the steps asked for
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None


@dataclass
class Suggestion:
    lr: float
    rule: str
    index: int  # the point of the curve the lr is read at
    flat: bool = False  # the loss hardly changed over the whole range


def lr_text(lr: float) -> str:
    """An lr as printed: three significant digits where they say it exactly."""
    short = f"{lr:.3g}"
    return short if float(short) == lr else repr(lr)


def check_range(steps: int, start_lr: float, end_lr: float) -> None:
    if steps < 2:
        raise ResnetError(f"--steps must be at least 2 (a range needs two learning rates), got {steps}")
    for name, value in (("--start-lr", start_lr), ("--end-lr", end_lr)):
        if not math.isfinite(value) or value <= 0:
            raise ResnetError(f"{name} must be a positive number, got {value}")
    if end_lr <= start_lr:
        raise ResnetError(f"--end-lr must be above --start-lr ({start_lr:g}), got {end_lr:g}")


def lr_schedule(steps: int, start_lr: float, end_lr: float) -> list[float]:
    """``steps`` learning rates growing exponentially from ``start_lr`` to ``end_lr``, both included."""
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


# --- the test ------------------------------------------------------------------------------


def find_lr(config: TrainConfig, steps: int = STEPS, start_lr: float = START_LR, end_lr: float = END_LR,
            progress: bool = True, check_stop: Callable[[], None] | None = None) -> tuple[RangeTest, Suggestion]:
    """Run the range test of ``config``'s training and suggest an lr (always one in the range)."""
    check_range(steps, start_lr, end_lr)
    device = select_device(config.device)
    dtype = select_precision(config.precision, device)
    uses_cuda_graphs(config, device)  # --cuda-graphs on without CUDA: an error before the decode
    splits = load_splits(config.dataset, config.data_dir, config.split, config.val_fraction, config.seed,
                         labels=config.labels)
    data = load_run_data(splits, config, Topology(), check_stop=check_stop)
    check_batchnorm_can_train(config, run_epoch_batches(config, labels_tensor(data.splits.train), 0),
                              len(data.splits.train))
    step = range_test_step(config, data.splits, device, dtype)
    inputs = training_inputs(config, data, device)
    try:
        test = range_test(step, config, inputs, lr_schedule(steps, start_lr, end_lr), progress)
    finally:
        inputs.close()
    del step, inputs  # the model and the optimizer state: nothing of them is kept
    if device.type == "cuda":
        torch.cuda.empty_cache()  # for the run that may follow in this process
    return test, suggest(test)


def range_test_step(config: TrainConfig, splits: DataSplits, device: torch.device,
                    dtype: torch.dtype | None) -> TrainStep | GraphedStep:
    """The step a run of ``config`` trains with (the same model, seeded alike), in training mode."""
    parts = build_parts(config, len(splits.classes), device, dtype)
    parts.model.train()
    if config.freeze_backbone:
        freeze_backbone_batchnorm(parts.model)
    counts = torch.bincount(labels_tensor(splits.train), minlength=len(splits.classes))
    return training_step(config, parts, device, dtype, counts)


def training_inputs(config: TrainConfig, data: RunData, device: torch.device
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The run's training batches, as its first epoch makes them (crop size, order, augmentation,
    MixUp or CutMix), epoch after epoch for as long as they are asked for."""
    inputs = TrainInputs(config, data, device)
    train_labels = labels_tensor(data.splits.train)
    for epoch in itertools.count():
        batches = run_epoch_batches(config, train_labels, epoch)
        for step, images, labels in inputs.epoch(epoch, batches, size=config.image_size_at(0)):
            yield inputs.mixed(images, labels, epoch, step)


def range_test(step: TrainStep | GraphedStep, config: TrainConfig, inputs: Iterator[tuple[torch.Tensor, torch.Tensor]],
               lrs: list[float], progress: bool = True) -> RangeTest:
    """A step at each lr of ``lrs``, until the smoothed loss diverges or is not finite."""
    test, average, lowest = RangeTest(len(lrs)), 0.0, math.inf
    bar = progress_bar(len(lrs), "lr-find", wanted=progress)
    for i, (lr, (images, labels)) in enumerate(zip(lrs, inputs)):
        for group in step.optimizer.param_groups:  # as a run's first epoch sets them (a head trained alone)
            group["lr"] = group_learning_rate(config, lr, group["head"], 0)
        loss = step(images, labels).item()  # a sync with the device each step: the test must see each loss
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA ** (i + 1))  # the average's bias towards its start at 0, removed
        test.lrs.append(lr)
        test.losses.append(loss)
        test.smoothed.append(smoothed)
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.2g}", loss=f"{smoothed:.3f}")
        where = f"stopped at step {i + 1} of {len(lrs)} (lr {lr:.3g})"
        if not math.isfinite(smoothed):
            test.stopped = f"{where}: the loss became {loss}"
            break
        if smoothed > DIVERGED * lowest:
            test.stopped = (f"{where}: the smoothed loss {smoothed:.4g} is over {DIVERGED:g} times the lowest, "
                            f"{lowest:.4g} (diverged)")
            break
        lowest = min(lowest, smoothed)
    bar.close()
    return test


# --- the suggestion ------------------------------------------------------------------------


def suggest(test: RangeTest) -> Suggestion:
    """fastai's 'valley': about the middle of the longest stretch over which the smoothed loss
    keeps falling (its longest decreasing subsequence, which a noisy curve's bumps do not break),
    read off the curve less its first tenth and its last few points, as fastai's lr_find reads
    it. A curve that never falls has no valley: the minimum/10 rule then, within the range."""
    usable = len(test.smoothed) - (test.stopped is not None)  # less the point that stopped the test
    if usable < 1:
        raise ResnetError(f"the range test's first step gave a loss of {test.losses[0]} at lr {test.lrs[0]:.3g}, "
                          "before the learning rate could matter: check the data and options such as --precision")
    first, last = usable // 10, usable - min(5, usable // 10)
    losses = np.asarray(test.smoothed[first:last])
    flat = test.stopped is None and bool(np.ptp(losses) <= 0.01 * np.abs(losses).max())
    start, end = longest_valley(losses)
    if end > start:
        span = end - start
        index = first + start + int(span / 3) + int(span / 6)  # fastai's point in its valley
        return Suggestion(rounded(test.lrs[index], test.lrs), "valley", index, flat)
    index = first + int(np.argmin(losses))
    return Suggestion(rounded(max(test.lrs[index] / 10, test.lrs[0]), test.lrs),
                      "minimum/10, as the loss never fell (no valley)", index, flat)


def longest_valley(losses: np.ndarray) -> tuple[int, int]:
    """The first and last index of the longest strictly decreasing subsequence (the first one of
    the longest, as fastai's quadratic search finds it)."""
    length, first = np.ones(len(losses), dtype=int), np.arange(len(losses))
    for i in range(1, len(losses)):
        higher = np.flatnonzero(losses[:i] > losses[i])
        if len(higher):
            j = higher[np.argmax(length[higher])]
            length[i], first[i] = length[j] + 1, first[j]
    end = int(np.argmax(length))
    return int(first[end]), end


def rounded(lr: float, lrs: list[float]) -> float:
    """``lr`` to three significant digits (what is printed is what trains), unless that leaves the range."""
    short = float(f"{lr:.3g}")
    return short if lrs[0] <= short <= lrs[-1] else lr


# --- what it writes ------------------------------------------------------------------------


def suggestion_line(suggestion: Suggestion) -> str:
    return f"suggested lr: {lr_text(suggestion.lr)} (rule: {suggestion.rule})"


def flat_line(test: RangeTest) -> str:
    return (f"the smoothed loss changed by under 1% from lr {test.lrs[0]:.3g} to {test.lrs[-1]:.3g}: the range "
            "may be too narrow (--start-lr, --end-lr) or the test too short (--steps)")


def write_points(test: RangeTest, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("step", "lr", "loss", "smoothed_loss"))
    writer.writerows((i + 1, repr(lr), repr(loss), repr(smoothed))
                     for i, (lr, loss, smoothed) in enumerate(zip(test.lrs, test.losses, test.smoothed)))
    write_text_atomic(path, buffer.getvalue())


def plot_range_test(test: RangeTest, suggestion: Suggestion, path: Path, title: str = "") -> None:
    """The smoothed loss against the lr (log scale), the suggestion marked."""
    from resnet.util.plots import save_figure

    import matplotlib.pyplot as plt  # headless: resnet.util.plots chose the Agg backend

    points = [(lr, loss) for lr, loss in zip(test.lrs, test.smoothed) if math.isfinite(loss)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([lr for lr, _ in points], [loss for _, loss in points], label="smoothed training loss")
    ax.axvline(suggestion.lr, color="tab:red", linestyle="--", linewidth=1,
               label=f"suggested lr {lr_text(suggestion.lr)} ({suggestion.rule})")
    ax.plot(test.lrs[suggestion.index], test.smoothed[suggestion.index], "o", color="tab:red")
    lowest = min(loss for _, loss in points)
    ax.set_ylim(top=min(max(loss for _, loss in points), DIVERGED * lowest) * 1.05 + 1e-9)  # not the blow-up
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)",
           title=title or "learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def check_folder(path: Path) -> None:
    """Before the test, so that an --out that cannot be a folder costs no decode."""
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ResnetError(f"--out {path}: {blocking} is a file, not a directory")


def make_folder(path: Path) -> None:
    """After the test: an error before it leaves no empty folder behind."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResnetError(f"cannot create --out {path}: {error.strerror or error}") from None


def title_of(config: TrainConfig) -> str:
    return (f"{config.arch} on {config.dataset}: batch {config.batch_size}, {config.image_size_at(0)} px, "
            f"{config.optimizer}")


# --- the commands --------------------------------------------------------------------------


def lr_find_command(config: TrainConfig, out: str | Path, steps: int = STEPS, start_lr: float = START_LR,
                    end_lr: float = END_LR) -> Suggestion:
    """``resnet lr-find``: the test, its lines, DIR/lr_find.png and DIR/lr_find.csv."""
    check_range(steps, start_lr, end_lr)
    folder = Path(out)
    check_folder(folder)
    print(f"range test: {plural(steps, 'step')} of {title_of(config)}, lr {start_lr:.3g} to {end_lr:.3g}", flush=True)
    test, suggestion = find_lr(config, steps, start_lr, end_lr, progress=not config.quiet)
    if test.stopped:
        print(test.stopped)
    if suggestion.flat:
        print(flat_line(test))
    make_folder(folder)
    plot_range_test(test, suggestion, folder / PLOT, title_of(config))
    write_points(test, folder / POINTS)
    print(suggestion_line(suggestion))
    print(f"wrote {folder / PLOT} and {folder / POINTS}")
    return suggestion


def with_found_lr(config: TrainConfig, run_dir: Path, topology: Topology,
                  check_stop: Callable[[], None] | None = None) -> TrainConfig:
    """``resnet train --lr auto``: ``config`` with the range test's suggestion as its lr, said in
    one line; the test's plot goes into the run directory."""
    if topology.enabled:
        raise ResnetError("--lr auto runs the range test in a single process: run resnet lr-find with the same "
                          "options first, then torchrun with its --lr")
    test, suggestion = find_lr(config, STEPS, START_LR, END_LR, progress=False, check_stop=check_stop)
    plot_range_test(test, suggestion, run_dir / PLOT, title_of(config))
    ended = f"; the test {test.stopped}" if test.stopped else ""
    print(f"--lr auto: training at lr {lr_text(suggestion.lr)} (rule: {suggestion.rule}), from a range test of "
          f"{plural(test.steps, 'step')}, lr {START_LR:.3g} to {END_LR:.3g}{ended}; "
          f"its plot: {run_dir / PLOT}", flush=True)
    return replace(config, lr=suggestion.lr)
