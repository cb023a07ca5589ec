"""Class imbalance: --balance loss and sampler on a 20:1 set (what the loss sees, counted) and
their resume; macro-F1, balanced accuracy and the per-class columns against a direct computation;
--select-metric choosing best.pt; the class counts line and warning; the app's Runs tab."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder
from resnet.engine import training as train_module
from resnet.tools.app import eval_views, run_brief
from resnet.engine.checkpoint import load_checkpoint
from resnet.cli import main
from resnet.data.sources import ImageArrays
from resnet.data.datasets import load_splits
from resnet.engine.scoring import classification_metrics, confusion_matrix
from resnet.tools.evaluation import evaluate, per_class_rows, write_per_class_csv
from resnet.engine.sampling import balanced_epoch_batches, class_count_line, class_weights, epoch_batches
from resnet.engine.step import TrainStep
from resnet.engine.training import best_row

CLASSES = ["head", "tail"]
HEAD, TAIL, BATCH = 20, 1, 7  # 20:1; 21 training images, 3 steps an epoch
TINY = ["--image-size", "32", "--batch-size", str(BATCH), "--workers", "0", "--precision", "fp32", "--quiet",
        "--no-tta", "--lr", "0.01", "--eval-every", "1", "--arch", "resnet10"]


@pytest.fixture
def imbalanced(tmp_path) -> Path:
    """DIR/train with 20 head images and 1 tail image, DIR/val with 2 of each."""
    root = tmp_path / "imbalanced"
    make_image_folder(root / "train", CLASSES, per_class=HEAD, size=(32, 32))
    for extra in sorted((root / "train" / "tail").iterdir())[TAIL:]:
        extra.unlink()
    make_image_folder(root / "val", CLASSES, per_class=2, size=(32, 32), seed=1)
    return root


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "imagefolder", "--data-dir", str(data), *TINY, "--out", str(out), *extra]


def record_steps(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each training step's labels and the class weights its loss was given, as the steps run."""
    seen, real = [], TrainStep.__call__

    def step(self, images, labels):
        seen.append((labels.clone(), None if self.class_weights is None else self.class_weights.clone()))
        return real(self, images, labels)

    monkeypatch.setattr(TrainStep, "__call__", step)
    return seen


def interrupt_after(monkeypatch, global_step: int) -> None:
    """The loop sees Ctrl-C right after its ``global_step``-th step (0-based)."""
    calls = iter(range(10**6))
    monkeypatch.setattr(train_module, "stop_requested",
                        lambda stop, topology, step: signal.SIGINT if next(calls) == global_step else None)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# --- what the loss sees -----------------------------------------------------------------


def test_class_weights_give_every_class_the_same_total_and_a_mean_of_one():
    counts = torch.tensor([2000, 100, 0, 400])
    weights = class_weights(counts)
    assert weights[2] == 0  # a class without training images
    per_class_total = weights * counts
    assert torch.allclose(per_class_total[counts > 0], torch.full((3,), 2500 / 3))  # N / C each
    assert (per_class_total.sum() / counts.sum()).item() == pytest.approx(1.0)  # mean weight of an image


def test_the_weighted_loss_is_each_images_smoothed_loss_times_its_class_weight():
    torch.manual_seed(0)
    logits, labels = torch.randn(9, 3), torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 2])
    weights, smoothing = torch.tensor([0.5, 3.0, 1.5]), 0.1
    step = TrainStep(torch.nn.Identity(), None, torch.device("cpu"), label_smoothing=smoothing,
                     class_weights=weights)
    expected = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):  # written out, one image at a time
        log_p = [x - np.log(np.sum(np.exp(row))) for x in row]
        target = [(1 - smoothing) * (k == label) + smoothing / 3 for k in range(3)]
        expected += weights[label].item() * -sum(t * lp for t, lp in zip(target, log_p))
    assert step.loss(logits, labels).item() == pytest.approx(expected / len(labels), rel=1e-5)
    unweighted = TrainStep(torch.nn.Identity(), None, torch.device("cpu"), label_smoothing=smoothing)
    assert torch.equal(unweighted.loss(logits, labels), F.cross_entropy(logits, labels, label_smoothing=smoothing))


def test_the_sampler_draws_each_class_evenly_seeded_in_the_epochs_shape():
    labels = torch.tensor([0] * 2000 + [1] * 100 + [2] * 500)  # 20:1 between the largest and smallest
    n = len(labels)
    batches = balanced_epoch_batches(labels, 64, seed=3, epoch=5)
    drawn = labels[torch.cat(batches)]
    counts = torch.bincount(drawn, minlength=3).tolist()
    assert sum(counts) == n and all(abs(c - n / 3) < 0.1 * n / 3 for c in counts), counts  # vs 2000/100/500
    tail = torch.cat(batches)[drawn == 1]
    assert len(set(tail.tolist())) > 90  # the tail's 100 images, drawn again and again, nearly all of them
    assert [torch.equal(a, b) for a, b in zip(batches, balanced_epoch_batches(labels, 64, seed=3, epoch=5))] == \
           [True] * len(batches)  # a function of (seed, epoch): a resumed run draws the same
    assert not torch.equal(torch.cat(batches), torch.cat(balanced_epoch_batches(labels, 64, seed=3, epoch=6)))
    for world_size in (1, 2, 4):  # the shape of the plain epoch's batches, the final one dropped alike
        assert [len(b) for b in balanced_epoch_batches(labels, 50, 0, 0, world_size)] == \
               [len(b) for b in epoch_batches(n, 50, 0, 0, world_size)]


@pytest.mark.parametrize("balance", ["loss", "sampler"])
def test_balance_changes_what_the_loss_sees_and_resumes_bit_exact(imbalanced, tmp_path, monkeypatch, capsys,
                                                                 balance):
    args = ["--epochs", "2", "--balance", balance]
    with monkeypatch.context() as patch:
        seen = record_steps(patch)
        assert main(train_args(imbalanced, tmp_path / "whole", *args)) == 0
    out = capsys.readouterr().out
    assert "classes: 2, training images per class 1 to 20 (ratio 20:1); --balance " + balance in out
    train_labels = torch.tensor(load_splits("imagefolder", str(imbalanced)).train.labels)
    labels = [step_labels for step_labels, _ in seen]
    assert len(labels) == 2 * 3  # the epoch keeps its length either way
    if balance == "loss":
        expected = torch.tensor([21 / (2 * HEAD), 21 / (2 * TAIL)])  # N / (C n_c): 0.525 and 10.5
        assert all(torch.allclose(weights, expected) for _, weights in seen)
        for epoch in (0, 1):  # each image once an epoch, each class weighing the same in all
            epoch_labels = torch.cat(labels[3 * epoch:3 * epoch + 3])
            assert torch.bincount(epoch_labels).tolist() == [HEAD, TAIL]
            assert torch.bincount(epoch_labels, weights=expected[epoch_labels].double()).tolist() == \
                   pytest.approx([10.5, 10.5])
    else:
        assert all(weights is None for _, weights in seen)
        drawn = [train_labels[b] for epoch in (0, 1) for b in balanced_epoch_batches(train_labels, BATCH, 0, epoch)]
        assert [torch.equal(a, b) for a, b in zip(labels, drawn)] == [True] * 6  # the run's draws are these
        tail_share = (torch.cat(labels) == 1).float().mean().item()
        assert tail_share > 0.3, tail_share  # 1/21 of the draws without the sampler

    with monkeypatch.context() as patch:
        interrupt_after(patch, 3 + 1)  # in epoch 2, after its first step
        assert main(train_args(imbalanced, tmp_path / "cut", *args)) == 130
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["step"] == 2
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    for name in ("last.pt", "best.pt"):
        whole, cut = (load_checkpoint(tmp_path / run / name)["model"] for run in ("whole", "cut"))
        assert all(torch.equal(value, cut[key]) for key, value in whole.items()), name
    columns = ("epoch", "train_loss", "eval_loss", "top1", "macro_f1", "balanced_accuracy", "lr")
    assert [{c: r[c] for c in columns} for r in read_metrics(tmp_path / "whole")] == \
           [{c: r[c] for c in columns} for r in read_metrics(tmp_path / "cut")]


def test_the_class_counts_line():
    assert class_count_line([5, 5, 5], "none") == "classes: 3, 5 training images each"
    assert class_count_line([5000, 50, 0], "none") == \
        "classes: 3, training images per class 50 to 5,000 (ratio 100:1), 1 without any"
    assert class_count_line([30, 20], "sampler").endswith("(ratio 1.5:1); --balance sampler: each class drawn 1/2 "
                                                          "of the time")


# --- macro-F1, balanced accuracy, per-class columns -------------------------------------------


def direct_scores(predicted: list[int], labels: list[int], num_classes: int) -> tuple[list[dict], float, float]:
    """Per-class precision, recall and F1 (2PR / (P + R)), macro-F1 and balanced accuracy over the
    classes that have images, counted one prediction at a time."""
    rows = []
    for c in range(num_classes):
        hits = sum(1 for p, y in zip(predicted, labels) if p == c and y == c)
        images = sum(1 for y in labels if y == c)
        called = sum(1 for p in predicted if p == c)
        precision = hits / called if called else None
        recall = hits / images if images else None
        if recall is None:
            f1 = 0.0 if called else None
        elif precision is None or precision + recall == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        rows.append({"precision": precision, "recall": recall, "f1": f1, "images": images})
    present = [row for row in rows if row["images"]]
    return (rows, sum(r["f1"] for r in present) / len(present), sum(r["recall"] for r in present) / len(present))


def skewed_predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over 5 classes: class 4 has no image (but is predicted), class 3 is never
    predicted, class 0 is most of the images."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=80, p=[0.7, 0.1, 0.1, 0.1])
    predicted = np.where(rng.random(80) < 0.6, labels, rng.choice([0, 1, 2, 4], size=80))
    predicted[labels == 3] = rng.choice([0, 4], size=int((labels == 3).sum()))
    logits = torch.from_numpy(rng.normal(size=(80, 5))).float() * 0.1 + 5 * F.one_hot(torch.from_numpy(predicted), 5)
    return logits, torch.from_numpy(labels)


def test_macro_f1_and_balanced_accuracy_match_a_direct_computation():
    logits, labels = skewed_predictions()
    predicted = logits.argmax(1)
    rows, macro_f1, balanced = direct_scores(predicted.tolist(), labels.tolist(), 5)
    metrics = classification_metrics(logits, labels)
    assert metrics["macro_f1"] == pytest.approx(macro_f1) and metrics["balanced_accuracy"] == pytest.approx(balanced)
    assert metrics["top1"] != pytest.approx(balanced)  # the set is skewed: they differ
    got = per_class_rows(confusion_matrix(predicted, labels, 5), [f"c{i}" for i in range(5)])
    for mine, direct in zip(got, rows):
        for key in ("precision", "recall", "f1"):
            assert (mine[key] is None) == (direct[key] is None) and mine[key] == pytest.approx(direct[key]), key
    assert got[3]["precision"] is None and got[3]["f1"] == 0 and got[4]["recall"] is None


def test_macro_f1_and_balanced_accuracy_match_scikit_learn():
    metrics_sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not a dependency")
    logits, labels = skewed_predictions()
    predicted, metrics = logits.argmax(1), classification_metrics(logits, labels)
    present = sorted(set(labels.tolist()))
    assert metrics["balanced_accuracy"] == pytest.approx(metrics_sk.balanced_accuracy_score(labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(metrics_sk.f1_score(labels, predicted, labels=present,
                                                                    average="macro", zero_division=0))


def test_evaluate_and_per_class_csv_carry_the_new_columns(tmp_path):
    """evaluate() on a model whose logits are read off each image, then per_class.csv."""
    logits, labels = skewed_predictions(seed=1)

    class Lookup(torch.nn.Module):
        def forward(self, x):
            return logits[(x[:, 0, 0, 0] * 255).round().long()]

    images = np.stack([np.full((3, 8, 8), i, np.uint8) for i in range(len(labels))])
    checkpoint = {"classes": [f"c{i}" for i in range(5)],
                  "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3, "image_size": 8}}
    result = evaluate(Lookup(), checkpoint, ImageArrays(images, labels.numpy()), batch_size=16, workers=0)
    rows, macro_f1, balanced = direct_scores(logits.argmax(1).tolist(), labels.tolist(), 5)
    assert result["macro_f1"] == pytest.approx(macro_f1)
    assert result["balanced_accuracy"] == pytest.approx(balanced) == result["mean_class_accuracy"]
    write_per_class_csv(result["per_class"], tmp_path / "per_class.csv")
    with open(tmp_path / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["class", "images", "correct", "accuracy", "precision", "recall", "f1"]
    for written, direct in zip(table, rows):
        for key in ("precision", "recall", "f1"):
            assert written[key] == ("" if direct[key] is None else f"{direct[key]:.6f}"), key


# --- choosing best.pt, the warning, eval and the app -------------------------------------------

# Validation scores per epoch: top-1 is best after epoch 1, balanced accuracy after epoch 2.
SCRIPTED = [{"top1": 0.9, "balanced_accuracy": 0.5}, {"top1": 0.8, "balanced_accuracy": 0.7},
            {"top1": 0.85, "balanced_accuracy": 0.6}]


def test_select_metric_chooses_best_pt_and_an_imbalance_is_warned(imbalanced, tmp_path, monkeypatch, capsys):
    scores = iter(SCRIPTED)
    real_validate = train_module.Run.validate

    def scripted(self, source, data):
        measured = real_validate(self, source, data)  # run for real, reported as scripted
        return {**measured, **next(scores), "macro_f1": 0.25}

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train_module.Run, "validate", scripted)
        with pytest.warns(UserWarning, match=r"the classes are imbalanced \(20:1 .*--balance loss or --balance "
                                             r"sampler"):
            assert main(train_args(imbalanced, run_dir, "--epochs", "3", "--select-metric",
                                   "balanced_accuracy")) == 0
    out = capsys.readouterr().out
    assert "classes: 2, training images per class 1 to 20 (ratio 20:1)\n" in out
    assert "(best balanced accuracy 70.00% at epoch 2)" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["select_metric"], summary["best_epoch"]) == ("balanced_accuracy", 2)
    assert (summary["best_top1"], summary["best_balanced_accuracy"], summary["best_macro_f1"]) == (0.8, 0.7, 0.25)
    assert (summary["final_top1"], summary["final_balanced_accuracy"]) == (0.85, 0.6)
    assert load_checkpoint(run_dir / "best.pt")["state"]["epoch"] == 2
    assert load_checkpoint(run_dir / "last.pt")["state"]["best_top1"] == 0.8  # best.pt's top-1
    assert [float(r["balanced_accuracy"]) for r in read_metrics(run_dir)] == [0.5, 0.7, 0.6]
    history = [{"epoch": e + 1, **s} for e, s in enumerate(SCRIPTED)]
    assert (best_row(history, "top1")["epoch"], best_row(history, "balanced_accuracy")["epoch"]) == (1, 2)

    assert main(["eval", str(run_dir), "--json", "--workers", "0", "--device", "cpu", "--mistakes", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    scored = [row for row in result["per_class"] if row["images"]]
    assert result["macro_f1"] == pytest.approx(np.mean([row["f1"] for row in scored]))
    assert result["balanced_accuracy"] == pytest.approx(np.mean([row["recall"] for row in scored]))
    check_runs_tab(run_dir, tmp_path)


def check_runs_tab(run_dir: Path, tmp_path: Path) -> None:
    """The Runs tab's brief shows the new scores, and a run from before them still shows."""
    brief = run_brief(run_dir)
    assert "balanced accuracy 60.00%" in brief and "best balanced accuracy 70.00% (epoch 2)" in brief
    served = tmp_path / "served"
    served.mkdir()
    views = eval_views(run_dir, served)
    assert views["per_class_columns"][-3:] == ["precision", "recall", "f1"] and len(views["per_class"]) == 2

    old = tmp_path / "old-run"
    old.mkdir()
    (old / "config.json").write_text((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = ("final_top1", "final_top5", "best_top1", "best_epoch", "epochs", "seconds")
    (old / "summary.json").write_text(json.dumps({key: summary[key] for key in kept}))
    (old / "per_class.csv").write_text("class,images,correct,accuracy\nhead,2,2,1.000000\ntail,2,0,0.000000\n")
    scores = run_brief(old).splitlines()[-1]
    assert "best top-1 80.00% (epoch 2)" in scores and "balanced" not in scores
    assert eval_views(old, served)["per_class_columns"] == ["class", "images", "correct", "accuracy"]
    (old / "summary.json").unlink()
    (old / "metrics.csv").write_text("epoch,train_loss,eval_loss,top1,top5,lr,images_per_s,seconds,train_size\n"
                                     "1,1.0,1.0,0.5,1.0,0.01,10,1.0,32\n")
    assert "top-1 50.00% after epoch 1, eval loss" in run_brief(old)
