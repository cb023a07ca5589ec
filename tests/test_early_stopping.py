"""--patience: a run stops when its select metric has not improved for N evaluations."""

from __future__ import annotations

import json
import signal
from dataclasses import replace

import pytest

from conftest import read_metrics
from resnet.engine import training
from resnet.cli import main
from resnet.config import load_config, resolve_config, resume_config
from resnet.errors import ResnetError
from resnet.engine.optim import learning_rate
from resnet.engine.sampling import epoch_batches
from resnet.engine.training import evaluations_since_best

# A run that cannot improve: the backbone frozen (its BatchNorm statistics too) and the head's
# lr too small to move a logit, so every evaluation scores what the first one did.
STUCK = ["--dataset", "imagefolder", "--epochs", "6", "--image-size", "32", "--batch-size", "4", "--workers", "0",
         "--precision", "fp32", "--quiet", "--freeze-backbone", "--lr", "1e-9", "--warmup-epochs", "0",
         "--eval-every", "1", "--patience", "2", "--arch", "resnet10"]


def test_evaluations_since_best_counts_those_after_the_first_best():
    rows = [{"epoch": 1, "top1": 0.5}, {"epoch": 2}, {"epoch": 3, "top1": 0.7}, {"epoch": 4, "top1": 0.7},
            {"epoch": 5}, {"epoch": 6, "top1": 0.6}]
    assert evaluations_since_best(rows, "top1") == 2  # epochs 4 (a tie is no improvement) and 6
    assert evaluations_since_best(rows[:3], "top1") == 0
    assert evaluations_since_best([{"epoch": 1}], "top1") == 0  # nothing evaluated yet
    assert evaluations_since_best(rows, "macro_f1") == 0  # no row has it: no best to count from


def test_patience_stops_a_run_that_cannot_improve_on_the_full_runs_schedule(folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *STUCK, "--data-dir", str(folder), "--out", str(run_dir)]) == 0
    assert "stopped early after epoch 3 of 6: top-1 has not improved for 2 evaluations" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["stopped_early"], summary["stopped_epoch"], summary["epochs"]) == (True, 3, 3)
    assert summary["best_epoch"] == 1
    rows = read_metrics(run_dir)
    assert len(rows) == 3 and len({r["top1"] for r in rows}) == 1
    config = load_config(run_dir)
    steps = len(epoch_batches(summary["train_images"], config.batch_size, config.seed, 0, 1))
    last_step = 3 * steps - 1
    assert float(rows[-1]["lr"]) == learning_rate(config, last_step, steps)  # the cosine of 6 epochs
    assert float(rows[-1]["lr"]) != pytest.approx(learning_rate(replace(config, epochs=3), last_step, steps))


def test_a_resumed_run_counts_the_evaluations_before_it(folder, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    calls = iter(range(10**6))
    with monkeypatch.context() as patch:
        # 15 training images in batches of 4: 4 steps an epoch; Ctrl-C in epoch 3, after its first step.
        patch.setattr(training, "stop_requested", lambda stop, topology, step: signal.SIGINT
                      if next(calls) == 2 * 4 else None)
        assert main(["train", *STUCK, "--data-dir", str(folder), "--out", str(run_dir)]) == 130
    assert len(read_metrics(run_dir)) == 2
    assert main(["train", "--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["stopped_early"], summary["stopped_epoch"]) == (True, 3)  # not 3 evaluations more


def test_patience_is_a_count_of_evaluations_and_old_configs_load_without_it(tmp_path):
    assert resolve_config({}).patience == 0 and resolve_config({}).log == ""
    with pytest.raises(ResnetError, match="--patience must be at least 0, got -1"):
        resolve_config({"patience": -1})
    saved = json.loads(resolve_config({}).to_json())
    del saved["patience"], saved["log"]  # a config.json from before these options
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert (load_config(tmp_path).patience, load_config(tmp_path).log) == (0, "")
    resumed = resume_config(tmp_path, {"patience": 3, "log": "tensorboard"})  # may change on resume
    assert (resumed.patience, resumed.log) == (3, "tensorboard")
