"""The Python API: ``resnet.train``, ``resnet.evaluate`` and ``resnet.predict``, the three commands
as functions.

Each takes the options of its command under their Python names (``--image-size`` is
``image_size``) with the command's defaults, resolves them through the functions the command
uses, and raises the ``ResnetError`` the command would print. The results read both as
attributes and as items: ``result.final_top1 == result["final_top1"]``.

The heavy modules (the data path, the plots, the training loop) are imported when a function
is called, so that ``import resnet`` stays quick.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import os
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet.errors import ResnetError

if TYPE_CHECKING:
    from resnet.config import TrainConfig

PathLike = str | os.PathLike


class Result(Mapping[str, Any]):
    """A command's result: its values as items and as attributes."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})  # absent while unpickling
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no {name!r} (it has {', '.join(values)})")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._values]

    def __repr__(self) -> str:
        # The scalars only: a history or a per-class table would drown them.
        brief = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if not isinstance(v, (list, dict)))
        return f"{type(self).__name__}({brief})"


class TrainResult(Result):
    """A finished run: everything in its summary.json (``run_dir`` as a Path), ``history`` (the
    rows of metrics.csv, empty cells as None) and ``config`` (the resolved TrainConfig)."""

    run_dir: Path
    final_top1: float
    best_top1: float
    history: list[dict[str, Any]]
    config: TrainConfig


class EvalResult(Result):
    """What ``resnet eval --json`` prints: loss, top1, top5, macro_f1, balanced_accuracy,
    per_class, most_confused, the files written, and where the images came from."""


class PredictResult(Result):
    """What ``resnet predict --json`` prints: ``checkpoint``, ``predictions`` (``path`` and ``top``,
    the classes with their probabilities, best first), ``failed`` and ``errors`` (the files that
    could not be read, with why)."""


# --- train ---------------------------------------------------------------------------------


def train(*, resume: PathLike | None = None, **options: Any) -> TrainResult:
    """Train as ``resnet train`` does: ``options`` are its options (the fields of
    ``resnet.config.TrainConfig``), each left to the recipe and the dataset's preset when not
    given or None; ``resume`` continues the run directory of an interrupted run.

    ``resnet.train(data_dir="photos", epochs=10)`` is ``resnet train --data-dir photos --epochs 10``;
    ``lr="auto"`` is ``--lr auto``.
    A stop signal (Ctrl-C) saves a checkpoint and raises ``resnet.engine.training.Interrupted``.
    """
    from dataclasses import fields

    from resnet.config import TrainConfig, load_config
    from resnet.engine.training import train_with_options

    reject_unknown(options, [f.name for f in fields(TrainConfig)], "resnet.train")
    given = {name: os.fspath(value) if isinstance(value, os.PathLike) else value
             for name, value in options.items() if value is not None}
    summary = train_with_options(given, resume)
    run_dir = Path(summary["run_dir"])
    return TrainResult({**summary, "run_dir": run_dir, "history": read_history(run_dir / "metrics.csv"),
                        "config": load_config(run_dir)})  # as saved: with the lr that lr="auto" found


INTEGER_COLUMNS = ("epoch", "train_size")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv as numbers; an empty cell (an epoch not evaluated) is None."""
    with open(path, newline="") as f:
        return [{name: None if text in ("", None) else int(text) if name in INTEGER_COLUMNS else float(text)
                 for name, text in row.items()} for row in csv.DictReader(f)]


# --- evaluate and predict ---------------------------------------------------------------------


def evaluate(run_or_checkpoint: PathLike, *, dataset: str | None = None, data_dir: PathLike | None = None,
             split: str | None = None, subset: str = "eval", out: PathLike | None = None,
             image_size: int | None = None, tta: bool | None = None, batch_size: int = 64,
             workers: int | None = None, device: str = "auto", mistakes: int = 16,
             min_confidence: float | None = None, **unknown: Any) -> EvalResult:
    """Score a checkpoint (or a run directory's best.pt) as ``resnet eval`` does, writing its
    PNGs and CSVs next to the checkpoint or in ``out``; the options are the command's, checked
    as the command checks them (``EvalOptions.validate``)."""
    from resnet.tools.evaluation import evaluate_checkpoint
    from resnet.tools.options import EvalOptions

    reject_unknown(unknown, parameters(evaluate), "resnet.evaluate")
    for name, value in (("run_or_checkpoint", run_or_checkpoint), ("data_dir", data_dir), ("out", out)):
        check_path("resnet.evaluate", name, value, allow_none=name != "run_or_checkpoint")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    options = EvalOptions(dataset=dataset, data_dir=data_dir, split=split, subset=subset, batch_size=batch_size,
                          workers=workers, device=device, out=out, image_size=image_size, tta=tta,
                          mistakes=mistakes, min_confidence=min_confidence)
    return EvalResult(evaluate_checkpoint(run_or_checkpoint, options))


def predict(checkpoint: PathLike, images: PathLike | Sequence[PathLike], *, top_k: int = 5, batch_size: int = 32,
            device: str = "auto", min_confidence: float | None = None, **unknown: Any) -> PredictResult:
    """Classify image files (a directory: every image under it) as ``resnet predict`` does. A file
    that cannot be read is listed in ``errors``, and the others are still predicted."""
    from resnet.tools.options import PredictOptions
    from resnet.tools.prediction import predict_checkpoint, prediction_report

    reject_unknown(unknown, parameters(predict), "resnet.predict")
    check_path("resnet.predict", "checkpoint", checkpoint)
    inputs = image_paths(images)
    options = PredictOptions(top_k=top_k, batch_size=batch_size, device=device, min_confidence=min_confidence)
    loaded, predictions = predict_checkpoint(checkpoint, inputs, options)
    return PredictResult(prediction_report(loaded, predictions, min_confidence))


# --- checking the options ------------------------------------------------------------------------


def reject_unknown(given: Mapping[str, Any], known: Sequence[str], function: str) -> None:
    """A name that is not an option is an error naming it and the closest option."""
    for name in given:
        if name not in known:
            closest = difflib.get_close_matches(name, known, n=1, cutoff=0)
            raise ResnetError(f"{function} has no option {name!r}" + (f"; did you mean {closest[0]!r}?" if closest
                                                                      else ""))


def parameters(function: Callable[..., Any]) -> list[str]:
    return [name for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY]


def check_path(function: str, name: str, value: Any, allow_none: bool = False) -> None:
    """What the command's parser would have read as a path: a string or an ``os.PathLike``."""
    if not (isinstance(value, (str, os.PathLike)) or value is None and allow_none):
        raise ResnetError(f"{function}: {name} must be a path, got {brief(value)}")


def image_paths(images: Any) -> list[PathLike]:
    """``resnet.predict``'s images as a list: one path, or several; none at all is refused, as
    ``resnet predict`` refuses a command line without an image."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if not isinstance(images, Iterable) or isinstance(images, (bytes, Mapping)):
        raise ResnetError(f"resnet.predict: images must be a path or a list of paths, got {brief(images)}")
    paths = list(images)
    if not paths:
        raise ResnetError("resnet.predict: no images given")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise ResnetError(f"resnet.predict: images must be paths, got {brief(path)}")
    return paths


def brief(value: Any) -> str:
    """A value as one short line (an array's repr runs over many)."""
    return " ".join(reprlib.repr(value).split())
