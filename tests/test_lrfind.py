"""The learning-rate range test: resnet lr-find, resnet train --lr auto, the suggestion's rule."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from resnet.engine import lrfind
from resnet.cli import main
from resnet.engine.lrfind import BETA, RangeTest, lr_schedule, range_test, suggest

TINY = ["--dataset", "imagefolder", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--precision", "fp32", "--quiet", "--arch", "resnet10"]
SUGGESTED = re.compile(r"^suggested lr: (\S+) \(rule: (.+)\)$", re.MULTILINE)


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=4)


def read_points(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def lr_find(folder: Path, out: Path, *options: str) -> int:
    return main(["lr-find", *TINY, "--data-dir", str(folder), "--out", str(out), *options])


# --- resnet lr-find -----------------------------------------------------------------------------


def test_lr_find_writes_the_plot_and_the_points_and_suggests_an_lr_in_the_range(folder, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)  # where a run directory (runs/...) would appear
    out = tmp_path / "found"
    assert lr_find(folder, out, "--steps", "12", "--start-lr", "1e-5", "--end-lr", "1") == 0
    printed = capsys.readouterr().out
    lr, rule = SUGGESTED.search(printed).groups()
    assert rule == "valley" or rule.startswith("minimum/10")
    assert math.isfinite(float(lr)) and 1e-5 <= float(lr) <= 1
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = read_points(out / "lr_find.csv")
    assert points[0]["step"] == 1 and points[0]["lr"] == pytest.approx(1e-5)
    assert all(b["lr"] > a["lr"] for a, b in zip(points, points[1:]))  # exponentially growing
    ratios = [b["lr"] / a["lr"] for a, b in zip(points, points[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    if "stopped at step" not in printed:
        assert len(points) == 12 and points[-1]["lr"] == pytest.approx(1)
    assert points[0]["smoothed_loss"] == pytest.approx(points[0]["loss"])  # the bias correction
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.png"]
    assert not (tmp_path / "runs").exists()  # the model is thrown away: no run directory


def test_a_diverging_range_stops_before_its_last_step_and_still_suggests_a_finite_lr(folder, tmp_path, capsys):
    out = tmp_path / "found"
    assert lr_find(folder, out, "--steps", "20", "--end-lr", "1e6") == 0
    printed = capsys.readouterr().out
    stopped = re.search(r"^stopped at step (\d+) of 20 \(lr \S+\): (.+)$", printed, re.MULTILINE)
    assert stopped, printed
    assert int(stopped.group(1)) < 20 and ("diverged" in stopped.group(2) or "became" in stopped.group(2))
    points = read_points(out / "lr_find.csv")
    assert len(points) == int(stopped.group(1)) < 20
    lr = float(SUGGESTED.search(printed).group(1))
    assert math.isfinite(lr) and 1e-7 <= lr <= points[-1]["lr"]  # never at the lr that diverged


def test_the_train_options_shape_the_test(folder, tmp_path, capsys):
    """The classic pipeline, MixUp (targets become class probabilities) and weighted classes go
    through the same step as in training."""
    out = tmp_path / "found"
    assert lr_find(folder, out, "--steps", "6", "--pipeline", "classic", "--mixup", "0.4", "--balance", "loss",
                   "--optimizer", "adamw") == 0
    assert "adamw" in capsys.readouterr().out
    points = read_points(out / "lr_find.csv")
    assert len(points) == 6 and all(math.isfinite(p["smoothed_loss"]) for p in points)


def test_bad_options_are_one_line_errors(folder, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [(["--steps", "1"], "--steps must be at least 2"),
             (["--start-lr", "0"], "--start-lr must be a positive number"),
             (["--end-lr", "nan"], "--end-lr must be a positive number"),
             (["--start-lr", "0.1", "--end-lr", "0.01"], "--end-lr must be above --start-lr"),
             (["--batch-size", "0"], "--batch-size must be at least 1"),
             (["--batch-size", "1"], "--batch-size 1 gives 1 image a step: at 32 px layer4's map is 1x1")]
    for options, message in cases:
        assert lr_find(folder, tmp_path / "out", *options) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert lr_find(folder, a_file / "out") == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY, "--data-dir", str(folder), "--lr", "fast"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--lr: must be a number or auto, got 'fast'" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["lr-find", *TINY, "--data-dir", str(folder), "--out", str(tmp_path / "out"), "--lr", "0.1"])
    assert "unrecognized arguments: --lr 0.1" in capsys.readouterr().err  # the test sweeps the lr itself
    assert not (tmp_path / "out").exists()


def test_its_own_bad_options_come_before_the_training_defaults_line(tmp_path, capsys):
    small = make_image_folder(tmp_path / "small", ["a", "b"], per_class=4, size=(32, 32))
    assert main(["lr-find", "--dataset", "imagefolder", "--data-dir", str(small), "--out", str(tmp_path / "out"),
                 "--steps", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--steps must be at least 2" in err and err.count("\n") == 1


# --- resnet train --lr auto ---------------------------------------------------------------------


def test_lr_auto_trains_at_the_suggestion_and_records_it_as_a_number(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lrfind, "STEPS", 15)  # the test's length, kept short
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(folder), "--epochs", "1", "--lr", "auto", "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"^--lr auto: training at lr (\S+) \(rule: [^)]+\), from a range test of 15 steps", printed,
                      re.MULTILINE)
    assert found, printed
    config = json.loads((run / "config.json").read_text())
    assert isinstance(config["lr"], float) and config["lr"] == float(found.group(1))
    assert 1e-7 <= config["lr"] <= 10
    assert (run / "lr_find.png").is_file() and (run / "last.pt").is_file()

    def no_second_test(*args, **kwargs):
        raise AssertionError("a resumed run ran the range test again")

    monkeypatch.setattr(lrfind, "find_lr", no_second_test)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--lr", "auto", "--quiet"]) == 0
    assert "--lr auto" not in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["lr"] == config["lr"]


# --- the test and its rule, on made curves ------------------------------------------------------


def recorded(raw: list[float], stopped: str | None = None, start: float = 1e-7, end: float = 10.0) -> RangeTest:
    """A RangeTest of these raw losses, smoothed as range_test smooths them."""
    test, average = RangeTest(len(raw)), 0.0
    for i, (lr, loss) in enumerate(zip(lr_schedule(max(2, len(raw)), start, end), raw)):
        average = BETA * average + (1 - BETA) * loss
        test.lrs.append(lr)
        test.losses.append(loss)
        test.smoothed.append(average / (1 - BETA ** (i + 1)))
    test.stopped = stopped
    return test


def within(test: RangeTest, lr: float) -> bool:
    return math.isfinite(lr) and test.lrs[0] <= lr <= test.lrs[-1]


def test_the_valley_of_a_typical_curve_is_on_its_way_down():
    x = np.linspace(0, 1, 100)
    falling = 2.0 - 1.5 / (1 + np.exp(-(x - 0.5) * 20))  # falls between about x = 0.3 and 0.7
    test = recorded(list(falling + np.where(x > 0.8, (x - 0.8) * 40, 0)))
    suggestion = suggest(test)
    assert suggestion.rule == "valley" and not suggestion.flat
    assert test.lrs[30] < suggestion.lr < test.lrs[80]
    assert test.smoothed[suggestion.index] < test.smoothed[0]


@pytest.mark.parametrize("name", ["flat", "noisy", "rising", "one point", "two points"])
def test_any_curve_gives_a_finite_lr_in_its_range(name):
    rng = np.random.default_rng(0)
    raw = {"flat": [1.1] * 50, "noisy": list(1.1 + rng.normal(0, 0.2, 80)), "rising": list(np.linspace(1, 3, 60)),
           "one point": [1.0], "two points": [2.0, 1.0]}[name]
    test = recorded(raw)
    suggestion = suggest(test)
    assert within(test, suggestion.lr)
    assert float(lrfind.lr_text(suggestion.lr)) == suggestion.lr  # what is printed is what trains
    if name == "flat":
        assert suggestion.flat
    if name == "rising":
        assert suggestion.rule.startswith("minimum/10") and suggestion.lr == test.lrs[0]


def test_a_first_step_that_is_already_not_finite_is_a_one_line_error():
    with pytest.raises(lrfind.ResnetError, match="first step gave a loss of nan"):
        suggest(recorded([float("nan")], stopped="stopped at step 1 of 10: the loss became nan"))


class FakeStep:
    """A step whose loss is given: the optimizer's groups record the lr each step sets."""

    def __init__(self, losses: list[float]) -> None:
        self.losses, self.seen = iter(losses), []
        self.optimizer = torch.optim.SGD([{"params": [torch.zeros(1)], "head": True}], lr=1.0)

    def __call__(self, images, labels) -> torch.Tensor:
        self.seen.append(self.optimizer.param_groups[0]["lr"])
        return torch.tensor(next(self.losses))


def test_the_test_stops_at_a_loss_that_is_not_finite_and_at_divergence():
    from resnet.config import TrainConfig

    batches = iter(lambda: (torch.zeros(1), torch.zeros(1)), None)
    lrs = lr_schedule(10, 1e-3, 1.0)
    step = FakeStep([1.0, 0.9, 0.8, float("inf"), 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    test = range_test(step, TrainConfig(), batches, lrs, progress=False)
    assert step.seen == lrs[:4] and len(test.smoothed) == 4
    assert test.stopped.startswith("stopped at step 4 of 10") and "the loss became inf" in test.stopped
    step = FakeStep([1.0] * 3 + [200.0] * 7)  # one step far above: the average passes 4 times the lowest
    test = range_test(step, TrainConfig(), batches, lrs, progress=False)
    assert len(test.smoothed) == 4 and "diverged" in test.stopped
    assert test.smoothed[-1] > lrfind.DIVERGED * min(test.smoothed[:-1])
    assert suggest(test).index < 3  # never the point that diverged
