"""Experiment trackers: a run's metrics in TensorBoard or MLflow, beside its own files.

``--log tensorboard,mlflow`` names them. A run tells its tracker three things, in order:
``start`` (the config as parameters; a resumed run continues the tracker's run where it
can), ``log_epoch`` (each metrics row, the epoch as the step) and ``finish`` (curves.png,
the checkpoints' paths and the summary's scores, or how an interrupted or failed run ended).

Both packages are optional. They are imported when the run is set up, so a missing one is
one line before any image is decoded, not an error after the first epoch. Only the main
process of a distributed run tracks; the others get ``Trackers([])``, which does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from resnet.config import tracker_names
from resnet.errors import ResnetError
from resnet.util.optional import require
from resnet.util.files import write_text_atomic

if TYPE_CHECKING:
    from resnet.config import TrainConfig


# metrics.csv's columns under the names both trackers show, grouped as TensorBoard groups tags.
TAGS = {"train_loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s",
        "train_size": "train/image_size", "seconds": "train/seconds", "eval_loss": "eval/loss",
        "top1": "eval/top1", "top5": "eval/top5", "macro_f1": "eval/macro_f1",
        "balanced_accuracy": "eval/balanced_accuracy"}
# The summary's scores of the test split (the official protocol), logged once at the end.
TEST_TAGS = {"test_top1": "test/top1", "test_top5": "test/top5", "test_macro_f1": "test/macro_f1",
             "test_balanced_accuracy": "test/balanced_accuracy"}


def required(module: str, extra: str) -> ModuleType:
    return require(module, extra, f"--log {extra}")


class Tracker:
    """What a run tells a tracker. Each method of this base class does nothing."""

    name = "none"

    def start(self, config: TrainConfig, history: list[dict[str, Any]]) -> None:
        """``history``: the metrics rows a resumed run's checkpoint holds (none for a fresh run); a
        tracker's run that begins with a resumed one (--log added on resume) is given them first."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row; the evaluation columns only when the epoch evaluated."""

    def finish(self, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        """``summary``: summary.json's content; None when the run stopped before it (``status``
        KILLED: a signal, FAILED: an error)."""


class Trackers(Tracker):
    """Every tracker a run asked for. One whose store fails after the start is dropped with a
    warning: a full disk or a lost server should not end a long run that keeps its own files."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start(self, config: TrainConfig, history: list[dict[str, Any]]) -> None:
        for tracker in self.trackers:
            try:
                tracker.start(config, history)
            except ResnetError:
                raise
            except Exception as error:  # a bad tracking URI, an unreachable server: before any epoch
                raise ResnetError(f"--log {tracker.name} could not start ({type(error).__name__}: "
                                  f"{one_line(error)})") from None

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.each("log_epoch", row)

    def finish(self, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        self.each("finish", summary, status)

    def each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:
                self.trackers.remove(tracker)
                warnings.warn(f"--log {tracker.name} stopped logging ({type(error).__name__}: {one_line(error)}); "
                              "the run goes on without it", stacklevel=2)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def open_trackers(text: str, run_dir: Path, main: bool = True) -> Trackers:
    """The trackers ``--log`` names for the run in ``run_dir``, their packages imported now."""
    if not main:
        return Trackers([])
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    return Trackers([kinds[name](Path(run_dir)) for name in tracker_names(text)])


# --- TensorBoard ------------------------------------------------------------------------------


class TensorBoardTracker(Tracker):
    """Event files in RUN/tensorboard/: ``tensorboard --logdir runs`` shows every run under runs/."""

    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        required("tensorboard", "tensorboard")  # torch.utils.tensorboard's own error is a traceback
        self.summary_writer = required("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self.run_dir, self.folder = run_dir, run_dir / "tensorboard"

    def start(self, config: TrainConfig, history: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard.summary import hparams

        resumed = self.folder.is_dir()
        # On resume, events past the checkpoint's epochs (a run killed between the two) are hidden.
        self.writer = self.summary_writer(str(self.folder), purge_step=len(history) + 1 if resumed else None)
        if not resumed:  # the parameters are the run's from its start; written once
            metrics = {tag: 0.0 for tag in TAGS.values() if tag.startswith("eval/")}
            for summary in hparams(asdict(config), metrics):
                self.writer.file_writer.add_summary(summary)
            for row in history:
                self.log_epoch(row)
        self.writer.flush()

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # a live TensorBoard sees each epoch, not one flush every two minutes

    def finish(self, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        if summary is not None:
            import numpy as np
            from PIL import Image

            step = summary["epochs"]
            for key, tag in TEST_TAGS.items():
                if summary.get(key) is not None:
                    self.writer.add_scalar(tag, summary[key], step)
            curves = self.run_dir / "curves.png"
            if curves.exists():
                with Image.open(curves) as image:
                    self.writer.add_image("curves", np.asarray(image.convert("RGB")), step, dataformats="HWC")
            self.writer.add_text("checkpoint", f"last: {self.run_dir / 'last.pt'}  \nbest: {self.run_dir / 'best.pt'}",
                                 step)
        self.writer.close()


# --- MLflow -----------------------------------------------------------------------------------


class MLflowTracker(Tracker):
    """A run in MLFLOW_TRACKING_URI's store when it is set, else in a SQLite store of the run's own
    (RUN/mlflow.db, artifacts in RUN/mlartifacts/): ``mlflow ui --backend-store-uri
    sqlite:///RUN/mlflow.db``. RUN/mlflow.json keeps the store and the run's id, so that a resumed
    run continues the same MLflow run."""

    name = "mlflow"
    RECORD = "mlflow.json"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.saved = read_record(run_dir / self.RECORD)
        self.own_store = not (self.saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"))
        self.uri = self.saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or \
            "sqlite:///" + str(run_dir.resolve() / "mlflow.db")
        self.mlflow = required("mlflow", "mlflow")
        if self.uri.startswith("sqlite:"):  # MLflow's database store: not in mlflow-skinny's own requirements
            required("sqlalchemy", "mlflow")
            required("alembic", "mlflow")

    def start(self, config: TrainConfig, history: list[dict[str, Any]]) -> None:
        from mlflow.tracking import MlflowClient

        with mlflow_info_hidden():  # the store's set-up says each step at INFO
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self.continued_run()
            if self.run_id is None:
                self.run_id = self.new_run()
                for row in history:
                    self.log_epoch(row)
        write_record(self.run_dir / self.RECORD, {"tracking_uri": self.uri, "run_id": self.run_id})
        logged = self.client.get_run(self.run_id).data.params
        # A value that changed on resume (--epochs) keeps its first one: MLflow refuses a change.
        params = [self.mlflow.entities.Param(key, str(value)) for key, value in asdict(config).items()
                  if key not in logged]
        for first in range(0, len(params), 100):  # MLflow's limit of parameters in one batch
            self.client.log_batch(self.run_id, params=params[first:first + 100])

    def continued_run(self) -> str | None:
        run_id = self.saved.get("run_id")
        if not run_id:
            return None
        try:
            self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException:  # the store was moved or emptied: a new run
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def new_run(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "resnet")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # In the run's own store its artifacts stay in the run directory, not in the
            # working directory's ./mlartifacts, MLflow's default for a database store.
            location = (self.run_dir.resolve() / "mlartifacts").as_uri() if self.own_store else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"resnet.run_dir": str(self.run_dir.resolve())})
        return run.info.run_id

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.log_metrics(row, TAGS, row["epoch"])

    def log_metrics(self, values: dict[str, Any], tags: dict[str, str], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.mlflow.entities.Metric(tag, float(values[key]), now, step)
                   for key, tag in tags.items() if values.get(key) is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        if summary is not None:
            self.log_metrics(summary, TEST_TAGS, summary["epochs"])
            for name in ("curves.png", "summary.json"):
                if (self.run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            self.client.set_tag(self.run_id, "checkpoint", str((self.run_dir / "last.pt").resolve()))
            self.client.set_tag(self.run_id, "best_checkpoint", str((self.run_dir / "best.pt").resolve()))
        self.client.set_terminated(self.run_id, status=status)


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: a new MLflow run
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


@contextmanager
def mlflow_info_hidden() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
