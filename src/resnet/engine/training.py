"""Training: one run, read top to bottom.

A run is a directory: ``config.json``, ``metrics.csv``, ``curves.png``, ``last.pt``,
``best.pt`` and ``summary.json``. ``Run`` goes through it in the order it happens, in
the shape of timm's ``train_one_epoch`` / ``validate`` and nanoGPT's loop: set up
(data, model, the run directory or the checkpoint to resume), then for each epoch
``train_one_epoch``, ``validate`` and ``end_epoch`` (metrics, plots, checkpoints), and
``finish`` (the test split, the summary).

All randomness of an epoch is derived from ``(seed, epoch, step)``, and a checkpoint
holds everything else that changes (weights, optimizer, scaler, EMA, partial-epoch
sums), so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from resnet.util import distributed
from resnet.util.files import DiskFull, save_atomic, write_text_atomic
from resnet.engine.checkpoint import RunState, checkpoint_dict, load_checkpoint, load_resume_checkpoint, restore
from resnet.engine.assembly import TrainInputs, build_parts, train_config, training_step
from resnet.config import TrainConfig, check_types
from resnet.data.cache import DecodedImages, readable_parts
from resnet.data.sources import Source
from resnet.data.datasets import load_splits
from resnet.util.distributed import Topology
from resnet.errors import ResnetError
from resnet.engine.scoring import (
    classic_eval_batches,
    classification_metrics,
    decoded_eval_batches,
    predict_logits,
    top_k,
)
from resnet.util.hardware import PRECISION_NAMES, select_device, select_precision
from resnet.engine.lrfind import with_found_lr
from resnet.models.resnet import FlipTTA
from resnet.data.pipeline import decode_for_run, load_run_data
from resnet.util.plots import evaluated, plot_curves
from resnet.engine.rundir import RunDirectory, claimed_run_dir
from resnet.engine.optim import freeze_backbone_batchnorm, group_learning_rate, learning_rate
from resnet.engine.sampling import class_count_line, format_ratio, imbalance_ratio, labels_tensor, run_epoch_batches
from resnet.util.progress import progress_bar
from resnet.util.signals import StopSignals, Stopped
from resnet.engine.trackers import open_trackers
from resnet.engine.step import check_batchnorm_can_train
from resnet.engine.graphs import GraphedStep, uses_cuda_graphs
from resnet.words import plural

METRIC_COLUMNS = ("epoch", "train_loss", "eval_loss", "top1", "top5", "macro_f1", "balanced_accuracy", "lr",
                  "images_per_s", "seconds", "train_size")
# How the metrics that --select-metric may name are printed.
METRIC_NAMES = {"top1": "top-1", "macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy"}
IMBALANCE_WARNING = 10  # a largest / smallest class ratio above this is warned of (without --balance)


class TrainingDiverged(ResnetError):
    pass


# --- choosing best.pt ------------------------------------------------------------------


def best_row(history: list[dict], metric: str) -> dict | None:
    """The evaluated epoch whose weights best.pt holds: the first with the highest ``metric``."""
    scored = [row for row in evaluated(history) if row.get(metric) is not None]
    return max(scored, key=lambda row: row[metric], default=None)


def evaluations_since_best(history: list[dict], metric: str) -> int:
    """The evaluations after best.pt's epoch: those that did not beat it (--patience counts them)."""
    best = best_row(history, metric)
    return 0 if best is None else sum(row["epoch"] > best["epoch"] for row in evaluated(history))


# --- run files -------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (a NaN or infinity is an error, not an unreadable file), written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_metrics_csv(history: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


# --- stopping on a signal -------------------------------------------------------------


def stop_requested(stop: StopSignals, topology: Topology, step: int) -> int | None:
    """The stop signal any rank saw, or None. Across processes this is a collective, so
    ranks agree only every tenth step; a single process checks every step."""
    if not topology.enabled:
        return stop.signum
    if step % 10:
        return None
    return next((signum for signum in distributed.all_gather_objects(stop.signum, topology) if signum), None)


class Interrupted(Exception):
    """A run stopped by a signal; the message says what was kept and how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = Stopped(signum).exit_status

    @classmethod
    def saved(cls, signum: int, run_dir: Path, epoch: int, step: int) -> Interrupted:
        return cls(f"stopped by {Stopped(signum).name} at epoch {epoch + 1}, step {step}; checkpoint saved. "
                   f"Continue with: resnet train --resume {run_dir}", signum)

    @classmethod
    def at_once(cls, stopped: Stopped, run_dir: RunDirectory | None) -> Interrupted:
        """A signal outside the loop's step boundaries (or a second one): nothing new was saved."""
        said = f"stopped by {stopped.name}"
        if run_dir is None:
            return cls(said, stopped.signum)
        if (run_dir.path / "last.pt").exists():
            return cls(f"{said}; {run_dir.path / 'last.pt'} is the last checkpoint. "
                       f"Continue with: resnet train --resume {run_dir.path}", stopped.signum)
        if run_dir.fresh:
            return cls(f"{said} before the first checkpoint: nothing to keep (no run directory left)",
                       stopped.signum)
        return cls(f"{said} before the first checkpoint; resnet train --resume {run_dir.path} starts it over",
                   stopped.signum)


def done_line(summary: dict[str, Any]) -> str:
    """The last line of a run: its final scores, best.pt's (chosen by ``select_metric``), the test's."""
    metric = summary["select_metric"]
    test = f", test top-1 {100 * summary['test_top1']:.2f}%" if "test_top1" in summary else ""
    return (f"done: final top-1 {percent(summary['final_top1'])}, balanced accuracy "
            f"{percent(summary['final_balanced_accuracy'])}, macro-F1 {percent(summary['final_macro_f1'])} "
            f"(best {METRIC_NAMES[metric]} {percent(summary['best_' + metric])} at epoch {summary['best_epoch']})"
            f"{test}")


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.2f}%"


# --- the run ----------------------------------------------------------------------------


def train(config: TrainConfig, resume: Path | None = None, find_lr: bool = False) -> dict[str, Any]:
    """Train as the config says; returns the run summary (also written to summary.json).
    The run directory is claimed for the whole run, and SIGINT and SIGTERM stop it cleanly.
    ``find_lr`` (--lr auto): a fresh run trains at the lr a range test suggests, run first in
    its directory (lr_find.png); config.json then records that lr, which a resume keeps."""
    topology = distributed.init_distributed(select_device(config.device).type)
    run_dir = None
    try:
        with StopSignals() as stop, claimed_run_dir(config, resume, topology) as run_dir:
            if find_lr:
                config = with_found_lr(config, run_dir.path, topology, stop.check)
            return Run(config, topology, run_dir.path, stop, resumed=resume is not None).fit()
    except Stopped as stopped:
        raise Interrupted.at_once(stopped, run_dir) from None
    finally:
        distributed.shutdown(topology)


def train_with_options(options: dict[str, Any], resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """``resnet train`` and ``resnet.train``: the run that the options describe (None: not given;
    ``lr`` may be ``auto``, the range test's suggestion), or the one ``resume`` continues, which
    keeps the lr it found. Returns the run summary."""
    find_lr = options.get("lr") == "auto"
    if find_lr:  # the recipe's lr until the range test's replaces it
        options = {**options, "lr": None}
    # The command's parser gave every value its type; a Python caller may not have.
    check_types(TrainConfig.from_dict({name: value for name, value in options.items() if value is not None}))
    config = train_config(options, resume)
    return train(config, Path(resume) if resume is not None else None, find_lr=find_lr and resume is None)


class Run:
    """One training run in its claimed directory: set up on construction, then ``fit``."""

    # --- set up ---

    def __init__(self, config: TrainConfig, topology: Topology, run_dir: Path, stop: StopSignals,
                 resumed: bool = False) -> None:
        self.config, self.topology, self.run_dir, self.stop = config, topology, run_dir, stop
        self.resume = run_dir if resumed else None
        self.main = topology.is_main
        self.device = select_device(config.device, topology)
        self.dtype = select_precision(config.precision, self.device)
        uses_cuda_graphs(config, self.device, topology)  # --cuda-graphs on where it cannot be: before the data
        if config.batch_size % topology.world_size:
            raise ResnetError(f"--batch-size {config.batch_size} must be divisible by the "
                              f"{topology.world_size} processes")
        # Read before the data: an unreadable checkpoint is reported before a long decode.
        self.checkpoint = load_resume_checkpoint(run_dir) if resumed else None
        self.tracker = open_trackers(config.log, run_dir, self.main)  # a missing package: before the data too
        self.splits = load_splits(config.dataset, config.data_dir, config.split, config.val_fraction, config.seed,
                                  labels=config.labels)
        self.train_labels = labels_tensor(self.splits.train)
        self.check_batchnorm_can_train()
        self.build_modules()
        self.load_data()
        self.wrap_for_training()
        self.state = self.restore_or_start()

    def build_modules(self) -> None:
        """The model (seeded), its optimizer, the fp16 GradScaler and the optional EMA."""
        parts = build_parts(self.config, len(self.splits.classes), self.device, self.dtype, self.topology)
        self.parts = parts
        self.model, self.optimizer, self.scaler, self.ema = parts.model, parts.optimizer, parts.scaler, parts.ema

    def check_batchnorm_can_train(self) -> None:
        check_batchnorm_can_train(self.config, self.epoch_batches(0), len(self.splits.train),
                                  self.topology.world_size)

    def load_data(self) -> None:
        """Decode the splits (the fast pipeline's caches; the classic one's check of each file)."""
        data = load_run_data(self.splits, self.config, self.topology, check_stop=self.stop.check)
        self.stop.check()  # a request made where it could not raise, with nothing left to decode
        self.splits, self.eval_data = data.splits, data.eval
        self.train_labels = labels_tensor(self.splits.train)  # less the unreadable files
        self.class_counts = torch.bincount(self.train_labels, minlength=len(self.splits.classes))
        self.inputs = TrainInputs(self.config, data, self.device, self.topology)
        self.check_batchnorm_can_train()  # again: unreadable files may have left fewer images
        self.steps_per_epoch = len(self.epoch_batches(0))

    def restore_or_start(self) -> RunState:
        """Resume from last.pt, or start: a run stopped before its first checkpoint starts
        over. config.json records the config either way (a resume may change a few options)."""
        state = RunState()
        if self.checkpoint is not None:
            state = restore(self.checkpoint, self.model, self.optimizer, self.scaler, self.ema)
            self.checkpoint = None
            self.log(f"resuming {self.resume} at epoch {state.epoch + 1}, step {state.step}")
        elif self.resume is not None:
            self.log(f"{self.resume} has no checkpoint yet (it stopped during its first epoch): starting it over")
        if self.main:
            write_text_atomic(self.run_dir / "config.json", self.config.to_json())
        return state

    def wrap_for_training(self) -> None:
        """DDP and torch.compile around the model for training; evaluation uses the plain
        model (or its EMA), each rank scoring its share."""
        self.step = training_step(self.config, self.parts, self.device, self.dtype, self.class_counts, self.topology)
        eval_model: nn.Module = self.ema.module if self.ema is not None else self.model
        self.eval_model = FlipTTA(eval_model) if self.config.tta else eval_model

    # --- the epochs ---

    def fit(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        self.log_start()
        self.stop.check()
        self.tracker.start(self.config, self.state.history)
        try:
            with self.stop.deferred():
                while self.state.epoch < self.config.epochs and not self.patience_spent():
                    trained = self.train_one_epoch()
                    evaluates = self.config.evaluates_after(self.state.epoch)
                    self.end_epoch(trained, self.validate(self.splits.eval, self.eval_data) if evaluates else None)
            if self.stopped_early():
                self.log(self.early_stop_line())
            summary = self.finish()
        except BaseException as error:
            killed = isinstance(error, (Interrupted, Stopped, KeyboardInterrupt))
            self.tracker.finish(None, "KILLED" if killed else "FAILED")
            raise
        self.tracker.finish(summary)
        return summary

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        return run_epoch_batches(self.config, self.train_labels, epoch, self.topology.world_size)

    def train_one_epoch(self) -> dict[str, float]:
        """The epoch's remaining steps; returns its training metrics."""
        state, epoch = self.state, self.state.epoch
        batches = self.epoch_batches(epoch)
        self.step.model.train()
        if self.config.freeze_backbone:
            freeze_backbone_batchnorm(self.model)
        self.epoch_start = time.perf_counter()
        images_at_start = state.images_seen
        loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=self.device)
        bar = progress_bar(len(batches), f"epoch {epoch + 1}/{self.config.epochs}",
                           wanted=self.main and not self.config.quiet, initial=state.step)
        for step, images, labels in self.inputs.epoch(epoch, batches, first=state.step):
            self.set_learning_rate(epoch, step)
            loss = self.step(*self.inputs.mixed(images, labels, epoch, step))  # labels stay the class indices
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.double() * len(labels)
            state.images_seen += len(labels)
            state.step = step + 1
            if step % 10 == 0 or state.step == len(batches):
                self.check_finite(loss.item(), epoch, step)  # a sync with the device: not every step
                seconds = time.perf_counter() - self.epoch_start
                speed = (state.images_seen - images_at_start) / seconds
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{speed:.0f}")
            bar.update(1)
            signum = stop_requested(self.stop, self.topology, step)
            if signum:
                state.loss_sum = loss_sum.item()
                bar.close()
                self.save_checkpoint("last.pt")
                raise Interrupted.saved(signum, self.run_dir, epoch, state.step)
        bar.close()
        state.loss_sum = loss_sum.item()
        return self.training_metrics(images_at_start)

    def set_learning_rate(self, epoch: int, step: int) -> None:
        lr = learning_rate(self.config, epoch * self.steps_per_epoch + step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group_learning_rate(self.config, lr, group["head"], epoch)

    def check_finite(self, loss: float, epoch: int, step: int) -> None:
        """Stop on a NaN or infinite loss, naming the last checkpoint only if there is one."""
        if math.isfinite(loss):
            return
        last = self.run_dir / "last.pt"
        kept = f"Last good checkpoint: {last}" if last.exists() else "No checkpoint was saved before it"
        raise TrainingDiverged(f"the training loss became {loss} at epoch {epoch + 1}, step {step}; stopped. "
                               f"{kept}; start a new run with a lower --lr")

    def training_metrics(self, images_at_start: int) -> dict[str, float]:
        """The epoch's mean training loss and throughput over every rank."""
        state, world_size = self.state, self.topology.world_size
        seconds = time.perf_counter() - self.epoch_start
        totals = distributed.all_reduce_sum(
            torch.tensor([state.loss_sum, state.images_seen], dtype=torch.float64, device=self.device), self.topology)
        last_step = (state.epoch + 1) * self.steps_per_epoch - 1
        return {"train_loss": totals[0].item() / totals[1].item(),
                "lr": learning_rate(self.config, last_step, self.steps_per_epoch),
                "images_per_s": (totals[1].item() - images_at_start * world_size) / seconds}

    def validate(self, source: Source, data: DecodedImages | None) -> dict[str, float]:
        """Loss (unweighted, whatever --balance), top-1, top-k, macro-F1 and balanced accuracy of the
        evaluated model (EMA, flip TTA) over all ranks' shares."""
        batch = max(1, self.config.batch_size // self.topology.world_size)
        if data is not None:
            batches = decoded_eval_batches(data, batch, self.device, self.topology)
        else:
            batches = classic_eval_batches(source, self.config.resolved_eval_image_size(), batch,
                                           self.config.workers, self.topology)
        logits, labels = predict_logits(self.eval_model, batches, self.device, self.dtype, self.topology)
        return classification_metrics(logits, labels)

    def end_epoch(self, trained: dict[str, float], metrics: dict[str, float] | None) -> None:
        """Record the epoch: the metrics row (with evaluation columns when it evaluated),
        last.pt (and best.pt), metrics.csv, curves.png."""
        state = self.state
        row = {"epoch": state.epoch + 1, "train_loss": trained["train_loss"], "lr": trained["lr"],
               "images_per_s": trained["images_per_s"], "seconds": time.perf_counter() - self.epoch_start,
               "train_size": self.config.image_size_at(state.epoch)}
        if metrics is not None:
            row.update(eval_loss=metrics["loss"], top1=metrics["top1"], top5=metrics["top5"],
                       macro_f1=metrics["macro_f1"], balanced_accuracy=metrics["balanced_accuracy"])
        state.history.append(row)
        state.epoch, state.step, state.loss_sum, state.images_seen = state.epoch + 1, 0, 0.0, 0
        if metrics is not None and best_row(state.history, self.config.select_metric) is row:
            # best.pt first: last.pt, which resumes the run, then never records a best
            # score whose weights were not written. best_top1 is best.pt's top-1.
            state.best_top1 = row["top1"]
            self.save_checkpoint("best.pt")
        self.save_checkpoint("last.pt")
        if self.main:
            write_metrics_csv(state.history, self.run_dir / "metrics.csv")
            plot_curves(state.history, self.run_dir / "curves.png", f"{self.config.arch} on {self.config.dataset}")
            tqdm.write(self.epoch_line(row), file=sys.stdout)
            self.tracker.log_epoch(row)

    def epoch_line(self, row: dict[str, Any]) -> str:
        line = f"epoch {row['epoch']:>3}/{self.config.epochs}  train loss {row['train_loss']:.4f}  "
        if "top1" in row:
            k = top_k(len(self.splits.classes))
            line += (f"eval loss {row['eval_loss']:.4f}  top-1 {100 * row['top1']:5.2f}%  "
                     f"top-{k} {100 * row['top5']:5.2f}%  balanced {100 * row['balanced_accuracy']:5.2f}%  "
                     f"macro-F1 {100 * row['macro_f1']:5.2f}%  ")
        return line + (f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s  "
                       f"{row['train_size']} px")

    # --- finish ---

    def finish(self) -> dict[str, Any]:
        """The summary (with the test split's score under the official protocol), summary.json."""
        summary = self.summary()
        if self.splits.test is not None:
            summary.update(self.score_test())
        if self.main:
            write_json(self.run_dir / "summary.json", summary)
            self.log(f"{done_line(summary)}; outputs in {self.run_dir}")
        return summary

    def summary(self) -> dict[str, Any]:
        """The run in brief. ``best_*``: the scores of the epoch best.pt holds, the one with the
        best ``select_metric``; ``final_*``: the last epoch's."""
        config, splits, history = self.config, self.splits, self.state.history
        best = best_row(history, config.select_metric)
        return {
            "run_dir": str(self.run_dir),
            "arch": config.arch,
            "dataset": config.dataset,
            "split": config.split if config.dataset == "flowers102" else None,  # a split scheme is flowers102's
            "train_images": len(splits.train),
            "eval_images": len(splits.eval),
            "eval_split": splits.eval_name,
            "num_classes": len(splits.classes),
            "epochs": len(history),
            "final_top1": history[-1]["top1"],
            "final_top5": history[-1]["top5"],
            # None: an epoch evaluated before these metrics were (a finished run of an older
            # version, resumed without more epochs)
            "final_macro_f1": history[-1].get("macro_f1"),
            "final_balanced_accuracy": history[-1].get("balanced_accuracy"),
            "select_metric": config.select_metric,
            "best_epoch": best["epoch"],
            "best_top1": best["top1"],
            "best_macro_f1": best.get("macro_f1"),
            "best_balanced_accuracy": best.get("balanced_accuracy"),
            "seconds": sum(row["seconds"] for row in history),
            "seconds_this_process": time.perf_counter() - self.started,  # since this start or resume
            "skipped_files": splits.skipped,
            "stopped_early": self.stopped_early(),
            "stopped_epoch": history[-1]["epoch"] if self.stopped_early() else None,
        }

    def score_test(self) -> dict[str, Any]:
        """The official protocol: the weights chosen on val (best.pt) are scored once on test.
        Rank 0 reads best.pt and sends it to the other ranks, which may not share its disk."""
        best = distributed.broadcast_object(load_checkpoint(self.run_dir / "best.pt") if self.main else None,
                                            self.topology)
        self.model.load_state_dict(best["ema"] if self.ema is not None and best.get("ema") else best["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(best["ema"] or best["model"])
        fast = self.config.pipeline == "fast"
        size = self.config.resolved_eval_image_size() if fast else 0
        decoded = decode_for_run(self.splits.test, size, self.config, self.topology, check_stop=self.stop.check)
        [(test_source, test_data)], _ = readable_parts([(self.splits.test, decoded)], self.config.strict)
        test = self.validate(test_source, test_data if fast else None)
        return {"test_images": len(test_source), "test_top1": test["top1"], "test_top5": test["top5"],
                "test_macro_f1": test["macro_f1"], "test_balanced_accuracy": test["balanced_accuracy"]}

    # --- early stopping ---

    def patience_spent(self) -> bool:
        """Whether --patience evaluations have passed without a better score. Counted from the
        history, which the checkpoint holds: a resumed run counts the evaluations before it."""
        patience = self.config.patience
        return patience > 0 and evaluations_since_best(self.state.history, self.config.select_metric) >= patience

    def stopped_early(self) -> bool:
        return self.state.epoch < self.config.epochs and self.patience_spent()

    def early_stop_line(self) -> str:
        metric, history = self.config.select_metric, self.state.history
        best, since = best_row(history, metric), evaluations_since_best(history, metric)
        return (f"stopped early after epoch {history[-1]['epoch']} of {self.config.epochs}: {METRIC_NAMES[metric]} "
                f"has not improved for {since} evaluation{'s' * (since != 1)} (best {percent(best[metric])} at "
                f"epoch {best['epoch']}, in best.pt)")

    # --- helpers ---

    def save_checkpoint(self, name: str) -> None:
        if not self.main:
            return
        try:
            save_atomic(checkpoint_dict(self.config, self.splits.classes, self.model, self.optimizer, self.scaler,
                                        self.ema, self.state), self.run_dir / name)
        except DiskFull as error:
            if not (self.run_dir / "last.pt").exists():
                raise
            raise ResnetError(f"{error}; free some space and continue with: resnet train --resume {self.run_dir}"
                              ) from None

    def log(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def log_start(self) -> None:
        config, splits = self.config, self.splits
        self.log(f"run {self.run_dir}: {config.arch} on {config.dataset} ({len(splits.train)} training / "
                 f"{plural(len(splits.eval), 'evaluation image')} ('{splits.eval_name}'), "
                 f"{plural(len(splits.classes), 'class')}), "
                 f"{self.device.type} {PRECISION_NAMES[self.dtype]}, {config.pipeline} pipeline"
                 + (", CUDA graphs" if isinstance(self.step, GraphedStep) else ""))
        counts = self.class_counts.tolist()
        self.log(class_count_line(counts, config.balance))
        if self.main and config.balance == "none" and imbalance_ratio(counts) > IMBALANCE_WARNING:
            warnings.warn(f"the classes are imbalanced ({format_ratio(imbalance_ratio(counts))}:1 between the "
                          "largest and the smallest): consider --balance loss or --balance sampler, and "
                          "--select-metric balanced_accuracy or macro_f1", stacklevel=2)
