"""Where a model fails: the most-confused class pairs and the most confident mistakes.

The pairs come from the confusion matrix (fastai's ``most_confused``); the mistakes are
the evaluation images whose wrong top-1 class got the highest probability (in the
spirit of fastai's ``plot_top_losses``, but ranked by the confidence of the wrong
answer, which is what a person looking for labelling errors or look-alike classes
wants to see first).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnet.data.sources import ImageArrays, ImageFiles, Source, open_rgb
from resnet.util.plots import labels_in_any_script, save_figure


@dataclass
class Mistake:
    index: int  # position in the evaluated source
    true: str
    predicted: str
    probability: float  # of the predicted (wrong) class
    true_probability: float


def most_confused(confusion: torch.Tensor, classes: list[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """``(true, predicted, count)`` off the diagonal, most frequent first (ties by name)."""
    counts = confusion.clone()
    counts.fill_diagonal_(0)
    pairs = [(classes[i], classes[j], int(counts[i, j])) for i, j in (counts >= min_count).nonzero().tolist()]
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))


def write_most_confused_csv(pairs: list[tuple[str, str, int]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("true", "predicted", "count"))
    writer.writerows(pairs)
    path.write_text(buffer.getvalue())


def worst_mistakes(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], n: int) -> list[Mistake]:
    """The ``n`` wrongly classified images with the most confident wrong top-1."""
    probabilities = logits.float().softmax(1)
    confidence, predicted = probabilities.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:n]
    return [Mistake(i, classes[int(labels[i])], classes[int(predicted[i])], float(confidence[i]),
                    float(probabilities[i, labels[i]])) for i in order.tolist()]


def source_image(source: Source, index: int) -> np.ndarray:
    """The original image ``index`` of a source as uint8 (H, W, 3), for display."""
    if isinstance(source, ImageFiles):
        image = open_rgb(source.paths[index])
        image.thumbnail((256, 256))
        return np.asarray(image)
    if isinstance(source, ImageArrays):
        return np.asarray(source.images[index]).transpose(1, 2, 0)
    raise TypeError(f"cannot show images of a {type(source).__name__}")


@labels_in_any_script()
def plot_mistakes(mistakes: list[Mistake], source: Source, path: Path, title: str = "") -> None:
    """A grid of the mistakes, each captioned true / predicted (probability)."""
    import matplotlib.pyplot as plt  # headless: resnet.util.plots chose the Agg backend

    columns = max(1, min(4, len(mistakes)))
    rows = max(1, math.ceil(len(mistakes) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, mistake in zip(axes.flat, mistakes):
        ax.imshow(source_image(source, mistake.index))
        ax.set_title(f"true: {mistake.true}\npredicted: {mistake.predicted} ({100 * mistake.probability:.0f}%)",
                     fontsize=9)
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle(title or "the most confident mistakes")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def format_pairs(pairs: list[tuple[str, str, int]], top: int = 5) -> str:
    """``most confused: a -> b (3), ...`` for the first ``top`` pairs."""
    if not pairs:
        return "most confused: none (no mistakes)"
    return "most confused (true -> predicted): " + ", ".join(f"{t} -> {p} ({n})" for t, p, n in pairs[:top])
