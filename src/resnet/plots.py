"""Learning curves, written headless."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss (train and eval) and accuracy (top-1, top-5) per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_ax.plot(epochs, [row["eval_loss"] for row in history], label="eval")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.plot(epochs, [100 * row["top1"] for row in history], label="top-1")
    acc_ax.plot(epochs, [100 * row["top5"] for row in history], label="top-5")
    acc_ax.set(xlabel="epoch", ylabel="eval accuracy (%)", title="accuracy", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
