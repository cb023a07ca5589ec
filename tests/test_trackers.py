"""Experiment trackers (--log tensorboard, mlflow) and logs that read well in a file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from conftest import read_metrics
from resnet.util import progress
from resnet.cli import main
from resnet.config import resolve_config
from resnet.errors import ResnetError
from resnet.engine.trackers import MLflowTracker, Tracker, Trackers, tracker_names

TINY = ["--dataset", "imagefolder", "--epochs", "2", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--precision", "fp32", "--quiet", "--arch", "resnet10"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --- choosing trackers ------------------------------------------------------------------------


def test_log_names_trackers_comma_separated_and_refuses_others(capsys):
    assert tracker_names("") == []
    assert tracker_names("tensorboard, mlflow,tensorboard") == ["tensorboard", "mlflow"]
    assert resolve_config({"log": "mlflow"}).log == "mlflow"
    with pytest.raises(ResnetError, match="--log must name trackers among tensorboard, mlflow .* got 'wandb'"):
        resolve_config({"log": "tensorboard,wandb"})
    assert main(["train", "--log", "wandb"]) == 2
    assert "got 'wandb'" in one_line_error(capsys)


@pytest.mark.parametrize("package, name", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"),
                                           ("sqlalchemy", "mlflow")])
def test_a_missing_tracker_package_is_one_line_before_any_decode(folder, tmp_path, monkeypatch, capsys, package,
                                                                 name):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if package != name:  # mlflow itself imported whole first: one imported without SQLAlchemy stays so
        pytest.importorskip(name)
    monkeypatch.setitem(sys.modules, package, None)  # what an import of a package not installed meets
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(folder), "--out", str(run_dir), "--log", name]) == 2
    assert one_line_error(capsys) == f'resnet train: error: --log {name} needs {package}: ' \
                                     f'pip install "resnet-lab[{name}]"'
    assert not run_dir.exists() and not (tmp_path / "cache").exists()  # nothing decoded, no run left


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_warning():
    class Failing(Tracker):
        name = "failing"

        def log_epoch(self, row):
            raise OSError("disk full")

    class Counting(Tracker):
        rows = 0

        def log_epoch(self, row):
            self.rows += 1

    counting = Counting()
    trackers = Trackers([Failing(), counting])
    with pytest.warns(UserWarning, match="--log failing stopped logging .OSError: disk full.; the run goes on"):
        trackers.log_epoch({"epoch": 1})
    trackers.log_epoch({"epoch": 2})  # no second warning: it is gone
    assert counting.rows == 2 and len(trackers.trackers) == 1


# --- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_each_epochs_metrics(folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(folder), "--out", str(run_dir), "--epochs", "1"]) == 0
    # Added on resume: the epoch trained before is logged first, from the checkpoint's history.
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--log", "tensorboard"]) == 0
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rows = read_metrics(run_dir)
    for tag, column in [("eval/top1", "top1"), ("eval/balanced_accuracy", "balanced_accuracy"),
                        ("eval/macro_f1", "macro_f1"), ("train/loss", "train_loss"), ("train/lr", "lr"),
                        ("eval/loss", "eval_loss"), ("train/images_per_s", "images_per_s")]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
    assert [s.value for s in events.Scalars("train/image_size")] == [32, 32]
    assert events.Tags()["images"] == ["curves"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the config
    assert json.loads((run_dir / "summary.json").read_text())["stopped_early"] is False


# --- MLflow -------------------------------------------------------------------------------------


def test_an_mlflow_run_holds_the_metrics_and_a_resume_continues_it(folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "--data-dir", str(folder), "--out", str(run_dir), "--log", "mlflow"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0  # the run goes on: same MLflow run

    record = json.loads((run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    [run] = client.search_runs([client.get_experiment_by_name("resnet").experiment_id])
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
    rows = read_metrics(run_dir)
    for tag, column in [("eval/top1", "top1"), ("eval/top5", "top5"), ("train/lr", "lr")]:
        history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], tag
        assert [m.value for m in history] == pytest.approx([float(r[column]) for r in rows]), tag
    assert run.data.params["arch"] == "resnet10" and run.data.params["epochs"] == "1"  # a first value stays
    assert run.data.tags["checkpoint"] == str((run_dir / "last.pt").resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"curves.png", "summary.json"}
    assert (run_dir / "mlartifacts").is_dir()  # in the run directory, not the working directory


def test_mlflow_uses_the_tracking_uri_of_the_environment_unless_the_run_has_one(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert MLflowTracker(tmp_path).uri == "http://tracking.example:5000"
    (tmp_path / "mlflow.json").write_text(json.dumps({"tracking_uri": "sqlite:////elsewhere/mlflow.db",
                                                      "run_id": "abc"}))
    assert MLflowTracker(tmp_path).uri == "sqlite:////elsewhere/mlflow.db"  # a resumed run stays in its store


# --- logs in a file -----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_are_drawn_on_a_terminal_only_and_never_when_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.bars_shown() and not progress.bars_shown(wanted=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.bars_shown()
    monkeypatch.setattr(sys, "stderr", None)
    assert not progress.bars_shown()


def test_a_train_log_in_a_file_has_no_progress_bars(folder, tmp_path):
    run_dir = tmp_path / "run"
    args = [a for a in TINY if a != "--quiet"] + ["--epochs", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-m", "resnet", "train", *args, "--data-dir", str(folder),
                           "--out", str(run_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\r" not in done.stdout
    assert "decoding 15 images" in done.stderr  # the start lines stay
    assert [line.split()[:2] for line in done.stdout.splitlines() if line.startswith("epoch")] == \
           [["epoch", "1/1"]]


def test_a_check_report_in_a_file_has_no_progress_bar(folder, capsys):
    pytest.importorskip("imagehash")
    main(["check", str(folder), "--workers", "1"])
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "class" in captured.out


def test_an_lr_find_log_in_a_file_has_no_progress_bar(folder, tmp_path, capsys):
    args = [a for a in TINY if a not in ("--quiet",)]
    assert main(["lr-find", *args, "--data-dir", str(folder), "--steps", "5", "--out", str(tmp_path / "lr")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "suggested lr:" in captured.out
