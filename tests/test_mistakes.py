"""The mistakes gallery and most-confused pairs (resnet eval)."""

from __future__ import annotations

import csv
import json

import torch
from PIL import Image

from resnet.cli import main
from resnet.data.datasets import load_splits
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.tools.mistakes import most_confused, worst_mistakes
from resnet.tools.prediction import predict_files

CLASSES = ["a", "b", "c"]


def test_most_confused_counts_off_the_diagonal_most_first():
    confusion = torch.tensor([[5, 2, 0], [3, 4, 1], [0, 2, 9]])
    assert most_confused(confusion, CLASSES) == [("b", "a", 3), ("a", "b", 2), ("c", "b", 2), ("b", "c", 1)]


def test_worst_mistakes_are_the_most_confident_wrong_answers():
    logits = torch.tensor([[5.0, 0, 0],    # right
                           [0, 3.0, 0],    # wrong (true a), fairly sure of b
                           [0, 0, 9.0],    # wrong (true a), very sure of c
                           [1.0, 1.1, 0],  # wrong (true c), unsure
                           [0, 4.0, 0]])   # right
    labels = torch.tensor([0, 0, 0, 2, 1])
    worst = worst_mistakes(logits, labels, CLASSES, n=2)
    assert [(m.index, m.true, m.predicted) for m in worst] == [(2, "a", "c"), (1, "a", "b")]
    assert worst[0].probability == torch.tensor([0, 0, 9.0]).softmax(0)[2].item()
    assert len(worst_mistakes(logits, labels, CLASSES, n=10)) == 3


def test_eval_writes_mistakes_png_and_most_confused_csv(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run["dir"]), "--subset", "all", "--out", str(tmp_path), "--workers", "0",
                 "--device", "cpu", "--mistakes", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    # The pairs, counted independently through resnet predict's path.
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    everything = load_splits("imagefolder", str(tiny_run["data"]), val_fraction=0.2, seed=0)
    paths = everything.train.paths + everything.eval.paths
    labels = everything.train.labels + everything.eval.labels
    predicted = [p.top[0][0] for p in predict_files(model, checkpoint, paths, device="cpu")]
    expected: dict[tuple[str, str], int] = {}
    for label, name in zip(labels, predicted):
        if tiny_run["classes"][label] != name:
            key = (tiny_run["classes"][label], name)
            expected[key] = expected.get(key, 0) + 1
    with open(tmp_path / "most_confused.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["true"], r["predicted"]): int(r["count"]) for r in rows} == expected
    assert [int(r["count"]) for r in rows] == sorted((int(r["count"]) for r in rows), reverse=True)
    assert result["most_confused_csv"] == str(tmp_path / "most_confused.csv")

    with Image.open(tmp_path / "mistakes.png") as png:
        assert png.size[0] > 200
    assert result["mistakes_png"] == str(tmp_path / "mistakes.png")


def test_eval_text_names_the_pairs_and_mistakes_zero_skips_the_png(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run["ckpt"]), "--subset", "all", "--out", str(tmp_path), "--workers", "0",
                 "--device", "cpu", "--mistakes", "0"]) == 0
    out = capsys.readouterr().out
    assert "most confused" in out
    assert (tmp_path / "most_confused.csv").exists() and not (tmp_path / "mistakes.png").exists()
