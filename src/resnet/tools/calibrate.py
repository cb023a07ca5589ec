"""``resnet calibrate``: fit a run's temperature on its held-out images and store it in the
checkpoints and config.json (never on the test split or the training images)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet.errors import ResnetError
from resnet.words import plural
from resnet.tools.calibration import (
    ECE_BINS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    expected_calibration_error,
    fit_temperature,
)
from resnet.config import TrainConfig, read_config_values
from resnet.engine.checkpoint import load_checkpoint
from resnet.engine.rundir import claim_existing
from resnet.tools.evaluation import eval_source, evaluate, load_model_from_checkpoint
from resnet.tools.options import DataOptions
from resnet.util.files import save_atomic, write_text_atomic
from resnet.util.hardware import select_device


HELD_OUT = ("eval", "val")  # val: the name image folders give their evaluation split


REFUSED = {
    "test": "the test split is never used to fit a temperature: its images must stay unseen for the final "
            "score; fit on the evaluation split (--subset eval)",
    "all": "--subset all includes the test split (and the training images); fit on the evaluation split "
           "(--subset eval)",
    "train": "the training images are not held out: the model is more confident on them than on new images, "
             "so a temperature fitted there is wrong; fit on the evaluation split (--subset eval)",
}


def held_out_subset(subset: str) -> str:
    """``eval`` for the held-out names; a split that must not be fitted on is a one-line error."""
    if subset in HELD_OUT:
        return "eval"
    if subset in REFUSED:
        raise ResnetError(REFUSED[subset])
    raise ResnetError(f"unknown subset {subset!r}; a temperature is fitted on the evaluation split (eval)")


def refuse_the_test_split(where: dict[str, Any]) -> None:
    """A run without validation images evaluates on its test split, which must stay unseen."""
    if where["subset"] == "test":
        raise ResnetError(f"the run evaluates on the test split of {where['data_dir']}, and a temperature fitted on "
                          "it would make every later test score optimistic; add validation images (a val/ folder "
                          "beside train/ and test/, or label-file rows with split val), train again and calibrate "
                          "that run, or give --data-dir a folder whose val/ images the model has not seen")


def run_checkpoints(run: Path) -> list[Path]:
    """The checkpoints to calibrate: a run directory's best.pt and last.pt, or the file given."""
    if not run.is_dir():
        if not run.is_file():
            raise ResnetError(f"no run directory or checkpoint at {run}")
        return [run]
    files = [run / name for name in ("best.pt", "last.pt") if (run / name).is_file()]
    if not files:
        raise ResnetError(f"{run} has no checkpoint (best.pt or last.pt) to calibrate")
    return files


@contextmanager
def locked_run(run_dir: Path) -> Iterator[None]:
    """The run directory, locked as ``resnet train`` locks it: a training run would rewrite the
    checkpoints under the new temperature (a folder that is not a run needs no lock)."""

    if not (run_dir / "config.json").is_file():
        yield
        return
    claimed = claim_existing(run_dir, "calibrate")
    try:
        yield
    finally:
        claimed.release(failed=False)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same weights, compared on the CPU: one fitted earlier is on
    the device it was scored on, the other fresh from its checkpoint on the CPU, and torch.equal
    refuses tensors on two devices."""
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(v.cpu(), second[k].cpu()) for k, v in first.items())


def fit_checkpoint(logits: torch.Tensor, labels: torch.Tensor, bins: int) -> dict[str, Any]:
    """The temperature of raw ``logits`` and what it changes: ECE and NLL before and after."""
    temperature = fit_temperature(logits, labels)
    before, after = logits.softmax(1), (logits / temperature).softmax(1)
    return {"temperature": temperature, "images": len(labels), "bins": bins,
            "top1": (logits.argmax(1) == labels).float().mean().item(),
            "ece_before": expected_calibration_error(before, labels, bins),
            "ece_after": expected_calibration_error(after, labels, bins),
            "nll_before": F.cross_entropy(logits, labels).item(),
            "nll_after": F.cross_entropy(logits / temperature, labels).item()}


def store_temperature(path: Path, temperature: float, calibration: dict[str, Any] | None = None) -> None:
    """Write ``temperature`` (and how it was fitted) into the checkpoint at ``path``, atomically."""

    checkpoint = load_checkpoint(path)
    checkpoint["temperature"] = float(temperature)
    if calibration is not None:
        checkpoint["calibration"] = calibration
    save_atomic(checkpoint, path)


def store_in_config(run_dir: Path, temperature: float) -> Path | None:
    """config.json's ``temperature`` key, beside the options (not one of them: training does not
    use it, and a run trained further rewrites config.json without it, as its new checkpoints
    are not calibrated). None when the folder has no config.json."""

    path = run_dir / "config.json"
    if not path.is_file():
        return None
    values = read_config_values(path)
    values["temperature"] = float(temperature)
    write_text_atomic(path, json.dumps(values, indent=2, allow_nan=False))
    return path


def calibrate_run(run: str | os.PathLike, options: DataOptions = DataOptions(), bins: int = ECE_BINS
                  ) -> dict[str, Any]:
    """``resnet calibrate``: fit each checkpoint's temperature on held-out images (the run's
    evaluation split unless ``options`` say otherwise) and store it. A run directory's best.pt and
    last.pt are fitted each on its own weights (once when they hold the same), and config.json gets
    best.pt's, which ``resnet eval`` and ``resnet predict`` of the directory use."""

    options.validate()
    subset = held_out_subset(options.subset)
    run = Path(run)
    files = run_checkpoints(run)
    fitted: list[tuple[nn.Module, dict[str, Any]]] = []
    results, source, where = [], None, {}
    with locked_run(run if run.is_dir() else run.parent):
        for file in files:
            model, checkpoint = load_model_from_checkpoint(file)
            if source is None:
                source, _, _, where = eval_source(checkpoint, options.dataset, options.data_dir, options.split,
                                                  subset)
                refuse_the_test_split(where)
            fit = next((fit for other, fit in fitted if same_weights(model, other)), None)
            if fit is None:
                strict = TrainConfig.from_dict(checkpoint.get("config") or {}).strict
                # Fitted on the raw logits, whatever temperature the checkpoint had before.
                scored = evaluate(model, {**checkpoint, "temperature": 1.0}, source,
                                  select_device(options.device), options.batch_size, options.workers, strict)
                fit = {**fit_checkpoint(scored["logits"], scored["labels"], bins), **where}
                fitted.append((model, fit))
            store_temperature(file, fit["temperature"], fit)
            results.append({"checkpoint": str(file), **fit})
        config_json = store_in_config(run, results[0]["temperature"]) if run.is_dir() else None
    for result in results:
        warn_if_undetermined(result)
    return {"run": str(run), **where, "checkpoints": results, "config_json": str(config_json) if config_json else None}


def warn_if_undetermined(fit: dict[str, Any]) -> None:
    """A warning when the held-out images could not fix the temperature. Without a mistake
    among them the NLL keeps falling as T goes to 0: the fit stops where its gradient vanishes."""
    if fit["top1"] == 1:
        why = "all are classified correctly"
    elif not MIN_TEMPERATURE < fit["temperature"] < MAX_TEMPERATURE:
        why = "the temperature reached its bound"
    else:
        return
    warnings.warn(f"{Path(fit['checkpoint']).name}: {plural(fit['images'], 'held-out image')} cannot say how "
                  f"confident the model should be ({why}); the temperature {fit['temperature']:.4g} is not to be "
                  "trusted: calibrate on more held-out images", stacklevel=3)


def format_calibration(result: dict[str, Any]) -> str:
    lines = []
    for fit in result["checkpoints"]:
        lines.append(f"{fit['checkpoint']}: temperature {fit['temperature']:.4g} fitted on "
                     f"{plural(fit['images'], fit['subset'] + ' image')} of {fit['dataset']}; "
                     f"ECE {100 * fit['ece_before']:.2f}% -> "
                     f"{100 * fit['ece_after']:.2f}% ({fit['bins']} bins), NLL {fit['nll_before']:.4f} -> "
                     f"{fit['nll_after']:.4f}")
    stored = [Path(fit["checkpoint"]).name for fit in result["checkpoints"]]
    if result["config_json"]:
        stored.append("config.json")
    listed = " and ".join([", ".join(stored[:-1]), stored[-1]] if len(stored) > 1 else stored)
    lines.append(f"stored in {listed}; resnet eval, predict, serve and export now use it "
                 "(resnet eval draws reliability.png)")
    return "\n".join(lines)
