"""Calibrated probabilities (resnet calibrate) and the unknown answer (--min-confidence)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet.tools.calibration import (
    MIN_TEMPERATURE,
    expected_calibration_error,
    fit_temperature,
    risk_coverage,
    selective_scores,
)
from resnet.tools.calibrate import store_temperature
from resnet.engine.checkpoint import load_checkpoint
from resnet.cli import main
from resnet.data.datasets import load_splits
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.tools.prediction import load_image

FITTED = 2.5  # a temperature stored by hand, far enough from 1 to tell the two apart


def loop_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE written out image by image: bin b holds the confidences in (b / bins, (b + 1) / bins]."""
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for row, label in zip(probs, labels):
        confidence = float(row.max())
        b = min(bins - 1, max(0, math.ceil(confidence * bins) - 1))
        members[b].append((confidence, int(row.argmax()) == int(label)))
    total = 0.0
    for group in members:
        if group:
            accuracy = sum(right for _, right in group) / len(group)
            confidence = sum(c for c, _ in group) / len(group)
            total += len(group) / len(labels) * abs(accuracy - confidence)
    return total


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"resnet {command}: error: ")
    return err


def copy_run(tiny_run, folder: Path) -> Path:
    run = folder / "run"
    shutil.copytree(tiny_run["dir"], run)
    return run


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with the temperature ``FITTED`` in both checkpoints."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("calibrated"))
    for name in ("best.pt", "last.pt"):
        store_temperature(run / name, FITTED)
    return run


def top_probabilities(run: Path, paths: list[Path], temperature: float) -> torch.Tensor:
    """softmax(logits / T) of the run's model, computed here from its raw logits."""
    model, checkpoint = load_model_from_checkpoint(run)
    norm = checkpoint["normalization"]
    mean, std = torch.tensor(norm["mean"])[:, None, None], torch.tensor(norm["std"])[:, None, None]
    images = torch.stack([load_image(p, norm["image_size"]).float() / 255 for p in paths])
    with torch.no_grad():
        logits = model((images - mean) / std)
    return (logits / temperature).softmax(1)


# --- measuring and fitting ---------------------------------------------------------------


def test_ece_of_hand_computed_bins():
    # 5 bins. Confidences 0.9 and 0.9 (one right): |0.5 - 0.9| * 2/4; 0.65 and 0.7 (both right):
    # |1 - 0.675| * 2/4. The second class's probability never tops the first here.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.65, 0.35], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.4 * 0.5 + 0.325 * 0.5)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_agrees_with_a_loop_over_the_images(bins):
    generator = torch.Generator().manual_seed(bins)
    probs = (torch.randn(500, 7, generator=generator) * 2).softmax(1)
    labels = torch.randint(0, 7, (500,), generator=generator)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(
        loop_ece(probs.double().numpy(), labels.numpy(), bins), abs=1e-9)


def synthetic_calibrated(n: int = 6000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from their own softmax: calibrated at temperature 1 by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator)[:, 0]
    return logits, labels


def test_an_over_confident_model_gets_its_temperature_back_and_a_lower_ece():
    logits, labels = synthetic_calibrated()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)
    over = logits * 5  # the same ranking, five times as sure
    temperature = fit_temperature(over, labels)
    assert temperature == pytest.approx(5.0, rel=0.08)
    before = expected_calibration_error(over.softmax(1), labels)
    after = expected_calibration_error((over / temperature).softmax(1), labels)
    assert before > 0.2 and after < 0.03


def test_a_held_out_set_without_a_mistake_gets_a_sharper_but_finite_temperature():
    # Every image right: the NLL falls as T goes to 0; the fit stays positive and finite.
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    temperature = fit_temperature(logits, torch.tensor([0, 1, 0]))
    assert MIN_TEMPERATURE <= temperature < 0.5 and math.isfinite(temperature)


def test_coverage_and_accuracy_at_a_minimum_confidence():
    probs = torch.tensor([[0.95, 0.05], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 1])  # right, wrong, right, wrong
    assert selective_scores(probs, labels, 0.7) == {"min_confidence": 0.7, "coverage": 0.5,
                                                    "covered_accuracy": 0.5, "unknown": 2}
    assert selective_scores(probs, labels, 0.99)["covered_accuracy"] is None
    coverage, accuracy, thresholds = risk_coverage(probs, labels)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert accuracy.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert thresholds.tolist() == pytest.approx([0.95, 0.8, 0.6, 0.55])


# --- resnet calibrate ------------------------------------------------------------------------


def test_calibrate_stores_the_temperature_in_both_checkpoints_and_the_config(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    assert main(["calibrate", str(run), "--workers", "0", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    fits = {Path(fit["checkpoint"]).name: fit for fit in result["checkpoints"]}
    assert set(fits) == {"best.pt", "last.pt"}
    for name, fit in fits.items():
        stored = load_checkpoint(run / name)
        assert stored["temperature"] == fit["temperature"] > 0
        assert stored["calibration"]["subset"] == "val" and stored["calibration"]["images"] == 3
        assert fit["nll_after"] <= fit["nll_before"] + 1e-9  # the fit minimizes the NLL; T = 1 was a candidate
    assert json.loads((run / "config.json").read_text())["temperature"] == fits["best.pt"]["temperature"]
    assert not (run / ".lock").exists()  # the run's lock was taken and given back
    model, checkpoint = load_model_from_checkpoint(run)
    assert checkpoint["temperature"] == fits["best.pt"]["temperature"]
    # The config still loads as a run's config: the temperature is beside the options, not one of them.
    from resnet.config import load_config

    assert load_config(run).arch == "resnet10"


def test_a_train_on_a_run_being_calibrated_is_told_what_holds_it(tiny_run, tmp_path, capsys, monkeypatch):
    import resnet.tools.calibration

    run = copy_run(tiny_run, tmp_path)
    fit, refused = resnet.tools.calibrate.fit_checkpoint, []

    def fit_while_a_train_tries_the_run(logits, labels, bins):
        refused.append((main(["train", "--resume", str(run), "--epochs", "2"]), capsys.readouterr().err))
        return fit(logits, labels, bins)

    monkeypatch.setattr(resnet.tools.calibrate, "fit_checkpoint", fit_while_a_train_tries_the_run)
    assert main(["calibrate", str(run), "--workers", "0", "--device", "cpu"]) == 0
    code, err = refused[0]
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{run} is in use by another resnet calibrate (process {os.getpid()} on " in err


def test_calibrate_prints_ece_before_and_after(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    assert main(["calibrate", str(run / "best.pt"), "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "ECE" in out and "->" in out
    assert "temperature" in load_checkpoint(run / "best.pt") and "temperature" not in load_checkpoint(run / "last.pt")


@pytest.mark.parametrize("subset, reason", [("test", "test split is never used"), ("all", "includes the test"),
                                            ("train", "not held out")])
def test_calibrate_refuses_what_is_not_held_out(tiny_run, tmp_path, capsys, subset, reason):
    run = copy_run(tiny_run, tmp_path)
    assert main(["calibrate", str(run), "--subset", subset]) == 2
    assert reason in one_line_error(capsys, "calibrate")
    assert "temperature" not in load_checkpoint(run / "best.pt")


def test_an_invalid_temperature_is_a_one_line_error(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    store_temperature(run / "best.pt", -1.0)
    assert main(["predict", str(run), str(tiny_run["data"] / "cat" / "0.png")]) == 2
    assert "invalid temperature -1.0" in one_line_error(capsys, "predict")


# --- the temperature in use --------------------------------------------------------------------


def test_predict_divides_by_the_stored_temperature(tiny_run, calibrated, capsys):
    paths = [tiny_run["data"] / name / "1.png" for name in tiny_run["classes"]]
    assert main(["predict", str(calibrated), *map(str, paths), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["temperature"] == FITTED
    expected = top_probabilities(calibrated, paths, FITTED)
    for prediction, row in zip(result["predictions"], expected, strict=True):
        for entry in prediction["top"]:
            assert entry["probability"] == pytest.approx(row[tiny_run["classes"].index(entry["class"])].item(),
                                                         abs=1e-5)


def test_exported_probabilities_equal_predicts(tiny_run, calibrated, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    from resnet.tools.export import load_torchscript, read_onnx_metadata

    path = tiny_run["data"] / "dog" / "2.png"
    assert main(["predict", str(calibrated), str(path), "--json", "--device", "cpu"]) == 0
    predicted = {e["class"]: e["probability"] for e in json.loads(capsys.readouterr().out)["predictions"][0]["top"]}
    _, checkpoint = load_model_from_checkpoint(calibrated)
    norm = checkpoint["normalization"]
    mean, std = torch.tensor(norm["mean"])[:, None, None], torch.tensor(norm["std"])[:, None, None]
    image = ((load_image(path, norm["image_size"]).float() / 255 - mean) / std)[None]

    onnx_file, script_file = tmp_path / "m.onnx", tmp_path / "m.torchscript.pt"
    assert main(["export", str(calibrated), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert main(["export", str(calibrated), "--format", "torchscript", "--out", str(script_file)]) == 0
    assert read_onnx_metadata(onnx_file)["temperature"] == FITTED
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: image.numpy()})[0])
    module, metadata = load_torchscript(script_file)
    assert metadata["temperature"] == FITTED
    with torch.no_grad():
        script_logits = module(image)
    for logits in (onnx_logits, script_logits):
        got = dict(zip(checkpoint["classes"], logits.softmax(1)[0].tolist()))
        assert got == pytest.approx(predicted, abs=1e-4)


def test_eval_reports_ece_and_coverage_at_the_temperature_in_use(tiny_run, calibrated, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(calibrated), "--json", "--workers", "0", "--device", "cpu", "--out", str(out),
                 "--min-confidence", "0.4"]) == 0
    result = json.loads(capsys.readouterr().out)
    val = load_splits("imagefolder", str(tiny_run["data"]), val_fraction=0.2, seed=0).eval
    probs = top_probabilities(calibrated, [Path(p) for p in val.paths], FITTED)
    labels = np.array(val.labels)
    assert result["temperature"] == FITTED and result["ece_bins"] == 15
    assert result["ece"] == pytest.approx(loop_ece(probs.double().numpy(), labels, 15), abs=1e-5)
    covered = probs.max(1).values >= 0.4
    assert result["coverage"] == pytest.approx(covered.float().mean().item())
    assert result["unknown"] == int((~covered).sum())
    right = probs.argmax(1).numpy() == labels
    expected = right[covered.numpy()].mean() if covered.any() else None
    assert result["covered_accuracy"] == (pytest.approx(expected) if expected is not None else None)
    for name in ("reliability.png", "coverage.png"):
        assert (out / name).stat().st_size > 1000
    assert main(["eval", str(calibrated), "--workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"at temperature {FITTED:g}" in text and "ECE" in text and "coverage.png" in text


# --- unknown -----------------------------------------------------------------------------------


def test_min_confidence_answers_unknown_below_it_and_the_class_above(tiny_run, calibrated, capsys):
    paths = [tiny_run["data"] / name / "0.png" for name in tiny_run["classes"]]
    tops = top_probabilities(calibrated, paths, FITTED).max(1).values.tolist()
    order = sorted(range(len(paths)), key=lambda i: tops[i])
    low, high = order[0], order[-1]
    assert tops[low] < tops[high]  # a threshold between them splits the two
    threshold = (tops[low] + tops[high]) / 2
    files = [str(paths[low]), str(paths[high])]

    assert main(["predict", str(calibrated), *files, "--json", "--device", "cpu",
                 "--min-confidence", str(threshold)]) == 0
    result = json.loads(capsys.readouterr().out)
    unsure, sure = result["predictions"]
    assert result["min_confidence"] == threshold
    assert unsure["unknown"] is True and unsure["label"] == "unknown"
    assert unsure["top_class"] == unsure["top"][0]["class"]
    assert unsure["top_probability"] == pytest.approx(tops[low], abs=1e-5)
    assert sure["unknown"] is False and sure["label"] == sure["top_class"] == sure["top"][0]["class"]

    assert main(["predict", str(calibrated), *files, "--device", "cpu", "--min-confidence", str(threshold)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{files[0]}: unknown ({unsure['top_class']} ")
    assert lines[1].startswith(f"{files[1]}: {sure['top_class']} ") and "unknown" not in lines[1]

    assert main(["predict", str(calibrated), *files, "--csv", "--device", "cpu", "--top-k", "1",
                 "--min-confidence", str(threshold)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["label"], r["unknown"]) for r in rows] == [("unknown", "true"), (sure["top_class"], "false")]
    assert rows[0]["class"] == unsure["top_class"]


def test_min_confidence_outside_zero_to_one_is_refused(calibrated, tiny_run, capsys):
    assert main(["predict", str(calibrated), str(tiny_run["data"] / "cat" / "0.png"), "--min-confidence", "1.5"]) == 2
    assert "--min-confidence must be a probability in [0, 1]" in one_line_error(capsys, "predict")


def test_the_app_answers_unknown_below_its_slider(tiny_run, calibrated):
    pytest.importorskip("captum")
    from resnet.tools.app import classify, classify_outputs

    model, checkpoint = load_model_from_checkpoint(calibrated)
    path = str(tiny_run["data"] / "fox" / "1.png")
    [plain] = classify(model, checkpoint, [path], with_cam=False)
    expected = top_probabilities(calibrated, [Path(path)], FITTED)[0]
    assert plain.top[0][1] == pytest.approx(expected.max().item(), abs=1e-5) and not plain.unknown
    for with_cam in (True, False):
        [unsure] = classify(model, checkpoint, [path], with_cam=with_cam, min_confidence=plain.top[0][1] + 1e-3)
        assert unsure.unknown and [name for name, _ in unsure.top] == [name for name, _ in plain.top]
        assert [p for _, p in unsure.top] == pytest.approx([p for _, p in plain.top], abs=1e-5)
        label, _, _, messages = classify_outputs([unsure])
        assert label.startswith(f"unknown ({plain.top[0][0]} ") and "unknown" in messages


# --- a run that was never calibrated -------------------------------------------------------------


def test_a_run_without_a_temperature_behaves_as_before(tiny_run, capsys):
    assert "temperature" not in load_checkpoint(tiny_run["ckpt"])
    model, checkpoint = load_model_from_checkpoint(tiny_run["dir"])
    assert checkpoint["temperature"] == 1.0
    path = tiny_run["data"] / "cat" / "2.png"
    assert main(["predict", str(tiny_run["dir"]), str(path), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    [prediction] = result["predictions"]
    assert set(prediction) == {"path", "top"}  # no answer fields without --min-confidence
    expected = top_probabilities(tiny_run["dir"], [path], 1.0)[0]  # the plain softmax
    for entry in prediction["top"]:
        assert entry["probability"] == pytest.approx(expected[tiny_run["classes"].index(entry["class"])].item(),
                                                     abs=1e-6)
    from resnet.tools.export import export_metadata

    assert export_metadata(checkpoint)["output"] == "logits (N, num_classes); softmax gives probabilities"
