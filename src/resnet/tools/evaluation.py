"""Using a trained model: load it from a checkpoint, and score it on a dataset.

``load_model_from_checkpoint`` is shared by ``resnet eval``, ``resnet predict`` and
``resnet export``: it reads a checkpoint without running code (``weights_only=True``),
builds the architecture it names, and loads the EMA weights when the run kept them
(the weights that were evaluated during training), else the plain ones.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnet.data.augment import IMAGENET_MEAN, IMAGENET_STD, Normalize
from resnet.tools.calibration import temperature_of
from resnet.engine.checkpoint import check_model_entries, load_checkpoint
from resnet.config import TrainConfig
from resnet.data.cache import decode, readable_parts
from resnet.data.datasets import DATASETS, load_splits
from resnet.data.sources import ImageArrays, ImageFiles, Source, printable
from resnet.errors import ResnetError
from resnet.util.hardware import select_device
from resnet.models.resnet import STEMS, FlipTTA, get_model, list_models
from resnet.engine.weights import check_state_fits, strip_wrapper_prefixes
from resnet.words import plural
from resnet.engine.scoring import (
    decoded_eval_batches,
    predict_logits,
    top_k,
    classification_metrics,
    confusion_matrix,
    class_scores,
)
from resnet.tools.calibration import confidence_views, format_confidence
from resnet.tools.mistakes import format_pairs, most_confused, plot_mistakes, worst_mistakes, write_most_confused_csv
from resnet.tools.options import EvalOptions

SUBSETS = ("eval", "test", "train", "all")


# --- loading ----------------------------------------------------------------------


def checkpoint_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (else its ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        return path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
    return path


def load_model_from_checkpoint(path: str | os.PathLike, tta: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a training checkpoint (or run directory), in eval mode on the CPU.

    Returns ``(model, checkpoint)``; ``checkpoint["path"]`` is the file that was read and
    ``checkpoint["normalization"]`` and ``checkpoint["temperature"]`` (``resnet calibrate``'s;
    1 when the run was not calibrated) are always filled in. When the run evaluated with
    flip TTA (or ``tta`` says so), the model is wrapped in ``FlipTTA``, so that eval,
    predict and export give what training reported. A missing, corrupt or foreign
    file, or weights of another architecture, is a one-line ``ResnetError``.
    """
    file = checkpoint_file(path)
    checkpoint = load_checkpoint(file)
    check_model_entries(checkpoint, file)
    arch = checkpoint["arch"]
    if arch not in list_models():
        raise ResnetError(f"{file} names an unknown architecture {arch!r} (known: {', '.join(list_models())})")
    classes = list(checkpoint["classes"])
    use_ema = checkpoint.get("ema") is not None
    state = checkpoint["ema"] if use_ema else checkpoint["model"]

    config = TrainConfig.from_dict(checkpoint.get("config") or {})
    if config.stem not in STEMS:
        raise ResnetError(f"{file} names an unknown stem {config.stem!r} (known: {', '.join(STEMS)})")
    model = get_model(arch, num_classes=len(classes), stem=config.stem)
    state = strip_wrapper_prefixes(state)
    check_state_fits(state, model.state_dict(), f"{file} ({'ema' if use_ema else 'model'} weights)", arch)
    model.load_state_dict(state)
    if tta is None:
        tta = config.tta
    if tta:
        model = FlipTTA(model)
    model.eval()

    checkpoint["path"] = str(file)
    checkpoint["classes"] = classes
    checkpoint["normalization"] = normalization_of(checkpoint)
    checkpoint["weights_used"] = "ema" if use_ema else "model"
    checkpoint["tta"] = tta
    checkpoint["temperature"] = temperature_of(checkpoint, str(file))
    return model, checkpoint


def normalization_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Mean, std and square input size of evaluation, as training used them."""
    saved = checkpoint.get("normalization") or {}
    config = TrainConfig.from_dict(checkpoint.get("config") or {})
    return {"mean": [float(v) for v in saved.get("mean", IMAGENET_MEAN)],
            "std": [float(v) for v in saved.get("std", IMAGENET_STD)],
            "image_size": int(saved.get("image_size") or config.resolved_eval_image_size())}


# --- the data to score ----------------------------------------------------------------


def eval_source(checkpoint: dict[str, Any], dataset: str | None = None, data_dir: str | None = None,
                split: str | None = None, subset: str = "eval") -> tuple[Source, list[str], str, dict[str, Any]]:
    """The images to score, labelled with the checkpoint's class indices.

    Defaults to the dataset, data folder and split the checkpoint was trained on (an
    image folder is split again with the run's seed and held-out fraction, so ``eval``
    is exactly the run's validation set). Returns (source, dataset classes, name, where).
    """
    config = TrainConfig.from_dict(checkpoint.get("config") or {})
    if dataset is not None and dataset not in DATASETS:
        raise ResnetError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    same_dataset = dataset is None or dataset == config.dataset
    dataset = dataset or config.dataset
    if data_dir is None and same_dataset:
        data_dir = config.data_dir
        check_stored_data_dir(dataset, data_dir)
    split = split or config.split
    if subset not in SUBSETS:
        raise ResnetError(f"unknown subset {subset!r}; choose one of: {', '.join(SUBSETS)}")
    splits = load_splits(dataset, data_dir, split, config.val_fraction, config.seed,
                         labels=config.labels if same_dataset else None)
    parts = {"eval": [splits.eval], "train": [splits.train], "test": [splits.test] if splits.test else [],
             "all": [s for s in (splits.train, splits.eval, splits.test) if s is not None]}[subset]
    if not parts:
        raise ResnetError(f"{dataset} (split {split}) has no test subset; use --subset eval")
    source = concatenate(parts)
    name = subset if subset != "eval" else "test" if splits.eval_is_test else splits.eval_name
    where = {"dataset": dataset, "data_dir": data_dir, "split": split, "subset": name}
    return relabel(source, splits.classes, checkpoint["classes"]), list(splits.classes), name, where


def check_stored_data_dir(dataset: str, data_dir: str | None) -> None:
    """A one-line error when the data folder a run recorded is not there: the run may have
    been trained elsewhere, or given a path relative to another working directory."""
    if dataset == "petals" or data_dir is None or Path(data_dir).exists():
        return
    relative = "" if Path(data_dir).is_absolute() else f" (a relative path, read from {Path.cwd()})"
    raise ResnetError(f"the run's data_dir {data_dir}{relative} does not exist; "
                      "pass --data-dir DIR to point at the data")


def concatenate(parts: list[Source]) -> Source:
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, ImageFiles) for p in parts):
        return ImageFiles([x for p in parts for x in p.paths], [y for p in parts for y in p.labels])
    if all(isinstance(p, ImageArrays) for p in parts):
        return ImageArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    raise ResnetError("cannot combine subsets of different kinds")


def relabel(source: Source, dataset_classes: list[str], model_classes: list[str]) -> Source:
    """Map the dataset's labels onto the checkpoint's classes by name."""
    if list(dataset_classes) == list(model_classes):
        return source
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in dataset_classes if name not in index]
    if unknown:
        raise ResnetError(f"the dataset has {plural(len(unknown), 'class')} the checkpoint does not know, e.g. "
                          f"{', '.join(repr(u) for u in unknown[:3])} "
                          f"(the checkpoint has {plural(len(model_classes), 'class')})")
    mapping = np.array([index[name] for name in dataset_classes], dtype=np.int64)
    if isinstance(source, ImageFiles):
        return ImageFiles(source.paths, [int(mapping[label]) for label in source.labels])
    return ImageArrays(source.images, mapping[np.asarray(source.labels)])


# --- batches and logits (shared with training) --------------------------------------------


# --- scoring -----------------------------------------------------------------------------


def per_class_rows(confusion: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """One row per class: images, correct, accuracy (its recall, kept under its first name),
    precision, recall and F1 (``class_scores``)."""
    rows = []
    for i, (name, scores) in enumerate(zip(classes, class_scores(confusion))):
        images, correct = int(confusion[i].sum()), int(confusion[i, i])
        rows.append({"class": name, "images": images, "correct": correct,
                     "accuracy": correct / images if images else None, **scores})
    return rows


def evaluate(model: nn.Module, checkpoint: dict[str, Any], source: Source, device: torch.device | str = "cpu",
             batch_size: int = 64, workers: int | None = None, strict: bool = False) -> dict[str, Any]:
    """Loss, top-1, top-5, macro-F1, balanced accuracy (also under its older name,
    ``mean_class_accuracy``), confusion matrix and per-class rows;
    also ``logits`` and ``labels`` per image, in the order of ``source``: the images scored,
    which are the given ones less those that cannot be read (warned of; with ``strict``, an error).
    The logits are divided by ``checkpoint["temperature"]`` (when given), so that the loss and
    every probability are the calibrated ones; the rankings do not depend on it.

    The images go through the training run's own evaluation path: decoded once at the
    checkpoint's image size (square resize), then normalized with its mean and std.
    """
    device = torch.device(device)
    norm = checkpoint["normalization"]
    [(source, data)], _ = readable_parts([(source, decode(source, norm["image_size"], workers=workers))], strict)
    normalize = Normalize(tuple(norm["mean"]), tuple(norm["std"]))
    batches = decoded_eval_batches(data, batch_size, device, normalize=normalize)
    model.to(device)
    logits, labels = predict_logits(model, batches, device, None)
    if not len(labels):
        raise ResnetError("there are no images to evaluate")
    logits = logits / checkpoint.get("temperature", 1.0)
    classes = checkpoint["classes"]
    metrics = classification_metrics(logits, labels)
    confusion = confusion_matrix(logits.argmax(1), labels, len(classes))
    rows = per_class_rows(confusion, classes)
    return {**metrics, "mean_class_accuracy": metrics["balanced_accuracy"], "images": len(labels),
            "confusion": confusion, "per_class": rows, "logits": logits, "labels": labels, "source": source}


PER_CLASS_COLUMNS = ("class", "images", "correct", "accuracy", "precision", "recall", "f1")
SCORE_COLUMNS = ("accuracy", "precision", "recall", "f1")  # shares, written with 6 decimals; empty: undefined


def write_per_class_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_CLASS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        scores = {key: "" if row[key] is None else f"{row[key]:.6f}" for key in SCORE_COLUMNS}
        writer.writerow({**row, "class": printable(row["class"]), **scores})
    path.write_text(buffer.getvalue())


def evaluate_checkpoint(path: str | os.PathLike, options: EvalOptions = EvalOptions()) -> dict[str, Any]:
    """``resnet eval``: score a checkpoint, write the confusion-matrix PNG, per-class CSV,
    most-confused pairs CSV, the PNG of the ``options.mistakes`` most confident mistakes, and the
    reliability diagram and risk-coverage curve of its (calibrated) probabilities.

    ``options.image_size`` and ``options.tta`` override the run's evaluation size and flip TTA; with
    ``options.min_confidence``, the coverage and accuracy of answering only at that confidence or above.
    """
    from resnet.util.plots import plot_confusion

    options.validate()  # before a checkpoint is read
    model, checkpoint = load_model_from_checkpoint(path, options.tta)
    if options.image_size is not None:
        checkpoint["normalization"]["image_size"] = options.image_size
    source, _, subset_name, where = eval_source(checkpoint, options.dataset, options.data_dir, options.split,
                                                options.subset)
    strict = TrainConfig.from_dict(checkpoint.get("config") or {}).strict
    result = evaluate(model, checkpoint, source, select_device(options.device), options.batch_size, options.workers,
                      strict)
    source = result["source"]
    out_dir = Path(options.out) if options.out is not None else Path(checkpoint["path"]).parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResnetError(f"cannot write to {out_dir}: {error.strerror or error}") from None
    png, table = out_dir / "confusion_matrix.png", out_dir / "per_class.csv"
    # The PNGs and CSVs are for reading: a name's bytes that are not UTF-8 show as U+FFFD
    # (the returned result keeps the names as they are).
    plot_confusion(result["confusion"], [printable(name) for name in checkpoint["classes"]], png,
                   f"{checkpoint['arch']} on {where['dataset']} ({subset_name}): top-1 {100 * result['top1']:.1f}%")
    write_per_class_csv(result["per_class"], table)
    failures = write_failure_views(result, checkpoint["classes"], source, out_dir, options.mistakes)
    confidence = confidence_views(result["logits"], result["labels"], out_dir, f"{where['dataset']} ({subset_name})",
                                  checkpoint["temperature"], options.min_confidence)
    return {"checkpoint": checkpoint["path"], "arch": checkpoint["arch"], "weights": checkpoint["weights_used"],
            **where, "subset": subset_name, "images": result["images"], "classes": len(checkpoint["classes"]),
            "image_size": checkpoint["normalization"]["image_size"], "tta": checkpoint["tta"],
            "loss": result["loss"], "top1": result["top1"], "top5": result["top5"],
            "macro_f1": result["macro_f1"], "balanced_accuracy": result["balanced_accuracy"],
            "mean_class_accuracy": result["mean_class_accuracy"],
            "confusion_matrix_png": str(png), "per_class_csv": str(table), "per_class": result["per_class"],
            **failures, **confidence}


def write_failure_views(result: dict[str, Any], classes: list[str], source: Source, out_dir: Path,
                        mistakes: int) -> dict[str, Any]:
    """most_confused.csv and mistakes.png (skipped when ``mistakes`` is 0) in ``out_dir``;
    the returned pairs keep the class names as they are, the files show them ``printable``."""

    pairs = most_confused(result["confusion"], classes)
    write_most_confused_csv([(printable(t), printable(p), n) for t, p, n in pairs], out_dir / "most_confused.csv")
    views = {"most_confused_csv": str(out_dir / "most_confused.csv"), "most_confused": pairs}
    if mistakes > 0:
        worst = worst_mistakes(result["logits"], result["labels"], [printable(c) for c in classes], mistakes)
        plot_mistakes(worst, source, out_dir / "mistakes.png", f"the {len(worst)} most confident mistakes")
        views["mistakes_png"] = str(out_dir / "mistakes.png")
    return views


def format_eval(result: dict[str, Any]) -> str:
    top5 = f"top-{top_k(result['classes'])}"
    return "\n".join([
        f"{result['arch']} ({result['weights']} weights) from {result['checkpoint']}",
        f"{result['dataset']} {result['subset']}: {plural(result['images'], 'image')}, "
        f"{plural(result['classes'], 'class')}, "
        f"at {result['image_size']} px{', with flip TTA' if result['tta'] else ''}",
        f"loss {result['loss']:.4f}  top-1 {100 * result['top1']:.2f}%  {top5} {100 * result['top5']:.2f}%  "
        f"balanced accuracy {100 * result['balanced_accuracy']:.2f}% (mean per-class recall)  "
        f"macro-F1 {100 * result['macro_f1']:.2f}%",
        format_confidence(result),
        format_pairs(result["most_confused"]),
        f"wrote {result['confusion_matrix_png']}, {result['per_class_csv']}, "
        f"{result['most_confused_csv']}" + (f", {result['mistakes_png']}" if "mistakes_png" in result else "")
        + f", {result['reliability_png']} and {result['coverage_png']}",
    ])
