"""``resnet predict``: the top-k classes of image files, with probabilities.

Each image is preprocessed as evaluation does it: opened upright as RGB (EXIF
orientation, grayscale, palette, CMYK and alpha handled by ``open_rgb``), squashed to
the checkpoint's square input size, scaled to [0, 1] and normalized with its mean and
std. An unreadable file is reported on its own and the others are still predicted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet.data.sources import IMAGE_EXTENSIONS, _ResizeToTensor, image_files_under, open_rgb
from resnet.errors import ResnetError
from resnet.data.augment import Normalize
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.tools.options import PredictOptions
from resnet.util.hardware import select_device


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability), best first
    error: str | None = None  # why the file could not be read; ``top`` is then empty
    unknown: bool | None = None  # the top probability is below --min-confidence (None: none given)

    @property
    def label(self) -> str:
        """The answer: the top class, or ``unknown`` below the minimum confidence."""
        return "unknown" if self.unknown else self.top[0][0]


def image_files(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """``(path, problem)`` for every file argument and every image file under a directory
    argument (sorted); ``problem`` is None for a file to try, else why it is skipped."""
    found: list[tuple[str, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = image_files_under(path)
            if not files:
                found.append((str(path), f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory"))
            found += [(str(p), None) for p in files]
        elif not path.exists():
            found.append((str(path), "no such file"))
        else:
            found.append((str(path), None))
    return found


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """uint8 (3, size, size), exactly as the evaluation cache decodes an image."""
    return _ResizeToTensor(size)(open_rgb(path))


def predict_files(model: nn.Module, checkpoint: dict[str, Any], inputs: Sequence[str | os.PathLike],
                  options: PredictOptions = PredictOptions(), device: torch.device | str = "cpu"
                  ) -> Iterator[Prediction]:
    """Predictions in input order, ``options.batch_size`` images in memory at a time, with the
    checkpoint's temperature, on ``device`` (``options.device`` is the name the command resolves
    to it); with ``options.min_confidence``, each says whether it is ``unknown``."""

    options.validate()
    batch_size, min_confidence = options.batch_size, options.min_confidence
    device = torch.device(device)
    norm = checkpoint["normalization"]
    classes, temperature = checkpoint["classes"], checkpoint.get("temperature", 1.0)
    k = max(1, min(options.top_k, len(classes)))
    normalize = Normalize(tuple(norm["mean"]), tuple(norm["std"])).to(device)
    model.eval().to(device)
    files = image_files(inputs)
    for start in range(0, len(files), batch_size):
        chunk: list[Prediction] = []
        images = []
        for path, problem in files[start:start + batch_size]:
            if problem is None:
                try:
                    images.append(load_image(path, norm["image_size"]))
                except Exception as error:  # not an image, truncated, unreadable: report and go on
                    problem = describe_error(error, path)
            chunk.append(Prediction(path, error=problem))
        if images:
            good = (p for p in chunk if p.error is None)
            batch = normalize(torch.stack(images).to(device))
            for prediction, top in zip(good, rank_classes(model, batch, classes, k, temperature)):
                prediction.top = top
                prediction.unknown = None if min_confidence is None else below(top, min_confidence)
        yield from chunk


def rank_classes(model: nn.Module, batch: torch.Tensor, classes: list[str], k: int,
                 temperature: float = 1.0) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable (class, probability) of each normalized image in ``batch``, best
    first: the softmax of the logits divided by ``temperature`` (``resnet calibrate``'s)."""
    with torch.no_grad():
        logits = model(batch).float()
    probabilities, indices = (logits / temperature).softmax(1).topk(k, dim=1)
    return [[(classes[i], p) for i, p in zip(row_i, row_p)]
            for row_p, row_i in zip(probabilities.tolist(), indices.tolist())]


def below(top: list[tuple[str, float]], min_confidence: float) -> bool:
    """Whether the answer is ``unknown``: the top probability is under ``min_confidence``."""
    return bool(top) and top[0][1] < min_confidence


def describe_error(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why a file could not be read, on one line: the exception's type and first line. A
    ``ResnetError`` already speaks to the user, so it reads as its message alone, less the
    ``path: `` it may begin with (the caller names the file)."""
    text = str(error).strip()
    text = text.splitlines()[0] if text else ""
    if isinstance(error, ResnetError):
        return text.removeprefix(f"{os.fspath(path)}: ") if path is not None else text
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def format_text(prediction: Prediction) -> str:
    ranked = " | ".join(f"{name} {100 * p:.1f}%" for name, p in prediction.top)
    return f"{prediction.path}: " + (f"unknown ({ranked})" if prediction.unknown else ranked)


CSV_COLUMNS = ("path", "rank", "class", "probability")
ANSWER_COLUMNS = ("label", "unknown")  # with --min-confidence: the answer, on every row of the image


def csv_rows(prediction: Prediction) -> list[dict[str, Any]]:
    answer = {} if prediction.unknown is None else {"label": prediction.label,
                                                    "unknown": str(prediction.unknown).lower()}
    return [{"path": prediction.path, "rank": rank, "class": name, "probability": f"{p:.6f}", **answer}
            for rank, (name, p) in enumerate(prediction.top, 1)]


def as_json(prediction: Prediction) -> dict[str, Any]:
    answer = {} if prediction.unknown is None else {
        "label": prediction.label, "unknown": prediction.unknown, "top_class": prediction.top[0][0],
        "top_probability": prediction.top[0][1]}
    return {"path": prediction.path, **answer,
            "top": [{"class": name, "probability": p} for name, p in prediction.top]}


def predict_checkpoint(path: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                       options: PredictOptions = PredictOptions()) -> tuple[dict[str, Any], Iterator[Prediction]]:
    """``resnet predict`` and ``resnet.predict``: the checkpoint (or a run directory's best.pt)
    and its predictions of ``inputs``, made as they are needed."""

    options.validate()  # before a checkpoint is read
    model, checkpoint = load_model_from_checkpoint(path)
    device = select_device(options.device)
    return checkpoint, predict_files(model, checkpoint, inputs, options, device)


def prediction_report(checkpoint: dict[str, Any], predictions: Iterable[Prediction],
                      min_confidence: float | None = None) -> dict[str, Any]:
    """What ``resnet predict --json`` prints: the predictions, and the files that could not be read."""
    predictions = list(predictions)
    errors = [{"path": p.path, "error": p.error} for p in predictions if p.error is not None]
    threshold = {} if min_confidence is None else {"min_confidence": min_confidence}
    return {"checkpoint": checkpoint["path"], "temperature": checkpoint["temperature"], **threshold,
            "predictions": [as_json(p) for p in predictions if p.error is None], "failed": len(errors),
            "errors": errors}
