"""Calibrated probabilities: temperature scaling, expected calibration error, and the plots
that show how far a model's confidence can be trusted.

A network trained with cross-entropy is usually over-confident: of the images it calls
90% sure, fewer than 90% are right. Temperature scaling (Guo et al., 2017, "On
Calibration of Modern Neural Networks") divides every logit by one scalar T > 0 fitted
on held-out images to minimize their negative log-likelihood. It changes no ranking
(top-1, top-5 and the confusion matrix stay as they were), only how peaked the
probabilities are.

``resnet calibrate RUN`` fits T on the run's evaluation split (never on the test split:
its images must stay unseen for the final score) and stores it in the run's checkpoints
as ``temperature`` (and beside the config, in config.json). A checkpoint without one
has temperature 1: its probabilities are the plain softmax, as before calibration
existed. ``resnet eval``, ``resnet predict``, the app and ``resnet export`` divide by it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet.errors import ResnetError
from resnet.words import plural

ECE_BINS = 15  # Guo et al.'s choice, and the common one since
# A held-out set that the model classifies all correctly with a margin keeps lowering its
# NLL as T goes to 0: the bounds keep the temperature finite and say when it ran into one.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


class TemperatureScaled(nn.Module):
    """A model whose logits are divided by ``temperature``: its softmax is the calibrated
    probabilities (what ``resnet export`` writes for a calibrated run)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def temperature_of(checkpoint: dict[str, Any], where: str = "the checkpoint") -> float:
    """The checkpoint's fitted temperature; 1 when it has none (not calibrated). A value that is
    not a positive finite number (a hand-edited file) is a one-line error."""
    value = checkpoint.get("temperature")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ResnetError(f"{where} has an invalid temperature {value!r} (it must be a positive number; "
                          "resnet calibrate fits one)")
    return float(value)


# --- measuring calibration -------------------------------------------------------------------


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor,
                     bins: int = ECE_BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width bin of top-1 confidence, (lo, hi]: the number of images, their accuracy
    and their mean confidence (float64; accuracy and confidence are 0 in an empty bin)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probabilities (N, C) and labels (N,) expected, got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    confidence, predicted = probs.detach().double().max(1)
    correct = (predicted == labels.long()).double()
    inner_edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    index = torch.bucketize(confidence, inner_edges)  # (lo, hi]: a confidence on an edge goes below it
    counts = torch.bincount(index, minlength=bins).double()
    hits = torch.bincount(index, weights=correct, minlength=bins)
    confidences = torch.bincount(index, weights=confidence, minlength=bins)
    filled = counts.clamp(min=1)
    return counts, hits / filled, confidences / filled


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: the sum over equal-width confidence bins of |bin| / N * |accuracy - mean confidence|,
    with each image's top-1 probability as its confidence. NaN without images."""
    counts, accuracy, confidence = reliability_bins(probs, labels, bins)
    total = counts.sum().item()
    if not total:
        return math.nan
    return float((counts / total * (accuracy - confidence).abs()).sum())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimizes the mean NLL of ``softmax(logits / T)`` on these
    labels (Guo et al., 2017): L-BFGS on log T, so that T stays positive, within
    [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``]."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits (N, C) and labels (N,) expected, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if not len(labels):
        raise ResnetError("there are no images to fit a temperature on")
    logits, labels = logits.detach().double(), labels.long()
    bounds = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * torch.exp(-log_t.clamp(*bounds)), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(math.exp(min(max(log_t.item(), bounds[0]), bounds[1])))


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coverage, accuracy on the covered images, threshold) as the minimum confidence falls
    through every image's top-1 probability, most confident first."""
    confidence, predicted = probs.detach().double().max(1)
    order = confidence.argsort(descending=True, stable=True)
    correct = (predicted == labels.long())[order].double()
    covered = torch.arange(1, len(order) + 1, dtype=torch.float64)
    return covered / max(1, len(order)), correct.cumsum(0) / covered, confidence[order]


def selective_scores(probs: torch.Tensor, labels: torch.Tensor, min_confidence: float) -> dict[str, Any]:
    """What answering ``unknown`` below ``min_confidence`` gives: ``coverage`` (the share of images
    answered), ``covered_accuracy`` (top-1 on them; None when none is) and the count of ``unknown``."""
    confidence, predicted = probs.detach().max(1)
    covered = confidence >= min_confidence
    answered = int(covered.sum())
    correct = int((predicted[covered] == labels.long()[covered]).sum())
    return {"min_confidence": min_confidence, "coverage": answered / len(labels) if len(labels) else math.nan,
            "covered_accuracy": correct / answered if answered else None, "unknown": len(labels) - answered}


# --- plots ---------------------------------------------------------------------------------


def plot_reliability(probs: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "",
                     bins: int = ECE_BINS) -> None:
    """The reliability diagram: accuracy per confidence bin against the diagonal of perfect
    calibration (the gap shaded), and below it how many images fall in each bin."""
    from resnet.util.plots import labels_in_any_script, plt, save_figure

    counts, accuracy, confidence = (t.numpy() for t in reliability_bins(probs, labels, bins))
    ece = expected_calibration_error(probs, labels, bins)
    lefts = torch.arange(bins, dtype=torch.float64).numpy() / bins
    filled = counts > 0
    with labels_in_any_script():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 7), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]})
        top.bar(lefts[filled], accuracy[filled], width=1 / bins, align="edge", edgecolor="black",
                color="tab:blue", label="accuracy")
        top.bar(lefts[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1 / bins,
                align="edge", color="tab:red", alpha=0.3, hatch="//", label="gap to the mean confidence")
        top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        top.set(ylabel="accuracy", ylim=(0, 1), title=title or "reliability")
        top.text(0.04, 0.92, f"ECE {100 * ece:.2f}% ({bins} bins)", transform=top.transAxes,
                 bbox={"facecolor": "white", "alpha": 0.8})
        top.legend(loc="lower right", fontsize=8)
        bottom.bar(lefts, counts, width=1 / bins, align="edge", edgecolor="black", color="tab:gray")
        bottom.set(xlabel="confidence (top-1 probability)", ylabel="images", xlim=(0, 1))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, path, dpi=100)


def plot_coverage(probs: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "",
                  min_confidence: float | None = None) -> None:
    """The risk-coverage curve: accuracy on the images answered against the share answered, as
    the minimum confidence rises; a few thresholds and ``min_confidence`` are marked on it."""
    from resnet.util.plots import labels_in_any_script, plt, save_figure

    coverage, accuracy, _ = risk_coverage(probs, labels)
    with labels_in_any_script():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.plot(coverage.numpy(), 100 * accuracy.numpy(), color="tab:blue")
        marks = [(level, "tab:gray", "minimum confidence (labelled)") for level in (0.5, 0.7, 0.9)]
        if min_confidence is not None:
            marks.append((min_confidence, "tab:red", f"--min-confidence {min_confidence:g}"))
        labelled = set()
        for level, colour, name in marks:
            at = selective_scores(probs, labels, level)
            if at["covered_accuracy"] is None:  # nothing is that confident
                continue
            point = (at["coverage"], 100 * at["covered_accuracy"])
            if colour == "tab:red":
                name += f": coverage {100 * point[0]:.1f}%, accuracy {point[1]:.1f}%"
            ax.plot(*point, "o", color=colour, markersize=4 if colour == "tab:gray" else 7,
                    label=None if name in labelled else name)
            labelled.add(name)
            ax.annotate(f"{level:g}", point, fontsize=8, textcoords="offset points", xytext=(4, -10))
        if labelled:
            ax.legend(loc="lower left", fontsize=8)
        ax.set(xlabel="coverage (share of images answered, the rest unknown)",
               ylabel="accuracy on the answered images (%)", xlim=(0, 1.02),
               title=title or "accuracy against coverage")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, path, dpi=100)


def confidence_views(logits: torch.Tensor, labels: torch.Tensor, out_dir: Path, title: str, temperature: float,
                     min_confidence: float | None = None, bins: int = ECE_BINS) -> dict[str, Any]:
    """For ``resnet eval`` (``logits`` already divided by ``temperature``): ECE, the selective
    scores at ``min_confidence``, reliability.png and coverage.png in ``out_dir``."""
    probs = logits.float().softmax(1)
    reliability, coverage = out_dir / "reliability.png", out_dir / "coverage.png"
    plot_reliability(probs, labels, reliability, f"{title}: reliability at T = {temperature:.3g}", bins)
    plot_coverage(probs, labels, coverage, f"{title}: accuracy against coverage", min_confidence)
    views = {"ece": expected_calibration_error(probs, labels, bins), "ece_bins": bins, "temperature": temperature,
             "reliability_png": str(reliability), "coverage_png": str(coverage)}
    if min_confidence is not None:
        views.update(selective_scores(probs, labels, min_confidence))
    return views


def format_confidence(result: dict[str, Any]) -> str:
    """``resnet eval``'s lines on its probabilities: ECE, temperature, and the coverage at
    ``--min-confidence`` when it was given."""
    temperature = result["temperature"]
    lines = [f"ECE {100 * result['ece']:.2f}% ({result['ece_bins']} bins) at temperature {temperature:.4g}"
             + (" (not calibrated: resnet calibrate fits one)" if temperature == 1 else " (resnet calibrate's)")]
    if "coverage" in result:
        answered = result["images"] - result["unknown"]
        accuracy = ("none answered" if result["covered_accuracy"] is None
                    else f"top-1 {100 * result['covered_accuracy']:.2f}% on them")
        lines.append(f"at --min-confidence {result['min_confidence']:g}: coverage {100 * result['coverage']:.1f}% "
                     f"({answered} of {plural(result['images'], 'image')} answered, {result['unknown']} unknown), "
                     f"{accuracy}")
    return "\n".join(lines)


# --- resnet calibrate ----------------------------------------------------------------------



