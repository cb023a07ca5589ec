"""Learning curves and confusion matrices, written headless, with labels in any script."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from resnet.util.files import write_atomic

# Fonts that cover CJK and more; matplotlib's default (DejaVu Sans) covers Latin, Greek
# and Cyrillic. Those installed are tried, glyph by glyph, after the default.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans", "Source Han Sans SC",
                  "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Arial Unicode MS",
                  "Microsoft YaHei", "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Noto Sans Symbols 2",
                  "Noto Emoji", "Segoe UI Emoji", "Segoe UI Symbol")


@contextmanager
def labels_in_any_script() -> Iterator[None]:
    """Text in any script (class names are the user's): installed fonts that have the glyphs
    are used; a glyph no installed font has is drawn as a box, without a warning per glyph."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallbacks = [name for name in FALLBACK_FONTS if name in installed]
    with matplotlib.rc_context({"font.family": [*plt.rcParams["font.family"], *fallbacks]}), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield


def save_figure(fig: plt.Figure, path: str | Path, dpi: int) -> None:
    """Write a figure atomically (a reader, e.g. the app, never sees half a PNG; a full disk
    is a DiskFull error) and close it."""

    try:
        write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi))
    finally:
        plt.close(fig)


def evaluated(history: list[dict]) -> list[dict]:
    """The metrics rows of the epochs that ended with an evaluation: every epoch, or every
    ``--eval-every``-th and the last (the others have no evaluation columns)."""
    return [row for row in history if "top1" in row]


@labels_in_any_script()
def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss (train and eval) and the scores (top-1, top-5, balanced accuracy and macro-F1 where
    recorded) per epoch, side by side."""
    scored = evaluated(history)
    eval_epochs = [row["epoch"] for row in scored]
    marker = "o" if len(scored) < len(history) else None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot([row["epoch"] for row in history], [row["train_loss"] for row in history], label="train")
    loss_ax.plot(eval_epochs, [row["eval_loss"] for row in scored], label="eval", marker=marker)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.plot(eval_epochs, [100 * row["top1"] for row in scored], label="top-1", marker=marker)
    acc_ax.plot(eval_epochs, [100 * row["top5"] for row in scored], label="top-5", marker=marker)
    for key, label in (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")):
        recorded = [row for row in scored if row.get(key) is not None]  # not by older versions
        if recorded:
            acc_ax.plot([row["epoch"] for row in recorded], [100 * row[key] for row in recorded], label=label,
                        marker=marker, linestyle="--")
    acc_ax.set(xlabel="epoch", ylabel="eval score (%)", title="scores", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


@labels_in_any_script()
def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str = "") -> None:
    """Rows: true class, columns: predicted; colour is the share of the row, numbers are counts."""
    counts = confusion.numpy()
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    n = len(classes)
    side = min(30.0, max(5.0, 0.25 * n + 3))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8 if n > 20 else 10)
        ax.set_yticks(range(n), classes, fontsize=8 if n > 20 else 10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
